"""The block devices of a system as sysfs and the udev database show them, read below a root
directory: "/" for this machine, or a captured tree (tools/capture-host.sh) or a mounted system.

    scan(root) -> Blocks        every block device: its layers, udev properties and drivers
    Blocks.find(ref)            a device reference (/dev/..., UUID=, PARTUUID=, ...) -> Block

Symlinks are followed only inside the root; a link that leaves it is treated as absent.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BootgenError
from ..run import run
from .tables import UdevRecord, udev_record

Probe = Callable[[str], dict[str, str]]  # /dev/NAME -> udev-style properties


def read(root: Path, rel: str) -> str | None:
    """A file's text below the root, or None when it is missing or unreadable."""
    path = inside(root, rel)
    if path is None or not path.is_file():
        return None
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError:
        return None


def inside(root: Path, rel: str) -> Path | None:
    """root/rel with every symlink resolved, or None when that leaves the root."""
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, rel.lstrip("/")))
    if real != base and not real.startswith(base.rstrip("/") + "/"):
        return None
    return Path(real)


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _decode_enc(value: str) -> str:
    """udev's *_ENC values: \\xNN for unsafe bytes."""
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                 value.encode("utf-8", errors="surrogateescape"))
    return raw.decode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class Driver:
    device: str  # the device's folder below /sys/devices
    driver: str
    module: str | None  # the loadable module the driver comes from (None: built in or unknown)


@dataclass(frozen=True)
class Block:
    name: str  # kernel name: vda2, dm-0, md127
    devno: str  # "254:2"
    disk: str | None  # a partition's disk
    slaves: tuple[str, ...]  # the devices below a dm or md device
    dm_name: str | None = None
    dm_uuid: str | None = None
    md_level: str | None = None
    md_uuid: str | None = None
    udev: UdevRecord = field(default_factory=lambda: UdevRecord({}, ()))
    drivers: tuple[Driver, ...] = ()  # a disk's device chain, nearest first

    @property
    def kind(self) -> str:
        """disk, part, crypt (dm-crypt), lvm (an LV), dm (other device-mapper), md."""
        if self.dm_name is not None:
            uuid = self.dm_uuid or ""
            return "crypt" if uuid.startswith("CRYPT-") else "lvm" if uuid.startswith(
                "LVM-") else "dm"
        if self.md_level is not None:
            return "md"
        return "part" if self.disk else "disk"

    def prop(self, key: str) -> str | None:
        enc = self.udev.properties.get(f"{key}_ENC")
        if enc is not None:
            return _decode_enc(enc)
        return self.udev.properties.get(key) or None

    @property
    def fs_type(self) -> str | None:
        return self.prop("ID_FS_TYPE")

    @property
    def fs_uuid(self) -> str | None:
        return self.prop("ID_FS_UUID")

    @property
    def part_uuid(self) -> str | None:
        return self.prop("ID_PART_ENTRY_UUID")


_ATTRS = ("dm/name", "dm/uuid", "md/level", "md/uuid")


def _block(root: Path, name: str, real: Path, base: Path) -> Block | None:
    def attr(rel: str) -> str | None:
        p = real / rel
        try:
            return p.read_bytes().decode("utf-8", errors="surrogateescape").rstrip("\n")
        except OSError:
            return None

    devno = attr("dev")
    if not devno:
        return None
    disk = None
    if (real / "partition").is_file() and (real.parent / "dev").is_file():
        disk = real.parent.name
    try:
        slaves = tuple(sorted(os.listdir(real / "slaves")))
    except OSError:
        slaves = ()
    dm_name, dm_uuid, md_level, md_uuid = (attr(a) for a in _ATTRS)
    text = read(root, f"run/udev/data/b{devno}")
    udev = udev_record(text) if text is not None else UdevRecord({}, ())
    if md_level is None and udev.properties.get("MD_LEVEL") and name.startswith("md"):
        md_level = udev.properties["MD_LEVEL"]
    return Block(name, devno, disk, slaves, dm_name, dm_uuid, md_level, md_uuid, udev,
                 _drivers(real, base) if disk is None and dm_name is None and md_level is None
                 else ())


def _drivers(real: Path, base: Path) -> tuple[Driver, ...]:
    """The drivers bound on the way from a disk up to /sys/devices, nearest first."""
    dev = real / "device"
    if not dev.exists():
        return ()
    top = base / "sys" / "devices"
    here = Path(os.path.realpath(dev))
    out = []
    while here != top and str(here).startswith(str(top) + "/"):
        driver = _link_name(here / "driver")
        if driver:
            module = _link_name(Path(os.path.realpath(here / "driver")) / "module")
            out.append(Driver(str(here.relative_to(top)), driver, module))
        here = here.parent
    return tuple(out)


