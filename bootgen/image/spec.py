"""Immutable data passed between the stages of the build pipeline.

    Host ─plan─▶ ImageSpec ─render─▶ rendered files ─resolve─▶ Image (entries) ─pack─▶ Packed

An ImageSpec holds the items features contributed (types from bootgen.features.api), each
tagged with its feature. Resolve turns them into Entries, each carrying its provenance as data:
the feature and the chain that led to it (feature → program → library).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..features.api import (
    DevNode,
    Dir,
    Generated,
    Group,
    Hook,
    HostFile,
    Library,
    Module,
    Program,
    Symlink,
    User,
)


@dataclass(frozen=True)
class ImageSpec:
    """The plan for one image: pure data, no disk access has happened yet."""

    flavor: str
    kver: str
    compression: str
    compression_level: int | None
    features: tuple[str, ...]  # those that apply, in registry order
    init: str  # path of /init's target in the image, checked after packing
    programs: tuple[Program, ...]
    libraries: tuple[Library, ...]
    files: tuple[HostFile, ...]
    generated: tuple[Generated, ...]
    hooks: tuple[Hook, ...]  # in the order the scripted init runs them, per hook point
    symlinks: tuple[Symlink, ...]
    dirs: tuple[Dir, ...]
    devnodes: tuple[DevNode, ...]
    modules: tuple[Module, ...]
    users: tuple[User, ...] = ()
    groups: tuple[Group, ...] = ()
    notes: tuple[str, ...] = ()
    description: str = ""  # the description's path, for messages about its settings


# --- what comes out of resolve: concrete archive entries ------------------------------------

HOST_LIMIT = 1 << 30  # the most pack reads of one host file (newc holds up to 4 GiB)



@dataclass(frozen=True)
class Entry:
    """One path in the image."""

    path: str  # absolute, normalized: "/usr/bin/kmod"
    kind: str  # "file" | "dir" | "symlink" | "char" | "block"
    mode: int  # permission bits only
    source: str | None = None  # host path the content comes from
    data: bytes | None = None  # generated content
    target: str | None = None  # symlink target
    rdev: tuple[int, int] = (0, 0)
    feature: str = ""  # the feature that asked for it ("" for the module index and firmware)
    chain: tuple[str, ...] = ()  # why, step by step: ("systemd", "/usr/bin/udevadm", "libc.so.6")
    secret: bool = False
    max_size: int | None = None  # bytes pack reads at most from `source` (default: HOST_LIMIT)

    @property
    def reason(self) -> str:
        """The chain as people read it: "systemd → /usr/bin/udevadm → libc.so.6"."""
        return " → ".join(self.chain) if self.chain else self.feature


@dataclass(frozen=True)
class Image:
    """The resolved image: every entry, sorted by path, plus what was learned on the way."""

    spec: ImageSpec
    entries: tuple[Entry, ...]
    modules: tuple[str, ...]  # module names in the image
    builtin_modules: tuple[str, ...]
    warnings: tuple[str, ...] = ()
