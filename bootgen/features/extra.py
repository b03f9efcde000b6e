"""extra: programs, libraries and files the description asks for by name ([extra])."""

from __future__ import annotations

from dataclasses import dataclass

from .api import (
    Context,
    Contribution,
    Feature,
    Host,
    HostFile,
    Library,
    Program,
    Report,
    Table,
    check_abs_path,
    setting,
)


@dataclass(frozen=True)
class ExtraFile:
    """A file copied from the build host into the image."""

    source: str = setting("Path on the build host.", "", check=check_abs_path)
    target: str = setting("Path in the image.", "", check=check_abs_path)
    mode: int | None = setting("Permission bits; default: the source's.", None)


@dataclass(frozen=True)
class Extra:
    """Anything else the image must carry."""

    binaries: tuple[str, ...] = setting("Extra programs (name or path); their libraries follow.",
                                        factory=tuple)
    libraries: tuple[str, ...] = setting("Extra libraries loaded with dlopen (path or soname).",
                                         factory=tuple)
    files: tuple[ExtraFile, ...] = setting("Extra files.", factory=tuple)


EXTRA = Table("extra", Extra)


def check(host: Host, report: Report) -> None:
    for i, ef in enumerate(EXTRA.of(host).files):
        for req in ("source", "target"):
            if not getattr(ef, req):
                report.add(f"extra.files[{i}].{req}", "missing")


def contribute(host: Host, ctx: Context) -> Contribution:
    ex = EXTRA.of(host)
    return Contribution(
        programs=tuple(Program(b) for b in ex.binaries),
        libraries=tuple(Library(lib) for lib in ex.libraries),
        files=tuple(HostFile(f.source, target=f.target, mode=f.mode) for f in ex.files),
    )


def applies(host: Host, ctx: Context) -> bool:
    ex = EXTRA.of(host)
    return bool(ex.binaries or ex.libraries or ex.files)


FEATURE = Feature(
    name="extra",
    doc="[extra] binaries, libraries and files",
    applies=applies,
    contribute=contribute,
    sections=(EXTRA,),
    check=check,
)
