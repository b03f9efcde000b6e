"""fsck: checkers for the filesystems stage one mounts."""

from __future__ import annotations

from ..schema import Host
from ..spec import Contribution, Program
from . import Context, Feature

# fstype -> programs that check it (the first is what fsck.<type> runs).
CHECKERS: dict[str, tuple[str, ...]] = {
    "ext2": ("/usr/sbin/e2fsck", "/usr/sbin/fsck.ext2"),
    "ext3": ("/usr/sbin/e2fsck", "/usr/sbin/fsck.ext3"),
    "ext4": ("/usr/sbin/e2fsck", "/usr/sbin/fsck.ext4"),
    "vfat": ("/usr/sbin/fsck.vfat",),
    "f2fs": ("/usr/sbin/fsck.f2fs",),
}


def checked_types(host: Host) -> tuple[str, ...]:
    return tuple(sorted({fs.fstype for fs in host.boot_filesystems
                         if fs.fsck and fs.fstype in CHECKERS}))


def contribute(host: Host, ctx: Context) -> Contribution:
    progs: list[Program] = []
    for fstype in checked_types(host):
        optional = fstype not in ("ext2", "ext3", "ext4")  # e2fsprogs is always on Debian
        progs += [Program(p, optional=optional) for p in CHECKERS[fstype]]
    if ctx.flavor == "systemd":
        progs.append(Program("/usr/sbin/fsck"))  # systemd-fsck runs fsck -a
    return Contribution(programs=tuple(progs))


FEATURE = Feature(
    name="fsck",
    doc="Filesystem checkers for / and the needed-for-boot filesystems",
    applies=lambda host, ctx: bool(checked_types(host)),
    contribute=contribute,
)
