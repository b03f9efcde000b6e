"""Immutable data passed between pipeline stages.

    Host ──plan──▶ ImageSpec ──render──▶ rendered files ──resolve──▶ Image (entries) ──pack──▶ bytes

Every item carries `reason`: which feature asked for it. The resolver extends it with the chain
(feature → program → library) so the manifest can say why each file is in the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Program:
    """An executable from the build host, resolved with its ELF closure (or #! interpreter)."""

    name: str  # "kmod" (searched in sbin/bin) or an absolute host path
    reason: str = ""
    optional: bool = False  # skipped silently when the host lacks it


@dataclass(frozen=True)
class Library:
    """A library loaded with dlopen (NSS modules, plugins): absolute path or soname."""

    name: str
    reason: str = ""
    optional: bool = False


@dataclass(frozen=True)
class HostFile:
    """A file (or directory tree) from the build host. Same path in the image unless `target`."""

    source: str
    target: str | None = None
    mode: int | None = None
    reason: str = ""
    optional: bool = False
    secret: bool = False  # goes to the separate secrets archive, never the reproducible one
    convert: str | None = None  # "dropbear-key": OpenSSH private key → dropbear's format


@dataclass(frozen=True)
class Generated:
    """A file rendered from a template (units/ or scripts-legacy/) or given literally."""

    path: str
    template: str | None = None  # "units/initrd-release.j2", "scripts-legacy/init.sh.j2"
    view: Mapping[str, Any] = field(default_factory=dict)
    content: bytes | None = None
    mode: int = 0o644
    reason: str = ""
    secret: bool = False
    include: tuple[str, ...] = ()  # host files appended to the content when resolved


@dataclass(frozen=True)
class Hook:
    """A fragment of the scripted init inserted at a named hook point."""

    point: str  # "pre-udev", "post-udev", "pre-mount", "post-mount", "pre-pivot"
    template: str
    view: Mapping[str, Any] = field(default_factory=dict)
    order: int = 50
    reason: str = ""


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    reason: str = ""
    weak: bool = False  # yields to anything else at the same path (busybox applet links)


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755
    reason: str = ""


@dataclass(frozen=True)
class DevNode:
    path: str
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int = 0o600
    reason: str = ""


@dataclass(frozen=True)
class Module:
    """A kernel module by name: loaded at start (`load`) or only on demand."""

    name: str
    load: bool = True
    reason: str = ""


@dataclass(frozen=True)
class Contribution:
    """What one feature adds to the image. Features return these; the planner unions them."""

    programs: tuple[Program, ...] = ()
    libraries: tuple[Library, ...] = ()
    files: tuple[HostFile, ...] = ()
    generated: tuple[Generated, ...] = ()
    hooks: tuple[Hook, ...] = ()
    symlinks: tuple[Symlink, ...] = ()
    dirs: tuple[Dir, ...] = ()
    devnodes: tuple[DevNode, ...] = ()
    modules: tuple[Module, ...] = ()


@dataclass(frozen=True)
class ImageSpec:
    """The plan for one image: pure data, no disk access has happened yet."""

    flavor: str
    kver: str
    compression: str
    compression_level: int | None
    features: tuple[str, ...]
    init: str  # path of /init's target in the image, checked after packing
    programs: tuple[Program, ...]
    libraries: tuple[Library, ...]
    files: tuple[HostFile, ...]
    generated: tuple[Generated, ...]
    hooks: tuple[Hook, ...]
    symlinks: tuple[Symlink, ...]
    dirs: tuple[Dir, ...]
    devnodes: tuple[DevNode, ...]
    modules: tuple[Module, ...]
    notes: tuple[str, ...] = ()


# --- what comes out of resolve: concrete archive entries ------------------------------------


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
    reason: str = ""
    secret: bool = False


@dataclass(frozen=True)
class Image:
    """The resolved image: every entry, sorted by path, plus what was learned on the way."""

    spec: ImageSpec
    entries: tuple[Entry, ...]
    modules: tuple[str, ...]  # module names in the image
    builtin_modules: tuple[str, ...]
    warnings: tuple[str, ...] = ()
