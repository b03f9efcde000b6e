"""The machine's own disks for `bootgen verify --host-disks`: which whole disks hold the block
devices a description names, and how QEMU boots them without ever writing to them.

`lookup` resolves every device reference of the description (filesystems, resume device, LUKS
containers, RAID members, LVM physical volumes, btrfs devices: `features.references`) that no
feature creates in stage one, through the /dev/disk/by-* links udev made, to its device node,
and that node to the whole disks under it (sysfs: a partition's parent, a device-mapper or md
device's slaves). /dev and /sys are parameters, so the lookup is tested on a fake tree.

`attach` opens each disk read-only (its size; the one-line message when the user may not read
it) and `overlays` puts a qcow2 overlay in a temporary folder in front of each: QEMU opens the
disk itself read-only (`qemu.Drive.backing`) and every write of the guest lands in the overlay.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Host
from ..errors import BootError, UsageError
from ..features import provided, references
from ..features.common import device_node
from ..run import run
from .qemu import Drive

# Settings keys whose device may sit inside a stacked device (LUKS, RAID, LVM) that is not open
# on the build machine: such a reference may be invisible here and still appear in stage one.
MAY_BE_STACKED = ("filesystems[", "boot.resume_device", "btrfs[")
MAX_DEPTH = 16  # device-mapper / md stacks deeper than this are a loop in a fake tree
ACCESS_HINT = ("run it as root, or add yourself to the disk group (sudo adduser $USER disk) "
               "and log in again")


@dataclass(frozen=True)
class Found:
    key: str  # settings key, e.g. "filesystems[0].device"
    ref: str  # the reference as written, e.g. "UUID=..."
    node: str  # the device node it resolves to, e.g. "/dev/sda2"
    disks: tuple[str, ...]  # the whole disks holding it, e.g. ("/dev/sda",)


@dataclass(frozen=True)
class Lookup:
    found: tuple[Found, ...]
    missing: tuple[tuple[str, str], ...]  # (key, reference): on no device of this machine
    hidden: tuple[tuple[str, str], ...]  # not visible here, may be inside a stacked device

    @property
    def disks(self) -> tuple[str, ...]:
        return tuple(sorted({d for f in self.found for d in f.disks}))


@dataclass(frozen=True)
class Attached:
    path: str  # absolute path of the disk or image file
    size: int  # bytes
    block: bool  # a block device (else a regular file)
    interface: str  # how QEMU attaches it (qemu.INTERFACES): like the host's controller


def _in_dev(path: str, dev: Path) -> Path:
    """A /dev/... path of the description, under the /dev tree `dev`."""
    return dev / os.path.relpath(path, "/dev")


def resolve(ref: str, dev: Path = Path("/dev")) -> Path | None:
    """The device node a reference names on this machine (under `dev`), or None."""
    node = device_node(ref)
    if not node.startswith("/dev/") or ".." in node.split("/"):
        return None
    link = _in_dev(node, dev)
    if not os.path.lexists(link) and ref.startswith(("UUID=", "PARTUUID=")):
        # udev keeps the case a filesystem stores (vfat: upper case): compare without it
        try:
            names = os.listdir(link.parent)
        except OSError:
            names = []
        link = next((link.parent / n for n in sorted(names) if n.lower() == link.name), link)
    if not os.path.exists(link):
        return None
    real = Path(os.path.realpath(link))
    root = Path(os.path.realpath(dev))
    if root not in real.parents:
        return None
    return real


def whole_disks(name: str, sys: Path = Path("/sys"), depth: int = 0) -> tuple[str, ...]:
    """The names of the whole disks holding block device `name` (sysfs under `sys`): a
    partition's parent; the slaves of a device-mapper or md device, recursively."""
    entry = sys / "class" / "block" / name
    if depth > MAX_DEPTH or not os.path.exists(entry):
        return ()
    real = Path(os.path.realpath(entry))
    if (real / "partition").exists():
        return whole_disks(real.parent.name, sys, depth + 1)
    slaves = real / "slaves"
    below = sorted(os.listdir(slaves)) if slaves.is_dir() else []
    if below:
        return tuple(sorted({d for s in below for d in whole_disks(s, sys, depth + 1)}))
    return (name,)