@dataclass(frozen=True)
class Blocks:
    root: Path
    by_name: dict[str, Block]

    def by_devno(self, devno: str) -> Block | None:
        return next((b for b in self.by_name.values() if b.devno == devno), None)

    def holders(self, name: str) -> list[Block]:
        return [b for b in self.by_name.values() if name in b.slaves]

    def find(self, ref: str) -> Block | None:
        """The block device a reference names, or None."""
        props = {"UUID=": "ID_FS_UUID", "LABEL=": "ID_FS_LABEL", "PARTUUID=": "ID_PART_ENTRY_UUID",
                 "PARTLABEL=": "ID_PART_ENTRY_NAME"}
        for prefix, key in props.items():
            if ref.startswith(prefix):
                want = ref[len(prefix):]
                fold = prefix in ("UUID=", "PARTUUID=")
                hits = [b for b in self.by_name.values() if (v := b.prop(key)) is not None
                        and (v.lower() == want.lower() if fold else v == want)]
                # members of an md array or a btrfs share its UUID: the array itself, or one
                hits.sort(key=lambda b: (b.fs_type == "linux_raid_member", b.name))
                if hits:
                    return hits[0]
                sub = {"UUID=": "by-uuid", "LABEL=": "by-label", "PARTUUID=": "by-partuuid",
                       "PARTLABEL=": "by-partlabel"}[prefix]
                return self._dev_link(f"dev/disk/{sub}/{want.lower() if fold else want}")
        if not ref.startswith("/dev/"):
            return None
        rest = ref.removeprefix("/dev/")
        if rest in self.by_name:
            return self.by_name[rest]
        for b in self.by_name.values():
            if b.dm_name is not None and rest == f"mapper/{b.dm_name}":
                return b
            if rest in b.udev.links:
                return b
            vg, lv = b.prop("DM_VG_NAME"), b.prop("DM_LV_NAME")
            if vg and lv and rest == f"{vg}/{lv}":
                return b
            if b.kind == "md" and rest == f"md/{b.prop('MD_DEVNAME')}":
                return b
        return self._dev_link(ref)

    def _dev_link(self, rel: str) -> Block | None:
        path = inside(self.root, rel)
        if path is None:
            return None
        if path.name in self.by_name and path.parent == inside(self.root, "dev"):
            return self.by_name[path.name]
        return None

    def dev_links(self, block: Block) -> list[str]:
        """The /dev links to a block device: udev's, else those the tree's /dev holds."""
        if block.udev.links:
            return [f"/dev/{link}" for link in block.udev.links]
        out = []
        dev = self.root / "dev"
        for folder in ("disk/by-uuid", "disk/by-partuuid", "disk/by-id", "disk/by-label",
                       "disk/by-partlabel", "mapper", "md"):
            try:
                names = sorted(os.listdir(dev / folder))
            except OSError:
                continue
            for n in names:
                if _link_name(dev / folder / n) == block.name:
                    out.append(f"/dev/{folder}/{n}")
        return out


def blkid(node: str) -> dict[str, str]:
    """udev's ID_FS_*/ID_PART_ENTRY_* properties of a device, probed by blkid (needs read
    access to the device: root); {} when it cannot."""
    try:
        out = run(["blkid", "-p", "-o", "udev", node], check=False, timeout=20)
    except BootgenError:
        return {}
    props = udev_record("".join(f"E:{line}\n" for line in out.stdout.decode(
        "utf-8", errors="surrogateescape").splitlines())).properties
    return props if out.returncode == 0 else {}


def scan(root: Path, probe: Probe | None = None) -> Blocks:
    """Every block device below root; `probe` fills in a device the udev database does not
    know (no udev running, as in containers and some VMs): for this machine, blkid."""
    base = Path(os.path.realpath(root))
    if probe is None and str(base) == "/":
        probe = blkid
    found: dict[str, Block] = {}
    folder = base / "sys" / "class" / "block"
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    for name in names:
        real = inside(base, f"sys/class/block/{name}")
        if real is None:
            continue
        b = _block(base, name, real, base)
        if b is not None and probe is not None and "ID_FS_TYPE" not in b.udev.properties:
            extra = probe(f"/dev/{name}")
            if extra:
                props = {**extra, **b.udev.properties}
                b = dataclasses.replace(b, udev=UdevRecord(props, b.udev.links))
        if b is not None:
            found[name] = b
    return Blocks(base, found)
