"""Trees that `bootgen detect --root` reads: the captured ones (tests/fixtures/detect/*.json,
made by tools/capture-fixtures.py from layouts booted in QEMU) unpacked, and small hand-built
ones laid out as the kernel lays out sysfs (for names no capture has)."""

from __future__ import annotations

import json
import os
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "detect"


def captured(name: str, dest: Path) -> Path:
    """tests/fixtures/detect/<name>.json unpacked into dest: {"files": {path: text},
    "links": {path: target}}."""
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    for rel, text in data["files"].items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for rel, target in data["links"].items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_symlink():
            os.symlink(target, p)
    return dest


def available() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


class Tree:
    """A hand-built system: virtio disks on PCI, partitions, dm and md devices, udev records."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pci = 2
        self.write("proc/sys/kernel/osrelease", "6.1.0-test-amd64\n")
        self.write("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")

    def write(self, rel: str, text: str) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def link(self, rel: str, target: str) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)

    def udev(self, devno: str, props: dict[str, str], links: tuple[str, ...] = ()) -> None:
        self.write(f"run/udev/data/b{devno}", "".join(f"S:{s}\n" for s in links)
                   + "".join(f"E:{k}={v}\n" for k, v in props.items()))

    def disk(self, name: str, major: int, props: dict[str, str] | None = None) -> str:
        """A virtio disk /dev/<name>; returns its sysfs folder (relative to the root)."""
        slot = f"0000:00:{self.pci:02x}.0"
        vdev = f"virtio{self.pci}"
        self.pci += 1
        pci = f"sys/devices/pci0000:00/{slot}"
        folder = f"{pci}/{vdev}/block/{name}"
        self.write(f"{folder}/dev", f"{major}:0\n")
        self.link(f"{folder}/device", "../../../" + vdev)
        self.link(f"{pci}/driver", "../../../bus/pci/drivers/virtio-pci")
        self.link(f"{pci}/{vdev}/driver", "../../../../bus/virtio/drivers/virtio_blk")
        if not (self.root / "sys/bus/pci/drivers/virtio-pci/module").is_symlink():
            self.link("sys/bus/pci/drivers/virtio-pci/module", "../../../../module/virtio_pci")
            self.link("sys/bus/virtio/drivers/virtio_blk/module",
                      "../../../../module/virtio_blk")
        self.link(f"sys/class/block/{name}", f"../../{folder.removeprefix('sys/')}")
        self.udev(f"{major}:0", props or {})
        return folder

    def part(self, disk_folder: str, name: str, devno: str, props: dict[str, str]) -> str:
        folder = f"{disk_folder}/{name}"
        self.write(f"{folder}/dev", devno + "\n")
        self.write(f"{folder}/partition", devno.split(":")[1] + "\n")
        self.link(f"sys/class/block/{name}", f"../../{folder.removeprefix('sys/')}")
        self.udev(devno, props)
        return folder

    def virtual(self, name: str, devno: str, slaves: list[str], props: dict[str, str], *,
                dm_name: str | None = None, dm_uuid: str | None = None,
                md_level: str | None = None, links: tuple[str, ...] = ()) -> None:
        folder = f"sys/devices/virtual/block/{name}"
        self.write(f"{folder}/dev", devno + "\n")
        (self.root / folder / "slaves").mkdir(parents=True, exist_ok=True)
        for s in slaves:
            self.link(f"{folder}/slaves/{s}", f"../../../../../class/block/{s}")
        if dm_name is not None:
            self.write(f"{folder}/dm/name", dm_name + "\n")
            self.write(f"{folder}/dm/uuid", (dm_uuid or "") + "\n")
        if md_level is not None:
            self.write(f"{folder}/md/level", md_level + "\n")
        self.link(f"sys/class/block/{name}", f"../../devices/virtual/block/{name}")
        self.udev(devno, props, links)

    def mounts(self, *lines: str) -> None:
        self.write("proc/self/mountinfo", "".join(
            f"{20 + i} 1 {line}\n" for i, line in enumerate(lines)))


LUKS_UUID = "0b410392-83a4-4414-af82-0147d3492565"
HOSTILE_DIR = '/srv/we"ird \\dir\n[boot]'


def _escape(path: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def luks_lvm_tree(root: Path, *, keyfile: str | None = "/etc/keys/root key") -> Tree:
    """LVM on LUKS on a partition, and a hostile mount point on a second disk."""
    t = Tree(root)
    vda = t.disk("vda", 254)
    t.part(vda, "vda1", "254:1", {"ID_FS_TYPE": "crypto_LUKS", "ID_FS_UUID": LUKS_UUID,
                                  "ID_PART_ENTRY_UUID": "11111111-2222-3333-4444-555555555555"})
    t.virtual("dm-0", "253:0", ["vda1"], {"DM_NAME": "cryptlvm", "ID_FS_TYPE": "LVM2_member"},
              dm_name="cryptlvm", dm_uuid=f"CRYPT-LUKS2-{LUKS_UUID.replace('-', '')}-cryptlvm")
    t.virtual("dm-1", "253:1", ["dm-0"], {"DM_VG_NAME": "vg-sys", "DM_LV_NAME": "root",
                                          "ID_FS_TYPE": "ext4", "ID_FS_UUID": "aaaa-bbbb"},
              dm_name="vg--sys-root", dm_uuid="LVM-" + "x" * 64)
    vdb = t.disk("vdb", 253 + 1 * 0 + 10)
    t.part(vdb, "vdb1", "263:1", {"ID_FS_TYPE": "xfs", "ID_FS_UUID": "c94b0701-0263-4720-baa1-"
                                  "fbb33338d0ca"})
    t.mounts("253:1 / / rw,relatime - ext4 /dev/mapper/vg--sys-root rw",
             f"263:1 / {_escape(HOSTILE_DIR)} rw - xfs /dev/vdb1 rw")
    t.write("etc/fstab", "/dev/mapper/vg--sys-root / ext4 errors=remount-ro 0 1\n"
            f"UUID=c94b0701-0263-4720-baa1-fbb33338d0ca {_escape(HOSTILE_DIR)} xfs "
            "noatime,x-initrd.mount,nofail 0 2\n")
    key = _escape(keyfile) if keyfile else "none"
    t.write("etc/crypttab", f"cryptlvm UUID={LUKS_UUID} {key} luks,discard,tries=5,"
            "no-read-workqueue\n")
    if keyfile:
        t.write(keyfile.lstrip("/"), "SECRET-KEY-MATERIAL\n")
    t.write("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/mapper/vg--sys-root ro "
            "console=tty0 console=ttyS0,115200\n")
    return t


def uplink(t: Tree, name: str = "en\"p1s0", mac: str = "52:54:00:12:34:56") -> None:
    """A NIC with the default route: virtio_net on PCI, /proc/net/route."""
    pci = f"sys/devices/pci0000:00/0000:00:{t.pci:02x}.0"
    t.pci += 1
    folder = f"{pci}/virtio9/net/{name}"
    t.write(f"{folder}/address", mac + "\n")
    t.link(f"{folder}/device", "../../../virtio9")
    t.link(f"{pci}/virtio9/driver", "../../../../bus/virtio/drivers/virtio_net")
    t.link("sys/bus/virtio/drivers/virtio_net/module", "../../../../module/virtio_net")
    t.link(f"sys/class/net/{name}", f"../../{folder.removeprefix('sys/')}")
    t.write("proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
            f"{name}\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
            f"{name}\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
