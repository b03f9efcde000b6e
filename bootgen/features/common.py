"""Helpers shared by features: systemd names and paths, and what each filesystem type needs.

Facts, not features: anything here is used by more than one feature module.
"""

from __future__ import annotations

from ..config.schema import LOCKED_HINT
from .api import Host

__all__ = ["CHECKERS", "DM_RULES", "FS_MODULES", "LOCKED_HINT", "NO_REPLAY", "UNIT_DIR",
           "VERIFY_PARAM", "VERIFY_SCRIPT", "checked_types", "device_node", "escape_name",
           "escape_path", "verify_options"]

UNIT_DIR = "/usr/lib/systemd/system"
# device-mapper's udev rules (dmsetup): /dev/mapper links, by-id/by-uuid links of dm devices,
# and the cookie notification that lvm and cryptsetup wait for
DM_RULES = ("55-dm.rules", "60-persistent-storage-dm.rules", "95-dm-notify.rules")

# Kernel modules a filesystem type needs (the fs module's own dependencies follow from modules.dep).
FS_MODULES: dict[str, tuple[str, ...]] = {
    "ext4": ("ext4",),
    "ext3": ("ext4",),
    "ext2": ("ext4",),
    # crc32c_generic first: libcrc32c's softdep picks crc32c-intel, which fails under TCG, and
    # busybox modprobe (the scripted flavour's) follows no softdeps
    "xfs": ("crc32c_generic", "xfs"),
    "btrfs": ("crc32c_generic", "btrfs"),
    # Debian's kernel mounts vfat with codepage 437 and iocharset ascii by default
    "vfat": ("vfat", "nls_cp437", "nls_ascii", "nls_iso8859_1"),
    "f2fs": ("f2fs",),
    "squashfs": ("squashfs",),
    "tmpfs": (),
}

# fstype -> programs that check it at boot (the first is what fsck.<type> runs).
CHECKERS: dict[str, tuple[str, ...]] = {
    "ext2": ("/usr/sbin/e2fsck", "/usr/sbin/fsck.ext2"),
    "ext3": ("/usr/sbin/e2fsck", "/usr/sbin/fsck.ext3"),
    "ext4": ("/usr/sbin/e2fsck", "/usr/sbin/fsck.ext4"),
    "vfat": ("/usr/sbin/fsck.vfat",),
    "f2fs": ("/usr/sbin/fsck.f2fs",),
}


# Verification mode (`bootgen verify --host-disks`): with this parameter on the kernel command
# line, stage one mounts everything read-only without replaying journals, checks the real root
# with VERIFY_SCRIPT, prints one verdict line and powers off instead of switching root.
VERIFY_PARAM = "bootgen.verify=stop-before-switch-root"
VERIFY_SCRIPT = "/usr/lib/bootgen/host-verify"
# fstype -> the mount option that keeps a read-only mount from replaying its journal or log
NO_REPLAY: dict[str, str] = {
    "ext3": "noload",
    "ext4": "noload",
    "xfs": "norecovery",
    "btrfs": "rescue=nologreplay",
    "f2fs": "norecovery",
}


def verify_options(fstype: str, options: tuple[str, ...] | list[str]) -> list[str]:
    """Mount options of a filesystem in verification mode: the described ones without any
    read-write or journal-replay wish, then `ro` and the type's no-replay option."""
    drop = {"rw", "ro", "defaults", NO_REPLAY.get(fstype, "")}
    out = [o for o in options if o not in drop]
    return [*out, "ro", *([NO_REPLAY[fstype]] if fstype in NO_REPLAY else [])]


def checked_types(host: Host) -> tuple[str, ...]:
    """The fstypes stage one checks before mounting: those with a checker and fsck = true."""
    return tuple(sorted({fs.fstype for fs in host.boot_filesystems
                         if fs.fsck and fs.fstype in CHECKERS}))


def escape_name(name: str) -> str:
    """systemd-escape (not --path): bytes outside [A-Za-z0-9:_.] become \\xNN; "/" is "-"."""
    out = []
    for i, ch in enumerate(name):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def escape_path(path: str) -> str:
    """systemd-escape --path: "/" → "-", bytes outside [A-Za-z0-9:_.] → \\xNN (UTF-8)."""
    p = path.strip("/")
    return escape_name(p) if p else "-"


def device_node(device: str) -> str:
    """The udev path systemd uses for a device reference (LABEL=x → /dev/disk/by-label/x).

    As udev's encode_devnode_name(): ASCII outside [A-Za-z0-9#+-.:=@_] becomes \\xNN, valid
    UTF-8 (any non-ASCII character of a Python string) is kept."""
    for prefix, d in (("LABEL=", "by-label"), ("UUID=", "by-uuid"),
                      ("PARTUUID=", "by-partuuid"), ("PARTLABEL=", "by-partlabel")):
        if device.startswith(prefix):
            value = device[len(prefix):]
            if prefix in ("UUID=", "PARTUUID="):
                value = value.lower()
            return f"/dev/disk/{d}/" + "".join(
                c if not c.isascii() or c.isalnum() or c in "#+-.:=@_"
                else f"\\x{ord(c):02x}" for c in value)
    return device