def lookup(host: Host, dev: Path = Path("/dev"), sys: Path = Path("/sys")) -> Lookup:
    """Where the description's block devices are on this machine."""
    refs = references(host)
    made = provided(host, refs)
    found: list[Found] = []
    missing: list[tuple[str, str]] = []
    hidden: list[tuple[str, str]] = []
    for key, ref in refs:
        if ref in made:
            continue  # created in stage one from the devices below it
        node = resolve(ref, dev)
        disks = whole_disks(node.name, sys) if node is not None else ()
        if node is not None and disks:
            found.append(Found(key, ref, "/dev/" + os.path.relpath(node, os.path.realpath(dev)),
                               tuple(str(dev / d) for d in disks)))
        elif made and key.startswith(MAY_BE_STACKED):
            hidden.append((key, ref))
        else:
            missing.append((key, ref))
    return Lookup(tuple(found), tuple(missing), tuple(hidden))


def host_disks(host: Host, dev: Path = Path("/dev"), sys: Path = Path("/sys")) -> Lookup:
    """`lookup`, failing (naming every reference) when a device is on no disk of this machine
    or no disk is found at all."""
    found = lookup(host, dev, sys)
    if found.missing:
        names = "; ".join(f"{ref} ({key})" for key, ref in found.missing)
        raise BootError(f"not on any disk of this machine: {names}", location="--host-disks",
                        hint="a typo in the description? `ls -l /dev/disk/by-uuid "
                        "/dev/disk/by-label` shows what exists; or attach disks with --disk")
    if not found.disks:
        raise BootError("the description names no device found on this machine",
                        location="--host-disks", hint="attach disks with --disk PATH")
    return found


def bus(name: str, sys: Path = Path("/sys")) -> str:
    """The QEMU interface closest to the controller of host disk `name`, so that stage one
    needs the same kind of driver: NVMe, SATA (QEMU's AHCI), virtio, else virtio-scsi."""
    real = os.path.realpath(sys / "class" / "block" / name)
    if "/nvme" in real:
        return "nvme"
    if "/virtio" in real or name.startswith("vd"):
        return "virtio"
    if "/ata" in real:
        return "ide"
    if "/host" in real or "/usb" in real:
        return "scsi"
    return "virtio"


def attach(paths: Sequence[str], sys: Path = Path("/sys")) -> list[Attached]:
    """Open each disk or image file read-only for its size. Unreadable: one line, exit 2."""
    out: list[Attached] = []
    for p in paths:
        path = os.path.abspath(p)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM) and os.geteuid() == 0:
                raise UsageError(f"cannot read {path}: {e.strerror}, even as root",
                                 location="--host-disks", hint="a container or a security "
                                 "module that keeps the device from you? run it on the host"
                                 ) from e
            if e.errno in (errno.EACCES, errno.EPERM):
                raise UsageError(f"cannot read {path}: reading the disks needs root or the "
                                 "disk group", location="--host-disks", hint=ACCESS_HINT) from e
            raise UsageError(f"cannot open {path}: {e.strerror}", location="--disk") from e
        try:
            st = os.fstat(fd)
            if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise UsageError(f"{path} is neither a block device nor a regular file",
                                 location="--disk")
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
        block = stat.S_ISBLK(st.st_mode)
        name = os.path.basename(os.path.realpath(path))
        out.append(Attached(path, size, block, bus(name, sys) if block else "virtio"))
    if sum(a.interface == "ide" for a in out) > 4:  # QEMU's AHCI has 6 ports, 4 for -drive
        out = [a if a.interface != "ide" else Attached(a.path, a.size, a.block, "scsi")
               for a in out]
    return out


def overlays(disks: Sequence[Attached], folder: Path) -> tuple[Drive, ...]:
    """A fresh qcow2 overlay in `folder` in front of each disk. The overlay is created without
    opening the disk (`qemu-img create -u` with the size read before); QEMU opens the disk
    read-only (Drive.backing)."""
    drives = []
    for i, d in enumerate(disks):
        overlay = folder / f"overlay{i}.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", d.path,
             str(overlay), str(d.size)])
        drives.append(Drive(str(overlay), format="qcow2", interface=d.interface,
                            backing=d.path,
                            backing_driver="host_device" if d.block else "file"))
    return tuple(drives)
