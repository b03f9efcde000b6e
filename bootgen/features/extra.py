"""extra: programs, libraries and files the description asks for by name."""

from __future__ import annotations

from ..schema import Host
from ..spec import Contribution, HostFile, Library, Program
from . import Context, Feature


def contribute(host: Host, ctx: Context) -> Contribution:
    ex = host.extra
    return Contribution(
        programs=tuple(Program(b) for b in ex.binaries),
        libraries=tuple(Library(lib) for lib in ex.libraries),
        files=tuple(HostFile(f.source, target=f.target, mode=f.mode) for f in ex.files),
    )


FEATURE = Feature(
    name="extra",
    doc="[extra] binaries, libraries and files",
    applies=lambda host, ctx: bool(host.extra.binaries or host.extra.libraries or host.extra.files),
    contribute=contribute,
)
