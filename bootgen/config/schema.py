"""The host description: the core sections every host has, and the Host that carries them.

Core sections ([boot], [kernel], [[filesystems]], [rescue]) are read by several features and
live here. Every other section belongs to the feature that reads it: the feature module
declares its dataclass and a `Table` or `Tables` handle (a key in the TOML file), and the
loader fills `Host.sections` from the feature registry. `host.luks` still works (attribute
access falls through to the sections); a feature reads its own section through its handle,
which is typed: `LUKS.of(host)` is a `tuple[Luks, ...]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..archive.compress import DEFAULT_LEVELS, LEVEL_RANGES, METHODS
from .settings import (
    bounded,
    check_abs_path,
    check_device,
    check_kernel_version,
    check_module_name,
    check_mount_option,
    check_plain_path,
    check_positive,
    setting,
)

FLAVORS = ("systemd", "scripted")
OUTPUTS = ("initrd", "uki")
FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs", "vfat", "f2fs", "squashfs", "tmpfs")
LOCKED_HINT = ("rescue shell is locked: set rescue.root_password_hash or "
               "rescue.allow_passwordless = true in the host description")
_LEVELS = ", ".join(f"{m} {DEFAULT_LEVELS[m]} ({lo}-{hi})"
                    for m, (lo, hi) in LEVEL_RANGES.items())


def check_hash(value: str) -> tuple[str, str] | None:
    import re

    if not re.match(r"\$(1|5|6|y|2[aby]|7|gy)\$[^:\s]*\Z", value):
        return ("not a crypt(3) password hash", "generate one with: mkpasswd -m sha-512")
    return None


@dataclass(frozen=True)
class Boot:
    """How the image is built and booted."""

    flavor: str = setting("Stage-one flavour; `bootgen build --flavor` overrides.", "systemd",
                          choices=FLAVORS)
    compression: str = setting("Compression of the main archive.", "zstd", choices=METHODS)
    compression_level: int | None = setting(
        f"Compression level; default and range per method: {_LEVELS}. A higher level makes a "
        "smaller image and a slower first build (compressed segments are cached, later builds "
        "reuse them): docs/benchmarks.md measures the trade for zstd.", None)
    kernel_params: tuple[str, ...] = setting(
        "Kernel command line for `bootgen verify` and `bootgen shell` (on a real machine the "
        "boot loader's command line is what counts).",
        factory=tuple, example='["console=ttyS0", "quiet"]')
    device_timeout: int = setting(
        "Seconds stage one waits for each needed device before failing.", 30,
        check=bounded(0, 86400, " s"))
    init: str = setting("Program exec'd in the real root (`init=` overrides).", "/sbin/init",
                        check=check_abs_path)
    resume_device: str | None = setting(
        "Swap device to resume from after hibernation (`resume=` overrides); stage one resumes "
        "before it mounts anything read-write.", None, check=check_device,
        example='"/dev/vg0/swap"')
    resume_offset: int | None = setting(
        "Page offset of a swap file's header on `resume_device` (`resume_offset=` overrides).",
        None, check=check_positive)
    output: str = setting(
        "What `bootgen build -o` writes: the initrd, or a unified kernel image (settings in "
        "[uki]; `bootgen build --uki` writes one either way).", "initrd", choices=OUTPUTS)


@dataclass(frozen=True)
class Kernel:
    """Which kernel the image is for and which of its modules it carries."""

    version: str | None = setting(
        "Kernel release (`uname -r`); default: the newest under /lib/modules.", None,
        example='"6.1.0-56-amd64"', check=check_kernel_version)
    modules: tuple[str, ...] = setting(
        "Modules loaded at the start of stage one, with their dependencies.", factory=tuple,
        example='["virtio_pci", "virtio_blk", "ext4"]', check=check_module_name)
    available_modules: tuple[str, ...] = setting(
        "Modules included but only loaded on demand (udev, modprobe).", factory=tuple,
        example='["virtio_net"]', check=check_module_name)


@dataclass(frozen=True)
class Filesystem:
    """A filesystem of the host. `/` and those with `needed_for_boot` are mounted by stage one."""

    mountpoint: str = setting("Where it is mounted in the real root.", "",
                              check=check_plain_path)
    device: str = setting("Block device: /dev/..., LABEL=, UUID=, PARTUUID=, PARTLABEL=.", "",
                          check=check_device)
    fstype: str = setting("Filesystem type.", "", choices=FSTYPES)
    options: tuple[str, ...] = setting("Mount options, one per element.", factory=tuple,
                                       example='["rw", "noatime"]', check=check_mount_option)
    needed_for_boot: bool = setting(
        "Mount it in stage one (below /sysroot); always true for `/`.", False)
    fsck: bool = setting("Check it with the fstype's fsck before mounting, when one exists.", True)


@dataclass(frozen=True)
class Rescue:
    """What happens when stage one fails, and who may use the rescue shell."""

    shell_on_fail: bool = setting("Offer a rescue shell when stage one fails.", True)
    root_password_hash: str | None = setting(
        "crypt(3) hash of the rescue shell's root password.", None, check=check_hash,
        example='"$6$..."')
    allow_passwordless: bool = setting(
        "Allow a rescue shell without a password when no hash is set.", False)

    @property
    def access(self) -> str:
        """'password', 'open' or 'locked': the same policy in both flavours."""
        if self.root_password_hash:
            return "password"
        return "open" if self.allow_passwordless else "locked"


@dataclass(frozen=True)
class Host:
    """One host description: the core sections, then the features' sections by TOML key."""

    boot: Boot = setting("", factory=Boot)
    kernel: Kernel = setting("", factory=Kernel)
    filesystems: tuple[Filesystem, ...] = setting("", factory=tuple)
    rescue: Rescue = setting("", factory=Rescue)
    sections: Mapping[str, Any] = field(default_factory=dict, metadata={"internal": True})
    source: str = field(default="<memory>", metadata={"internal": True})

    def __getattr__(self, name: str) -> Any:
        """A feature's section by its key: `host.luks`, `host.network`."""
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return object.__getattribute__(self, "sections")[name]
        except KeyError:
            raise AttributeError(f"host description has no section {name!r}") from None

    def with_section(self, key: str, value: Any) -> Host:
        return dataclasses.replace(self, sections={**self.sections, key: value})

    @property
    def root(self) -> Filesystem:
        return next(f for f in self.filesystems if f.mountpoint == "/")

    @property
    def boot_filesystems(self) -> tuple[Filesystem, ...]:
        """`/` and the needed-for-boot filesystems, parents before children."""
        chosen = [f for f in self.filesystems if f.mountpoint == "/" or f.needed_for_boot]
        return tuple(sorted(chosen, key=lambda f: (f.mountpoint != "/", f.mountpoint.count("/"),
                                                   f.mountpoint)))


CORE = tuple(f.name for f in dataclasses.fields(Host) if not f.metadata.get("internal"))

T = TypeVar("T")


@dataclass(frozen=True)
class Section(Generic[T]):
    """A part of the description that a feature owns: `[key]` (a Table) or `[[key]]` (Tables).

    `key` may be dotted ("network.ssh"): the table then sits inside its parent's table in the
    TOML file, and is still owned separately."""

    key: str
    type: type[T]
    doc: str = ""

    @property
    def many(self) -> bool:
        return False

    def default(self) -> Any:
        return self.type()


@dataclass(frozen=True)
class Table(Section[T]):
    """One table: `[key]`."""

    def of(self, host: Host) -> T:
        value: T = host.sections.get(self.key) or self.type()
        return value


@dataclass(frozen=True)
class Tables(Section[T]):
    """An array of tables: `[[key]]`."""

    @property
    def many(self) -> bool:
        return True

    def default(self) -> Any:
        return ()

    def of(self, host: Host) -> tuple[T, ...]:
        value: tuple[T, ...] = host.sections.get(self.key, ())
        return value
