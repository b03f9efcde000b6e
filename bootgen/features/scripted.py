"""scripted: the legacy flavour, one POSIX shell /init run by busybox (busybox-static).

Hotplug is busybox's: modaliases found in sysfs are loaded at coldplug and mdev is the kernel's
hotplug helper afterwards, so devices and their modules appear as with udev. Devices are found
by LABEL/UUID/PARTUUID/PARTLABEL with util-linux blkid.
"""

from __future__ import annotations

from .api import Context, Contribution, Feature, Generated, Host, Program, Symlink
from .common import (
    LOCKED_HINT,
    VERIFY_PARAM,
    VERIFY_SCRIPT,
    checked_types,
    verify_options,
)

BUSYBOX = "/usr/bin/busybox"

# Applets linked into the image: what /init runs, plus a usable rescue shell.
APPLETS_BIN = (
    "awk", "cat", "chroot", "cp", "cttyhack", "cut", "date", "dd", "df", "dmesg", "echo",
    "env", "false", "find", "grep", "head", "hexdump", "kill", "killall", "less", "ln", "ls",
    "mkdir", "mkfifo", "mknod", "more", "mount", "mv", "ps", "readlink", "rm", "rmdir", "sed",
    "setsid", "sh",
    "sleep", "sort", "stat", "stty", "sync", "tail", "test", "touch", "tr", "true", "umount",
    "uname", "vi", "xargs", "[",
)
APPLETS_SBIN = (
    "blockdev", "halt", "insmod", "lsmod", "mdev", "modinfo", "modprobe", "poweroff", "reboot",
    "rmmod", "switch_root",
)

MDEV_CONF = b"""\
# bootgen: mdev is the kernel's hotplug helper in the scripted stage one.
# devtmpfs creates the nodes; mdev only loads the driver a new device asks for.
$MODALIAS=.* 0:0 660 @modprobe -q -b "$MODALIAS"
"""


def filesystems_view(host: Host) -> list[dict[str, object]]:
    return [
        {"mountpoint": fs.mountpoint, "device": fs.device, "fstype": fs.fstype,
         "options": ",".join(fs.options), "fsck": fs.fsck,
         "verify_options": ",".join(verify_options(fs.fstype, fs.options))}
        for fs in host.boot_filesystems
    ]


def contribute(host: Host, ctx: Context) -> Contribution:
    view = {
        "filesystems": filesystems_view(host),
        "init": host.boot.init,
        "device_timeout": host.boot.device_timeout,
        "shell_on_fail": host.rescue.shell_on_fail,
        "shell_access": host.rescue.access,
        "locked_hint": LOCKED_HINT,
        "fsck_types": list(checked_types(host)),
        "verify_param": VERIFY_PARAM,
        "verify_script": VERIFY_SCRIPT,
    }
    links = [Symlink(f"/usr/bin/{a}", "busybox") for a in APPLETS_BIN]
    links += [Symlink(f"/usr/sbin/{a}", "../bin/busybox") for a in APPLETS_SBIN]
    return Contribution(
        programs=(Program(BUSYBOX), Program("/usr/sbin/blkid")),
        symlinks=tuple(links),
        generated=(
            Generated("/init", template="scripts-legacy/init.sh.j2", view=view, mode=0o755),
            Generated("/etc/mdev.conf", content=MDEV_CONF),
        ),
    )


FEATURE = Feature(
    name="scripted",
    doc="busybox /init shell script (legacy flavour)",
    applies=lambda host, ctx: ctx.flavor == "scripted",
    contribute=contribute,
)
