"""extra: programs, libraries and files the description asks for by name ([extra])."""

from __future__ import annotations

import re
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
    check_mode,
    check_plain_path,
    setting,
)

FILE_LIMIT = 256 << 20  # bytes of one extra file: stage one lives in memory


def check_program(value: str) -> tuple[str, str] | None:
    """A program: a bare name found in sbin/bin, or an absolute path."""
    if value.startswith("/"):
        return check_abs_path(value)
    if not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*", value):
        return (f"'{value}' is neither a bare program name nor an absolute path",
                "e.g. 'lsblk' or '/usr/bin/lsblk'")
    return None


def check_library(value: str) -> tuple[str, str] | None:
    """A library: a soname (libfoo.so.1) or an absolute path."""
    if value.startswith("/"):
        return check_abs_path(value)
    if not re.fullmatch(r"lib[A-Za-z0-9_.+-]*\.so[0-9.]*", value):
        return (f"'{value}' is neither a soname nor an absolute path",
                "e.g. 'libnss_files.so.2' or '/usr/lib/x86_64-linux-gnu/libnss_files.so.2'")
    return None


@dataclass(frozen=True)
class ExtraFile:
    """A file copied from the build host into the image."""

    source: str = setting("Path on the build host: a regular file (or a link to one) of at "
                          "most 256 MiB.", "", check=check_abs_path)
    target: str = setting("Path in the image.", "", check=check_plain_path)
    mode: int | None = setting("Permission bits (0o0-0o7777, not setuid/setgid and writable by "
                               "all); default: the source's.", None, check=check_mode)


@dataclass(frozen=True)
class Extra:
    """Anything else the image must carry."""

    binaries: tuple[str, ...] = setting("Extra programs (name or path); their libraries follow.",
                                        factory=tuple, check=check_program)
    libraries: tuple[str, ...] = setting("Extra libraries loaded with dlopen (path or soname).",
                                         factory=tuple, check=check_library)
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
        files=tuple(HostFile(f.source, target=f.target, mode=f.mode, setting=f"extra.files[{i}]"
                             ".source", max_size=FILE_LIMIT) for i, f in enumerate(ex.files)),
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
