"""The feature API: what a feature is, what it may know, and what it may add to an image.

A feature module imports this module and bootgen.features.common (shared helpers), never
another feature. It defines:

- `FEATURE = Feature(...)`: its name, a one-line doc, when it applies, what it contributes;
- optionally the sections of the host description it owns (`Table`/`Tables` handles over its
  own frozen dataclasses, declared with `setting()`), its checks across settings (`check`,
  run by the loader with every other check, all problems reported at once), and the block
  devices it creates in stage one (`devices`, so that filesystems may name them), and the
  device references its settings make (`references`).

A contribution is data: programs, libraries, host files, generated files and script hooks,
symlinks, directories, device nodes, kernel modules, users and groups. The planner unions the
contributions of every feature that applies (bootgen.image.plan), tags each item with the
feature's name, orders hooks by their `after` names, and writes the account files.
See docs/architecture.md ("Adding a feature").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config.loader import Report
from ..config.schema import Filesystem, Host, Section, Table, Tables
from ..config.settings import (
    PLAIN,
    bounded,
    check_abs_path,
    check_cidr,
    check_device,
    check_device_word,
    check_ipv4,
    check_mac,
    check_mode,
    check_plain_path,
    check_port,
    check_positive,
    matching,
    setting,
)

__all__ = [
    "Context", "Contribution", "DevNode", "Dir", "Feature", "Filesystem", "Generated", "Group",
    "Hook", "Host", "HostFile", "Library", "Module", "Program", "Report", "Section", "Symlink",
    "Table", "Tables", "User", "PLAIN", "bounded", "check_abs_path", "check_cidr", "check_device",
    "check_device_word", "check_ipv4", "check_mac", "check_mode", "check_plain_path",
    "check_port", "check_positive", "matching", "setting",
]

# Where the scripted init places hook fragments, in the order it runs them.
HOOK_POINTS = ("pre-udev", "post-udev", "pre-mount", "post-mount", "pre-pivot", "cleanup")


@dataclass(frozen=True)
class Context:
    """What a feature may know besides the host description."""

    flavor: str
    kver: str
    features: frozenset[str] = frozenset()  # the features that apply to this image
    # block devices features create in stage one: path -> the feature that creates it
    devices: Mapping[str, str] = field(default_factory=dict)

    def after(self, refs: Iterable[str], me: str) -> tuple[str, ...]:
        """The features that create any of `refs` (for a hook's `after`): a stack of LUKS,
        RAID and LVM is opened bottom up, whatever the order of the registry."""
        return tuple(sorted({self.devices[r] for r in refs if r in self.devices} - {me}))


# --- what a feature adds ---------------------------------------------------------------------
# `reason` says why, when the feature's name alone does not (e.g. "systemd.units"); the planner
# sets `feature` on every item.


@dataclass(frozen=True)
class Program:
    """An executable from the build host, resolved with its ELF closure (or #! interpreter)."""

    name: str  # "kmod" (searched in sbin/bin) or an absolute host path
    reason: str = ""
    optional: bool = False  # skipped silently when the host lacks it
    feature: str = ""


@dataclass(frozen=True)
class Library:
    """A library loaded with dlopen (NSS modules, plugins): absolute path or soname."""

    name: str
    reason: str = ""
    optional: bool = False
    feature: str = ""


@dataclass(frozen=True)
class HostFile:
    """A file (or directory tree) from the build host. Same path in the image unless `target`."""

    source: str
    target: str | None = None
    mode: int | None = None
    reason: str = ""
    optional: bool = False
    secret: bool = False  # goes to the separate secrets archive, never the reproducible one
    # "dropbear-key": OpenSSH private key → dropbear's format; "gunzip"; "keymap[:VARIANT]":
    # an XKB symbols file (/usr/share/X11/xkb/symbols/LAYOUT) → busybox loadkmap binary keymap
    convert: str | None = None
    feature: str = ""
    # A file the description names ("luks[0].key_file"): only a readable regular file of at
    # most `max_size` bytes is taken, and problems are reported at that key.
    setting: str = ""
    max_size: int | None = None
    private: bool = False  # a key: warn when others than its owner may read it on the host


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
    feature: str = ""
    # Where the description names the included files, their size limit, and a check of each
    # one's content: None when fine, else (message, hint), reported at `include_setting`.
    include_setting: str = ""
    include_limit: int = 1 << 20
    include_check: Callable[[bytes], tuple[str, str] | None] | None = None


@dataclass(frozen=True)
class Hook:
    """A fragment of the scripted init inserted at a named hook point (HOOK_POINTS).

    At one point, hooks run in registry order of their features, except that a hook runs after
    the hooks of every feature named in `after` (names of features that may not apply)."""

    point: str
    template: str
    view: Mapping[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    reason: str = ""
    feature: str = ""


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    reason: str = ""
    weak: bool = False  # yields to anything else at the same path (busybox applet links)
    feature: str = ""


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755
    reason: str = ""
    feature: str = ""


@dataclass(frozen=True)
class DevNode:
    path: str
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int = 0o600
    reason: str = ""
    feature: str = ""


@dataclass(frozen=True)
class Module:
    """A kernel module by name: loaded at start (`load`) or only on demand."""

    name: str
    load: bool = True
    reason: str = ""
    feature: str = ""


@dataclass(frozen=True)
class User:
    """An account in /etc/passwd; `password` None: no /etc/shadow line."""

    name: str
    uid: int
    gid: int
    gecos: str = ""
    home: str = "/"
    shell: str = "/usr/sbin/nologin"
    password: str | None = None  # the shadow field: a hash, "" (none) or "*" (locked)
    reason: str = ""
    feature: str = ""


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    reason: str = ""
    feature: str = ""


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
    users: tuple[User, ...] = ()
    groups: tuple[Group, ...] = ()


def _never(host: Host, ctx: Context) -> bool:
    return False


def _nothing(host: Host, ctx: Context) -> Contribution:
    return Contribution()


@dataclass(frozen=True)
class Feature:
    """A capability of stage one, declared in one module."""

    name: str
    doc: str
    applies: Callable[[Host, Context], bool] = _never
    contribute: Callable[[Host, Context], Contribution] = _nothing
    sections: tuple[Section[Any], ...] = ()  # the parts of the description it owns
    check: Callable[[Host, Report], None] | None = None  # checks across its settings
    # block devices it creates in stage one, given every reference of the description:
    # (path, who) e.g. ("/dev/mapper/root", "[[luks]] 'root'")
    devices: Callable[[Host, Sequence[tuple[str, str]]], Iterable[tuple[str, str]]] | None = None
    # block device references its settings make: (settings key, reference), e.g.
    # ("luks[0].device", "PARTLABEL=cryptroot"); checks, test disks and host lookups read them
    references: Callable[[Host], Iterable[tuple[str, str]]] | None = None
