"""Where stage one spends its time: every systemd unit (or scripted step) of a boot, as a
picture (the `systemd-analyze plot` of stage one, which no initrd tool gives) and as a table of
the slowest ones. Made from the guest's console (bootgen.vm.timeline.spans)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..paths import write_atomic
from ..vm.timeline import Span, slowest
from . import svg


def picture(title: str, subtitle: str, found: Sequence[Span]) -> str:
    return svg.gantt(title, subtitle, [(s.name, s.start, s.end, s.result) for s in found])


def table(found: Sequence[Span], count: int = 8) -> list[str]:
    """The slowest units or steps, one line each."""
    rows = slowest(found, count)
    width = max((len(s.name) for s in rows), default=0)
    return [f"{s.seconds:7.2f} s  {s.name:<{width}}  {s.start:6.2f} → {s.end:6.2f}"
            + ("" if s.result == "done" else f"  ({s.result})") for s in rows]


def output_path(base: Path, flavor: str, several: bool) -> Path:
    """BASE.svg, or BASE-<flavor>.svg when several flavours are drawn."""
    if not several:
        return base
    return base.with_name(f"{base.stem}-{flavor}{base.suffix or '.svg'}")


def write(path: Path, title: str, subtitle: str, found: Sequence[Span]) -> None:
    write_atomic(path, picture(title, subtitle, found).encode())
