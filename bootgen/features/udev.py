"""udev: systemd-udevd with the rules stage one needs (systemd flavour).

Rules are copied from the host; the helper programs they call (PROGRAM=, IMPORT{program}=,
RUN{program}=) are found by the resolver (bootgen.resolve reads the copied rules).
"""

from __future__ import annotations

from .api import Context, Contribution, Feature, Host, HostFile, Program, Symlink
from .common import UNIT_DIR

RULES_DIR = "/usr/lib/udev/rules.d"
RULES = (
    "50-udev-default.rules",   # permissions and basic properties
    "60-block.rules",          # block device change events
    "60-persistent-storage.rules",  # /dev/disk/by-label, by-uuid, by-partuuid, ...
    "64-btrfs.rules",          # btrfs multi-device readiness
    "80-drivers.rules",        # load modules by modalias
    "99-systemd.rules",        # the systemd tag: without it .device units never activate
)
UNITS = ("systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
         "systemd-udev-trigger.service")


def contribute(host: Host, ctx: Context) -> Contribution:
    return Contribution(
        programs=(Program("/usr/bin/udevadm"),),
        files=tuple(HostFile(f"{RULES_DIR}/{r}", optional=r == "64-btrfs.rules") for r in RULES)
        + tuple(HostFile(f"{UNIT_DIR}/{u}") for u in UNITS),
        symlinks=(
            Symlink(f"{UNIT_DIR}/sysinit.target.wants/systemd-udevd.service",
                    "../systemd-udevd.service"),
            Symlink(f"{UNIT_DIR}/sysinit.target.wants/systemd-udev-trigger.service",
                    "../systemd-udev-trigger.service"),
            Symlink(f"{UNIT_DIR}/sockets.target.wants/systemd-udevd-control.socket",
                    "../systemd-udevd-control.socket"),
            Symlink(f"{UNIT_DIR}/sockets.target.wants/systemd-udevd-kernel.socket",
                    "../systemd-udevd-kernel.socket"),
        ),
    )


FEATURE = Feature(
    name="udev",
    doc="systemd-udevd, coldplug and the rules for disks and drivers",
    applies=lambda host, ctx: ctx.flavor == "systemd",
    contribute=contribute,
)
