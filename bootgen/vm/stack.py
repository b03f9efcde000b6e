"""Test disks for stacked storage: LVM, RAID, multi-device btrfs, subvolumes, xfs, vfat, swap.

`plan_stack` decides, touching nothing, which virtio disks exist and what every device of the
description holds, through every layer: a partition holds a LUKS container, which holds an md
member; the md array holds an LVM physical volume; the volume group's logical volumes hold
filesystems, swap or further LUKS containers. `bootgen.vm.stackbuild` turns the plan into a job
script run inside a helper VM (there is no device-mapper or md on the build machine).

Layouts the userspace builder (bootgen.vm.disks) handles keep using it: `needs_helper` says
which is which.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..config.schema import Filesystem, Host
from ..errors import BuildError
from ..features import btrfs, lvm, mdraid
from ..features.luks import LUKS, Luks
from .disks import KEYFILE_EXTRA, MAX_DISKS, MAX_KEYFILE, Keyfile, derived_uuid, parse_ref

LUKS_HEADER_MB = 16
SIZES_MB = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 64, "btrfs": 160, "vfat": 16}
ROOT_MB = 64  # the test root holds busybox
SWAP_MB = 256  # holds a hibernation image of a 1 GiB guest (about 110 MB)
PV_SLACK_MB, MD_SLACK_MB = 8, 8  # LVM metadata; md superblock and data offset
EXTENT_MB = 4

_SUBVOL = re.compile(r"subvol=/?([^,]*)")


@dataclass(frozen=True)
class Mount:
    """A filesystem (or one subvolume of it) that a [[filesystems]] entry mounts."""

    mountpoint: str
    subvolume: str  # "" for the filesystem's top level


@dataclass(frozen=True)
class Content:
    """What a block device holds."""

    kind: str  # fs | swap | luks | pv | md | pool | none
    name: str = ""  # the LUKS, volume group, array name; the pool's filesystem reference
    fstype: str = ""
    label: str | None = None
    uuid: str | None = None
    mounts: tuple[Mount, ...] = ()
    keyfiles: tuple[Keyfile, ...] = ()  # for key_file_device: keyfiles at these paths


@dataclass(frozen=True)
class Device:
    """A block device of the layout: a disk, a partition, or one a layer makes."""

    id: str  # a shell-safe name: d0, d0p1, luks_root, md_root, lv_vg0_root
    kind: str  # disk | part | luks | md | lv
    ref: str  # how the job reaches it: "$d0", "${d0}1", "/dev/mapper/x", "/dev/md/x"
    size_mb: int
    content: Content
    disk: int = 0  # disk and part: the virtio position (vda = 0)
    number: int = 0  # part: the GPT partition number
    partlabel: str | None = None
    partuuid: str | None = None


@dataclass(frozen=True)
class Layer:
    """Something the job creates on top of devices: a LUKS volume, an md array, a volume
    group with its logical volumes, a multi-device btrfs."""

    kind: str  # luks | md | vg | pool
    name: str
    on: tuple[str, ...]  # ids of the devices it sits on
    makes: tuple[str, ...]  # ids of the devices it makes (LVs, the mapping, the array)
    uuid: str = ""
    label: str | None = None
    level: str = ""  # md level, btrfs profile
    key_file: str | None = None  # LUKS: the host keyfile added as a keyslot
    key_size: int | None = None
    key_offset: int | None = None
    content: Content | None = None  # pool: the filesystem it holds (subvolumes, mounts)


@dataclass(frozen=True)
class Stack:
    disks: tuple[Device, ...]  # in virtio order
    devices: tuple[Device, ...]  # every device, disks and partitions first
    layers: tuple[Layer, ...]  # in an order that builds each after what it sits on

    def device(self, ident: str) -> Device:
        return next(d for d in self.devices if d.id == ident)


def needs_helper(host: Host) -> bool:
    """Whether the test disks need the helper VM (anything beyond plain and LUKS filesystems
    on partitions or whole disks)."""
    return bool(lvm.LVM.of(host) or mdraid.RAID.of(host) or btrfs.BTRFS.of(host)
                or host.boot.resume_device
                or any(fs.fstype in ("xfs", "vfat") or subvolume(fs) for fs in host.filesystems))


def subvolume(fs: Filesystem) -> str:
    for opt in fs.options:
        m = _SUBVOL.fullmatch(opt)
        if m:
            return m.group(1)
    return ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text)


class _Planner:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.luks = {lk.name: lk for lk in LUKS.of(host)}
        self.vgs = {vg.name: vg for vg in lvm.LVM.of(host)}
        self.mds = {md.name: md for md in mdraid.RAID.of(host)}
        self.pools = {b.filesystem: b for b in btrfs.BTRFS.of(host)}
        self.roles: dict[str, Content] = {}  # device reference -> what it holds
        self.why: dict[str, str] = {}

    def norm(self, ref: str) -> str:
        """One spelling per device: UUIDs in lower case, LVs as /dev/VG/LV."""
        for prefix in ("UUID=", "PARTUUID="):
            if ref.startswith(prefix):
                return prefix + ref[len(prefix):].lower()
        lv = lvm.split_lv(ref)
        if lv and lv[0] in self.vgs:
            return f"/dev/{lv[0]}/{lv[1]}"
        return ref

    # -- what each reference must hold --------------------------------------------------------

    def role(self, ref: str, content: Content, what: str) -> None:
        key = self.norm(ref)
        old = self.roles.get(key)
        if old is None:
            self.roles[key] = content
            self.why[key] = what
            return
        if old.kind == content.kind == "fs" and old.fstype == content.fstype == "btrfs":
            mounts = old.mounts + content.mounts
            subvols = [m.subvolume for m in mounts]
            if len(set(subvols)) == len(subvols):
                self.roles[key] = dataclasses.replace(old, mounts=mounts)
                return
        raise BuildError(f"{ref} is the device of both {self.why[key]} and {what}",
                         hint="give each its own device (btrfs: its own subvol=)")

    def collect(self) -> None:
        host = self.host
        for fs in host.filesystems:
            if fs.fstype == "tmpfs":
                continue
            what = f"'{fs.mountpoint}'"
            content = Content("fs", fstype=fs.fstype, mounts=(Mount(fs.mountpoint,
                                                                    subvolume(fs)),))
            self.role(fs.device, content, what)
        for lk in self.luks.values():
            if lk.header:
                raise BuildError(f"[[luks]] '{lk.name}': a detached header is not supported by "
                                 "the test disks of stacked storage (LVM, RAID, btrfs)",
                                 hint="verify the detached header in a description without them")
            self.role(lk.device, Content("luks", name=lk.name), f"[[luks]] '{lk.name}'")
        for vg in self.vgs.values():
            for dev in vg.devices:
                self.role(dev, Content("pv", name=vg.name), f"a physical volume of '{vg.name}'")
        for md in self.mds.values():
            for dev in md.devices:
                self.role(dev, Content("md", name=md.name), f"a member of /dev/md/{md.name}")
        for pool in self.pools.values():
            for dev in pool.devices:
                self.role(dev, Content("pool", name=pool.filesystem),
                          f"a member of the btrfs {pool.filesystem}")
        if host.boot.resume_device:
            self.role(host.boot.resume_device, Content("swap"), "the resume device")
        self.keyfiles()

    def keyfiles(self) -> None:
        for lk in self.luks.values():
            if not (lk.key_file_device and lk.key_file_path):
                continue
            size = (lk.key_file_offset or 0) + (lk.key_file_size or 0) + KEYFILE_EXTRA
            if size > MAX_KEYFILE:
                raise BuildError(f"[[luks]] '{lk.name}': key_file_offset + key_file_size is too "
                                 "large for a test keyfile")
            key = self.norm(lk.key_file_device)
            old = self.roles.get(key, Content("fs", fstype="ext4"))
            if old.kind != "fs":
                raise BuildError(f"[[luks]] '{lk.name}': key_file_device {lk.key_file_device} "
                                 f"holds {old.kind}, not a filesystem")
            kf = Keyfile(lk.key_file_path, size, (lk.name,))
            self.roles[key] = dataclasses.replace(old, keyfiles=(*old.keyfiles, kf))
            self.why.setdefault(key, f"the keyfile device of [[luks]] '{lk.name}'")

    # -- sizes ------------------------------------------------------------------------------------

    def size(self, content: Content, ref: str) -> int:
        kind = content.kind
        if kind == "fs":
            base = ROOT_MB if any(m.mountpoint == "/" for m in content.mounts) else 0
            return max(base, SIZES_MB.get(content.fstype, 16) + 16 * (len(content.mounts) - 1))
        if kind == "swap":
            return SWAP_MB
        if kind == "pool":
            return SIZES_MB["btrfs"]
        if kind == "luks":
            return self.inner_size(f"/dev/mapper/{content.name}") + LUKS_HEADER_MB
        if kind == "md":
            return self.inner_size(f"/dev/md/{content.name}") + MD_SLACK_MB
        if kind == "pv":
            vg = self.vgs[content.name]
            total = sum(self.lv_size(content.name, lv) for lv in self.lvs(content.name))
            return -(-total // len(vg.devices)) + PV_SLACK_MB
        return 16

    def inner_size(self, ref: str) -> int:
        content = self.roles.get(self.norm(ref), Content("none"))
        return self.size(content, ref)

    def lvs(self, vg: str) -> list[str]:
        refs = [(k, k) for k in self.roles]
        return lvm.logical_volumes(self.host, refs).get(vg, [])

    def lv_size(self, vg: str, lv: str) -> int:
        size = self.inner_size(f"/dev/{vg}/{lv}")
        return -(-size // EXTENT_MB) * EXTENT_MB

    # -- the layout -------------------------------------------------------------------------------

    def plan(self) -> Stack:
        self.collect()
        devices: list[Device] = []
        placed: dict[str, str] = {}  # reference -> device id
        physical = [(k, c) for k, c in self.roles.items()
                    if not _virtual(k) and k not in self.pools]
        slots: dict[int, list[tuple[str, Content]]] = {}
        for key, content in physical:
            r = parse_ref(key, self.why[key])
            if r.kind == "disk":
                slots.setdefault(r.disk, []).append((key, content))
        free = (n for n in range(10**6) if n not in slots)
        for key, content in physical:
            r = parse_ref(key, self.why[key])
            if r.kind != "disk":
                slots[next(free)] = [(key, content)]
        if max(slots, default=-1) >= MAX_DISKS:
            raise BuildError(f"the test disks would need more than {MAX_DISKS} drives")
        for pos in range(max(slots, default=-1) + 1):
            entries = slots.get(pos, [])
            parts: list[Device] = []
            whole: Device | None = None
            for key, content in entries:
                r = parse_ref(key, self.why[key])
                labelled = _with_identity(content, r.kind, r.value)
                size = self.size(content, key)
                if r.kind in ("partlabel", "partuuid") or (r.kind == "disk" and r.part):
                    number = r.part or 1
                    dev = Device(f"d{pos}p{number}", "part", f"${{d{pos}}}{number}", size,
                                 labelled, disk=pos, number=number,
                                 partlabel=r.value if r.kind == "partlabel" else None,
                                 partuuid=r.value if r.kind == "partuuid" else None)
                    parts.append(dev)
                else:
                    if whole is not None or len(entries) > 1:
                        raise BuildError(f"/dev/vd{chr(97 + pos)} is given to "
                                         f"{self.why[key]} as a whole disk and to more",
                                         hint="give each its own device")
                    whole = Device(f"d{pos}", "disk", f"$d{pos}", size, labelled, disk=pos)
                placed[key] = (whole or parts[-1]).id
            if whole is not None:
                devices.append(whole)
                continue
            parts.sort(key=lambda p: p.number)
            size = sum(p.size_mb for p in parts) + 2
            devices.append(Device(f"d{pos}", "disk", f"$d{pos}", max(size, 1),
                                  Content("gpt" if parts else "none"), disk=pos))
            devices += parts
        layers = self.layers(devices, placed)
        return Stack(tuple(d for d in devices if d.kind == "disk"), tuple(devices),
                     tuple(layers))

    def layers(self, devices: list[Device], placed: dict[str, str]) -> list[Layer]:
        """LUKS volumes, arrays, volume groups and pools, each after what it sits on."""

        def dev_id(ref: str) -> str:
            key = self.norm(ref)
            if key in placed:
                return placed[key]
            raise BuildError(f"{ref} is neither a test disk nor made by a described layer")

        pending: list[Layer] = []
        for lk in self.luks.values():
            ident = f"luks_{_safe(lk.name)}"
            inner = self.roles.get(self.norm(f"/dev/mapper/{lk.name}"), Content("none"))
            devices.append(Device(ident, "luks", f"/dev/mapper/{lk.name}",
                                  self.inner_size(f"/dev/mapper/{lk.name}"), inner))
            placed[self.norm(f"/dev/mapper/{lk.name}")] = ident
            outer = self.roles[self.norm(lk.device)]
            pending.append(_luks_layer(lk, lk.device, outer, ident))
        for md in self.mds.values():
            ident = f"md_{_safe(md.name)}"
            inner = self.roles.get(self.norm(f"/dev/md/{md.name}"), Content("none"))
            devices.append(Device(ident, "md", f"/dev/md/{md.name}",
                                  self.inner_size(f"/dev/md/{md.name}"), inner))
            placed[self.norm(f"/dev/md/{md.name}")] = ident
            pending.append(Layer("md", md.name, tuple(md.devices), (ident,),
                                 uuid=mdraid.mdadm_uuid(md.uuid), level=md.level))
        for vg in self.vgs.values():
            made = []
            for lv in self.lvs(vg.name):
                ident = f"lv_{_safe(vg.name)}_{_safe(lv)}"
                inner = self.roles[self.norm(f"/dev/{vg.name}/{lv}")]
                devices.append(Device(ident, "lv", f"/dev/{vg.name}/{lv}",
                                      self.lv_size(vg.name, lv), inner))
                placed[self.norm(f"/dev/{vg.name}/{lv}")] = ident
                placed[self.norm(f"/dev/mapper/{lvm.mapper_name(vg.name, lv)}")] = ident
                made.append(ident)
            pending.append(Layer("vg", vg.name, tuple(vg.devices), tuple(made)))
        for pool in self.pools.values():
            content = self.roles.get(self.norm(pool.filesystem))
            if content is None:
                continue
            r = parse_ref(pool.filesystem, f"[[btrfs]] {pool.filesystem}")
            pending.append(Layer("pool", pool.filesystem, tuple(pool.devices), (),
                                 uuid=r.value if r.kind == "uuid" else "",
                                 label=r.value if r.kind == "label" else None,
                                 level=pool.profile, content=content))
        # resolve references to ids, then order: a layer once everything it sits on exists
        exists = {d.id for d in devices if d.kind in ("disk", "part")}
        ordered: list[Layer] = []
        layers = [dataclasses.replace(layer, on=tuple(dev_id(r) for r in layer.on))
                  for layer in pending]
        while layers:
            ready = next((la for la in layers if set(la.on) <= exists), None)
            if ready is None:
                raise BuildError("the storage layers depend on each other in a circle: "
                                 + ", ".join(f"{la.kind} {la.name}" for la in layers))
            ordered.append(ready)
            exists |= set(ready.makes)
            layers.remove(ready)
        return ordered


def _luks_layer(lk: Luks, ref: str, outer: Content, ident: str) -> Layer:
    return Layer("luks", lk.name, (ref,), (ident,), uuid=outer.uuid or "",
                 label=outer.label, key_file=lk.key_file, key_size=lk.key_file_size,
                 key_offset=lk.key_file_offset)


def _with_identity(content: Content, kind: str, value: str) -> Content:
    """A LABEL= or UUID= reference names the content: its filesystem, swap or LUKS label."""
    if kind not in ("label", "uuid"):
        return content
    if content.kind in ("pv", "md", "pool"):
        raise BuildError(f"{kind.upper()}={value}: a {content.kind} member is found by its "
                         "partition or disk", hint="use PARTLABEL= or /dev/vdX")
    if kind == "label":
        return dataclasses.replace(content, label=value)
    return dataclasses.replace(content, uuid=value)


def _virtual(ref: str) -> bool:
    return ref.startswith(("/dev/mapper/", "/dev/md/")) or lvm.split_lv(ref) is not None




def plan_stack(host: Host) -> Stack:
    """The disks and layers that make every device of `host` exist in a guest."""
    return _Planner(host).plan()


def uuid_for(*parts: str) -> str:
    """A UUID fixed by the plan (objects the description does not give one)."""
    return derived_uuid("stack", *parts)
