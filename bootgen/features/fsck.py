"""fsck: checkers for the filesystems stage one mounts."""

from __future__ import annotations

from .api import Context, Contribution, Feature, Host, Program
from .common import CHECKERS, checked_types


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
