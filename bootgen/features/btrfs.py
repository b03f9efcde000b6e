"""btrfs: filesystems spread over several devices ([[btrfs]]), both flavours.

A btrfs filesystem on one device needs nothing beyond its kernel module (and `subvol=` in the
mount options picks a subvolume). One on several devices mounts only once the kernel knows
every member: systemd flavour: udev's btrfs builtin (64-btrfs.rules) holds the device back until
all members are there; scripted flavour: a pre-mount hook waits for the members (bounded,
naming what is missing), then runs `btrfs device scan`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .api import (
    Context,
    Contribution,
    Feature,
    Generated,
    Hook,
    Host,
    Program,
    Report,
    Tables,
    check_device,
    setting,
)
from .common import UNIT_DIR

PROFILES = ("single", "raid0", "raid1", "raid10", "dup")


@dataclass(frozen=True)
class Btrfs:
    """A btrfs filesystem on several devices (one [[filesystems]] entry, or several with
    `subvol=`, mount it)."""

    filesystem: str = setting(
        "How the [[filesystems]] entries name it: LABEL= or UUID=.", "", check=check_device,
        example='"LABEL=pool"')
    devices: tuple[str, ...] = setting("Every member device.", factory=tuple,
                                       check=check_device,
                                       example='["PARTLABEL=pool-a", "PARTLABEL=pool-b"]')
    profile: str = setting("Data and metadata profile (for `bootgen verify`'s test disks).",
                           "raid1", choices=PROFILES)


BTRFS = Tables("btrfs", Btrfs)


def references(host: Host) -> Iterator[tuple[str, str]]:
    for i, b in enumerate(BTRFS.of(host)):
        for j, dev in enumerate(b.devices):
            yield f"btrfs[{i}].devices[{j}]", dev


def check(host: Host, report: Report) -> None:
    for i, b in enumerate(BTRFS.of(host)):
        if not b.filesystem:
            report.add(f"btrfs[{i}].filesystem", "missing",
                       "name the filesystem as [[filesystems]] do (LABEL= or UUID=)")
            continue
        if not b.filesystem.startswith(("LABEL=", "UUID=")):
            report.add(f"btrfs[{i}].filesystem", f"'{b.filesystem}' names one device",
                       "a btrfs on several devices is found by its LABEL= or UUID=")
        mounts = [fs for fs in host.filesystems if fs.device == b.filesystem]
        if not mounts:
            report.add(f"btrfs[{i}].filesystem", f"no [[filesystems]] entry is on {b.filesystem}")
        elif any(fs.fstype != "btrfs" for fs in mounts):
            report.add(f"btrfs[{i}].filesystem", f"{b.filesystem} is not mounted as btrfs")
        if len(b.devices) < 2:
            report.add(f"btrfs[{i}].devices", "a [[btrfs]] entry is for several devices",
                       "list every member; a one-device btrfs needs no [[btrfs]] entry")


def multi_device(host: Host) -> list[Btrfs]:
    """The [[btrfs]] filesystems stage one mounts."""
    boot = {fs.device for fs in host.boot_filesystems}
    return [b for b in BTRFS.of(host) if b.filesystem in boot]


def contribute(host: Host, ctx: Context) -> Contribution:
    pools = multi_device(host)
    if ctx.flavor == "systemd":
        # udev's btrfs builtin (64-btrfs.rules, the udev feature's) asks /dev/btrfs-control
        # whether all members are there; that node exists once btrfs.ko is loaded, so the
        # coldplug waits for systemd-modules-load (the base feature loads btrfs at start)
        return Contribution(generated=(Generated(
            f"{UNIT_DIR}/systemd-udev-trigger.service.d/bootgen-btrfs.conf",
            content=b"# bootgen: btrfs.ko before the coldplug, so that udev knows when every "
                    b"member of a btrfs is there\n[Unit]\nAfter=systemd-modules-load.service\n"),))
    view = {"pools": [{"filesystem": b.filesystem, "devices": list(b.devices)} for b in pools]}
    return Contribution(
        programs=(Program("/usr/bin/btrfs"),),
        hooks=(Hook("pre-mount", "scripts-legacy/btrfs.sh.j2", view=view,
                    after=ctx.after([d for b in pools for d in b.devices], "btrfs")),),
    )


FEATURE = Feature(
    name="btrfs",
    doc="btrfs on several devices: every member found before mounting ([[btrfs]])",
    applies=lambda host, ctx: bool(multi_device(host)),
    contribute=contribute,
    sections=(BTRFS,),
    check=check,
    references=references,
)
