"""The host description: the config machinery bound to the feature registry.

    load(path) / loads(text) -> Host      every problem at once (DescriptionError)
    python -m bootgen.description         prints the reference (docs/config.md; make docs)

The core sections and the loader live in bootgen.config; the sections beyond the core, their
checks and the devices features create come from bootgen.features.
"""

from __future__ import annotations

from pathlib import Path

from .config import docs, loader
from .config.loader import Report
from .config.schema import Host
from .features import FEATURES, SECTIONS, provided, references

_SECTIONS = tuple(s for s, _ in SECTIONS)


def check(host: Host, report: Report) -> None:
    """Every feature's checks across settings, knowing the devices all features create and
    every device reference of the description."""
    report.references = references(host)
    report.provided = {path: who for path, (_f, who) in
                       provided(host, report.references).items()}
    for f in FEATURES:
        if f.check is not None:
            f.check(host, report)


def load(path: str | Path) -> Host:
    """Read and validate a host description; raise DescriptionError listing all problems."""
    return loader.load(path, _SECTIONS, check)


def loads(text: str, name: str = "<string>") -> Host:
    return loader.loads(text, name, _SECTIONS, check)


def reference() -> str:
    """docs/config.md: the core sections, then each feature's."""
    return docs.generate(SECTIONS)


if __name__ == "__main__":
    print(reference(), end="")
