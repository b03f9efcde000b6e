"""Synthetic test disks for `bootgen verify`: images that mirror a host's described layout.

`plan_disks` decides, touching nothing, which virtio disks exist and which filesystem (label,
UUID, PARTUUID, PARTLABEL) sits where, so that every device reference of the description finds
its device in the guest. `bootgen.vm.diskbuild.build_disks` makes the images in userspace
(mke2fs -d, mkfs.btrfs --rootdir, sfdisk on image files, LUKS2 containers with cryptsetup on
plain files and our own AES-XTS (bootgen.luksdisk): no root, loop devices or device-mapper).
"/" gets a busybox test root whose /sbin/init (qemu/testroot-init.sh) reports what stage one
mounted. LUKS containers open with `luksdisk.TEST_PASSPHRASE` typed at the console, and with
the described keyfiles: a host `key_file` is added as a keyslot, a `key_file_device` gets a
test filesystem (or the described one it names) holding a derived keyfile at `key_file_path`.

Built images live in a content-addressed cache and are shared: boot them with QEMU
`snapshot=on` (or otherwise read-only) and never modify them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import Host
from ..errors import BuildError
from ..image import templates
from ..paths import cache_dir
from ..run import which

ROOT_SIZE_MB, OTHER_SIZE_MB = 64, 16
LUKS_HEADER_MB = 16  # LUKS2's default header area
MIN_SIZE_MB = {"btrfs": 128, "xfs": 300}
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8E47DE4"
EXT_TYPES = ("ext2", "ext3", "ext4")
LABEL_MAX = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 12, "btrfs": 255, "vfat": 11}
MAX_DISKS, MAX_PARTITIONS = 26, 128  # /dev/vda.../dev/vdz; GPT entries sfdisk creates
LUKS_LABEL_MAX = 47  # bytes of a LUKS2 label
KEYFILE_EXTRA = 64  # bytes of a derived keyfile beyond key_file_offset + key_file_size
MAX_KEYFILE = 4 << 20

_STD_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_BY = {"by-label": "label", "by-uuid": "uuid", "by-partuuid": "partuuid",
       "by-partlabel": "partlabel"}
_SAME_DEVICE = "give each filesystem its own device"


@dataclass(frozen=True)
class Keyfile:
    """A derived keyfile on a test filesystem, for [[luks]] entries with key_file_device."""

    path: str  # key_file_path
    size: int  # bytes of the file
    luks: tuple[str, ...]  # the [[luks]] entries it unlocks


@dataclass(frozen=True)
class FsImage:
    """One filesystem to create; uuid None: not fixed by the description (derived when built)."""

    fstype: str
    label: str | None
    uuid: str | None
    mountpoint: str  # "": mounted by nobody (a filesystem that only holds keyfiles)
    size_mb: int
    content: str  # "testroot" for "/", "marker" for other mountpoints, "keyfiles"
    keyfiles: tuple[Keyfile, ...] = ()


@dataclass(frozen=True)
class Partition:
    """A GPT partition, or number 0: the whole disk of a disk without partition table."""

    number: int
    name: str | None  # GPT PARTLABEL
    uuid: str | None  # PARTUUID (lower case); None: derived when built
    size_mb: int
    fs: FsImage | None
    luks: str | None  # name of the [[luks]] entry whose container this is
    luks_uuid: str | None = None  # the container's UUID=, when the description fixes it
    luks_label: str | None = None  # the container's LABEL= (a LUKS2 label)
    luks_header: bool = False  # detached header (not in the image): the container is all data


@dataclass(frozen=True)
class DiskSpec:
    name: str  # "disk0" → disk0.img
    table: str  # "gpt" | "none"
    size_mb: int
    partitions: tuple[Partition, ...]  # "none": one partition numbered 0, or none (a filler)
    serial: str  # virtio serial
    guest_name: str  # /dev/vda, ... in the order the drives are given to QEMU


@dataclass(frozen=True)
class BuiltDisk:
    spec: DiskSpec
    path: Path  # shared cache file: boot it with snapshot=on, never write to it
    # [[luks]] name -> the detached header made for its container on this disk (read-only
    # cache file): the description's `header` cannot be reproduced (random salts), so the
    # initrd under test must be built with this file as that entry's `header` instead
    headers: dict[str, Path] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class TestRoot:
    disk_id: str  # in /etc/bootgen-disk-id: identifies this exact set of images
    expected: tuple[str, ...]  # "<mountpoint> <fstype>" per stage-one filesystem


# --- planning --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    kind: str  # label | uuid | partuuid | partlabel | disk
    value: str = ""
    disk: int = 0
    part: int | None = None

    def text(self) -> str:
        if self.kind == "disk":
            return f"/dev/vd{chr(97 + self.disk)}{self.part or ''}"
        return f"{self.kind.upper()}={self.value}"


@dataclass(frozen=True)
class _Item:  # one thing to place: a filesystem, or a LUKS container (holding one or not)
    what: str  # for messages: "'/var'" or "[[luks]] 'data'"
    ref: _Ref
    fs: FsImage | None
    luks: str | None
    size_mb: int
    header: bool = False  # the LUKS container has a detached header


def parse_ref(device: str, what: str) -> _Ref:
    """Where a device reference points on the test disks."""
    ref = next((_Ref(p[:-1].lower(), device[len(p):]) for p in
                ("LABEL=", "UUID=", "PARTUUID=", "PARTLABEL=") if device.startswith(p)), None)
    m = re.match(r"^/dev/disk/(by-[a-z]+)/(.+)$", device)
    if m and m.group(1) in _BY:  # udev escapes "/" and odd characters as \xNN
        value = re.sub(r"\\x([0-9a-fA-F]{2})", lambda x: chr(int(x.group(1), 16)), m.group(2))
        ref = _Ref(_BY[m.group(1)], value)
    m = re.match(r"^/dev/vd([a-z])([1-9][0-9]*)?$", device)
    if m:
        ref = _Ref("disk", disk=ord(m.group(1)) - 97, part=int(m.group(2) or 0) or None)
        if (ref.part or 0) > MAX_PARTITIONS:
            raise BuildError(f"{what}: {device}: GPT has at most {MAX_PARTITIONS} partitions")
    if ref is None:
        raise BuildError(f"{what}: cannot place '{device}' on a test disk",
                         hint="the test disks are virtio (/dev/vdX); use LABEL=, UUID=, "
                         "PARTUUID=, PARTLABEL= or /dev/vdX[N]")
    if ref.kind == "partuuid":
        if not _STD_UUID.match(ref.value):
            raise BuildError(f"{what}: '{ref.value}' is not a GPT partition UUID",
                             hint="the test-disk builder makes GPT tables only (no MBR ids)")
        ref = _Ref("partuuid", ref.value.lower())
    if ref.kind == "partlabel" and (len(ref.value) > 36 or re.search(r'[",\\\n]', ref.value)):
        raise BuildError(f"{what}: '{ref.value}' cannot be a GPT partition name",
                         hint="at most 36 characters, without quotes, commas or backslashes")
    return ref


def _fs_image(fstype: str, mountpoint: str, ref: _Ref | None, what: str) -> FsImage:
    label = ref.value if ref and ref.kind == "label" else None
    fsuuid = ref.value if ref and ref.kind == "uuid" else None
    if label is not None and len(label.encode()) > LABEL_MAX.get(fstype, 255):
        raise BuildError(f"{what}: label '{label}' is too long for {fstype}",
                         hint=f"{fstype} labels have at most {LABEL_MAX[fstype]} bytes")
    vfat = re.compile(r"^[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}$")
    if fsuuid is not None and not (vfat if fstype == "vfat" else _STD_UUID).match(fsuuid):
        raise BuildError(f"{what}: '{fsuuid}' is not a {fstype} UUID",
                         hint="vfat: XXXX-XXXX; others: 8-4-4-4-12 hex digits")
    base = ROOT_SIZE_MB if mountpoint == "/" else OTHER_SIZE_MB
    content = {"/": "testroot", "": "keyfiles"}.get(mountpoint, "marker")
    return FsImage(fstype=fstype, label=label, uuid=fsuuid, mountpoint=mountpoint,
                   size_mb=max(base, MIN_SIZE_MB.get(fstype, 0)), content=content)


def _luks_ref(device: str, name: str) -> _Ref:
    ref = parse_ref(device, f"[[luks]] '{name}'")
    if ref.kind == "uuid" and not _STD_UUID.match(ref.value):
        raise BuildError(f"[[luks]] '{name}': '{ref.value}' is not a LUKS UUID",
                         hint="8-4-4-4-12 hex digits")
    if ref.kind == "label" and len(ref.value.encode()) > LUKS_LABEL_MAX:
        raise BuildError(f"[[luks]] '{name}': label '{ref.value}' is too long for LUKS2",
                         hint=f"LUKS2 labels have at most {LUKS_LABEL_MAX} bytes")
    return ref


def _ref_key(ref: _Ref) -> tuple[str, str, int, int | None]:
    if ref.kind == "disk":
        return ("disk", "", ref.disk, ref.part)
    return (ref.kind, ref.value.lower() if "uuid" in ref.kind else ref.value, 0, None)


def _items(host: Host) -> list[_Item]:
    items: list[_Item] = []
    lks = {lk.name: lk for lk in host.luks}
    used: dict[str, str] = {}
    for fs in host.filesystems:
        what = f"'{fs.mountpoint}'"
        if re.search(r'[\s"\\]', fs.mountpoint):
            raise BuildError(f"{what}: the test-disk builder cannot handle this mountpoint",
                             hint="no whitespace, quotes or backslashes")
        if fs.fstype == "tmpfs":
            continue  # no device
        if not fs.device.startswith("/dev/mapper/"):
            ref = parse_ref(fs.device, what)
            img = _fs_image(fs.fstype, fs.mountpoint, ref, what)
            items.append(_Item(what, ref, img, None, img.size_mb))
            continue
        name = fs.device.removeprefix("/dev/mapper/")
        if name not in lks:
            raise BuildError(f"{what}: no [[luks]] entry is named '{name}'",
                             hint="the test-disk builder makes /dev/mapper devices for LUKS only")
        if name in used:
            raise BuildError(f"{what} and {used[name]} are both on /dev/mapper/{name}",
                             hint=_SAME_DEVICE)
        used[name] = what
        img = _fs_image(fs.fstype, fs.mountpoint, None, what)
        header = lks[name].header is not None  # a detached header takes no room on the disk
        items.append(_Item(what, _luks_ref(lks[name].device, name), img, name,
                           img.size_mb + (0 if header else LUKS_HEADER_MB), header))
    for lk in host.luks:  # containers without a described filesystem (swap, raw data...)
        if lk.name not in used:
            header = lk.header is not None
            items.append(_Item(f"[[luks]] '{lk.name}'", _luks_ref(lk.device, lk.name), None,
                               lk.name, OTHER_SIZE_MB + (0 if header else LUKS_HEADER_MB),
                               header))
    seen: dict[tuple[str, str, int, int | None], str] = {}
    for it in items:
        key = _ref_key(it.ref)
        if it.ref.kind != "disk" and key in seen:
            raise BuildError(f"{it.ref.text()} is the device of both {seen[key]} and {it.what}",
                             hint="each device reference must name one device")
        seen[key] = it.what
    return _place_keyfiles(host, items)


def _place_keyfiles(host: Host, items: list[_Item]) -> list[_Item]:
    """Put a derived keyfile at key_file_path on each key_file_device: into the described
    filesystem that device is (also /dev/mapper/<name>), or a 16 MiB ext4 of its own. Entries
    naming the same device and path share one keyfile, long enough for all of them."""
    for lk in host.luks:
        if not (lk.key_file_device and lk.key_file_path):
            continue
        dev, what = lk.key_file_device, f"[[luks]] '{lk.name}': key_file_device"
        size = (lk.key_file_offset or 0) + (lk.key_file_size or 0) + KEYFILE_EXTRA
        if size > MAX_KEYFILE:
            raise BuildError(f"{what}: key_file_offset + key_file_size is too large for a test "
                             "keyfile", hint=f"at most {MAX_KEYFILE - KEYFILE_EXTRA} bytes")
        if dev.startswith("/dev/mapper/"):
            mapped = dev.removeprefix("/dev/mapper/")
            i = next((i for i, it in enumerate(items) if it.luks == mapped and it.fs), None)
            if i is None or mapped == lk.name:
                raise BuildError(f"{what}: {dev} holds no described filesystem" if i is None
                                 else f"{what}: the keyfile cannot be inside the volume it opens",
                                 hint="name the filesystem that holds the keyfile")
        else:
            ref = parse_ref(dev, what)
            i = next((i for i, it in enumerate(items) if _ref_key(it.ref) == _ref_key(ref)), None)
            if i is None:
                items.append(_Item(f"the keyfile device of [[luks]] '{lk.name}'", ref,
                                   _fs_image("ext4", "", ref, what), None, OTHER_SIZE_MB))
                i = len(items) - 1
            elif items[i].luks or not items[i].fs:
                raise BuildError(f"{what}: {dev} is the LUKS container of [[luks]] "
                                 f"'{items[i].luks}', not a filesystem",
                                 hint="for a keyfile inside a LUKS volume, name /dev/mapper/<name>")
        fs = items[i].fs
        assert fs is not None
        kfs = {kf.path: kf for kf in fs.keyfiles}
        old = kfs.get(lk.key_file_path, Keyfile(lk.key_file_path, 0, ()))
        kfs[old.path] = Keyfile(old.path, max(old.size, size), (*old.luks, lk.name))
        items[i] = dataclasses.replace(items[i], fs=dataclasses.replace(
            fs, keyfiles=tuple(kfs.values())))
    return items


def plan_disks(host: Host) -> tuple[DiskSpec, ...]:
    """The test disks for `host`: every described filesystem and LUKS container gets a place.

    References by position (/dev/vdX[N]) get that drive; every other one gets a drive of its
    own, in description order, on the free positions: a whole disk for LABEL= and UUID=, a GPT
    disk with one partition for PARTUUID= and PARTLABEL=. Positions left over are small empty
    disks.
    """
    items = _items(host)
    slots: dict[int, list[_Item]] = {}
    for it in items:
        if it.ref.kind == "disk":
            slots.setdefault(it.ref.disk, []).append(it)
    for pos, its in slots.items():
        whole = [it for it in its if it.ref.part is None]
        if whole and len(its) > 1:
            other = next(it for it in its if it is not whole[0])
            how = "as a whole disk" if other.ref.part is None else f"but {other.ref.text()} too"
            raise BuildError(f"/dev/vd{chr(97 + pos)} is given to {whole[0].what} as a whole "
                             f"disk and to {other.what} {how}", hint=_SAME_DEVICE)
        nums: dict[int | None, str] = {}
        for it in its:
            if it.ref.part in nums:
                raise BuildError(f"{it.ref.text()} is the device of both {nums[it.ref.part]} "
                                 f"and {it.what}", hint=_SAME_DEVICE)
            nums[it.ref.part] = it.what
    free = (n for n in range(10**6) if n not in slots)
    for it in items:
        if it.ref.kind != "disk":
            slots[next(free)] = [it]
    if max(slots, default=-1) >= MAX_DISKS:
        raise BuildError(f"the test disks would need more than {MAX_DISKS} drives",
                         hint="/dev/vda ... /dev/vdz")
    return tuple(_disk(pos, slots.get(pos, [])) for pos in range(max(slots, default=-1) + 1))


def _disk(pos: int, its: list[_Item]) -> DiskSpec:
    gpt = any(it.ref.kind in ("partuuid", "partlabel") or it.ref.part for it in its)
    parts = sorted((Partition(
        number=(it.ref.part or 1) if gpt else 0,
        name=it.ref.value if it.ref.kind == "partlabel" else None,
        uuid=it.ref.value if it.ref.kind == "partuuid" else None,
        size_mb=it.size_mb, fs=it.fs, luks=it.luks,
        luks_uuid=it.ref.value if it.luks and it.ref.kind == "uuid" else None,
        luks_label=it.ref.value if it.luks and it.ref.kind == "label" else None,
        luks_header=it.header)
        for it in its), key=lambda p: p.number)
    size = sum(p.size_mb for p in parts) + (2 if gpt else 0)
    return DiskSpec(name=f"disk{pos}", table="gpt" if gpt else "none", size_mb=max(size, 1),
                    partitions=tuple(parts), serial=f"bootgen-disk{pos}",
                    guest_name=f"/dev/vd{chr(97 + pos)}")


def expected_mounts(host: Host) -> tuple[str, ...]:
    """What the test root's init checks: the stage-one filesystems, parents first, and the
    btrfs subvolume each mounts."""
    out = []
    for fs in host.boot_filesystems:
        sub = next((o.split("=", 1)[1].lstrip("/") for o in fs.options
                    if o.startswith("subvol=")), "")
        out.append(f"{fs.mountpoint} {fs.fstype}" + (f" subvol={sub}" if sub else ""))
    return tuple(out)


def describe(spec: DiskSpec) -> str:
    """E.g. "disk0 (ext4 LABEL=root, 64 MiB)"."""
    bits = []
    for p in spec.partitions:
        words = [f"{p.number}:" if p.number else "", f"LUKS '{p.luks}' holding" if p.luks else "",
                 p.fs.fstype if p.fs else "empty",
                 f"LABEL={p.fs.label}" if p.fs and p.fs.label else "",
                 f"UUID={p.fs.uuid}" if p.fs and p.fs.uuid else "",
                 f"PARTLABEL={p.name}" if p.name else "", f"PARTUUID={p.uuid}" if p.uuid else ""]
        bits.append(" ".join(w for w in words if w))
    if spec.table == "gpt":
        bits = ["GPT " + "; ".join(bits)]
    return f"{spec.name} ({', '.join([*bits, f'{spec.size_mb} MiB'])})"


# --- names and places shared with the builder (bootgen.vm.diskbuild) ---------------------------


def derived_uuid(*parts: str) -> str:
    """A UUID that depends only on `parts` (reproducible images: no random ids)."""
    digest = hashlib.sha256("\0".join(("bootgen-disks", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def fs_uuid(spec: DiskSpec, part: Partition) -> str:
    assert part.fs is not None
    return part.fs.uuid or derived_uuid(spec.name, str(part.number), "fs", part.fs.mountpoint)


def luks_uuid(spec: DiskSpec, part: Partition) -> str:
    assert part.luks is not None
    return part.luks_uuid or derived_uuid(spec.name, str(part.number), "luks", part.luks)


def part_uuid(spec: DiskSpec, part: Partition) -> str:
    return part.uuid or derived_uuid(spec.name, str(part.number), "partition")


def table_id(spec: DiskSpec) -> str:
    return derived_uuid(spec.name, "table", repr(spec))


def default_cache_dir() -> Path:
    return cache_dir("disks")


def fixture_script() -> Path:
    return templates.data_root() / "qemu" / "testroot-init.sh"


def find_busybox() -> Path:
    """A statically linked busybox for the test root ($BOOTGEN_BUSYBOX or the one in PATH)."""
    from elftools.elf.elffile import ELFFile

    found = os.environ.get("BOOTGEN_BUSYBOX") or which("busybox")
    if not found:
        raise BuildError("busybox is missing (the test root runs on it)",
                         hint="install busybox-static")
    try:
        with open(found, "rb") as f:
            dynamic = any(s["p_type"] == "PT_INTERP" for s in ELFFile(f).iter_segments())
    except Exception as e:  # not ELF, unreadable...
        raise BuildError(f"{found} is not a usable busybox: {e}") from e
    if dynamic:
        raise BuildError(f"{found} is dynamically linked; the test root has no libraries",
                         hint="install busybox-static (or set BOOTGEN_BUSYBOX)")
    return Path(found)
