"""Synthetic test disks for `bootgen verify`: images that mirror a host's described layout.

`plan_disks(host)` decides, without touching anything, which virtio disks exist, how they are
partitioned and which filesystem (label, UUID, PARTUUID, PARTLABEL) sits where, so that every
device reference of the description finds its device in the guest. `build_disks` makes the
images in userspace: mke2fs -d / mkfs.btrfs --rootdir from a staging tree, sfdisk on image
files; no root, loop devices or device-mapper. The root filesystem is a busybox "test root"
whose /sbin/init (qemu/testroot-init.sh) reports what stage one mounted.

Built images live in a content-addressed cache and are shared: callers must boot them with
QEMU `snapshot=on` (or otherwise read-only) and never modify them.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import templates
from .errors import BuildError
from .run import run, which
from .schema import Filesystem, Host

DISK_BUILDER_VERSION = 1  # bump whenever the images built for the same plan change
ROOT_SIZE_MB = 64
OTHER_SIZE_MB = 16
LUKS_HEADER_MB = 16  # LUKS2's default header area
MIN_SIZE_MB = {"btrfs": 128, "xfs": 300}
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8E47DE4"
EXT_TYPES = ("ext2", "ext3", "ext4")
EPOCH = 1704067200  # 2024-01-01: every timestamp inside the ext* images
LABEL_MAX = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 12, "btrfs": 255, "vfat": 11}
MAX_DISKS = 26  # /dev/vda ... /dev/vdz
MAX_PARTITIONS = 128  # GPT entries sfdisk creates

# mke2fs reads its defaults from /etc/mke2fs.conf, which differs between distributions: pin
# them so the images (and the features the guest kernel must know) do not depend on the host.
MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 0

[fs_types]
\text3 = {
\t\tfeatures = has_journal
\t}
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""

_STD_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                       r"[0-9a-fA-F]{12}$")
_VD = re.compile(r"^/dev/vd([a-z])(?:([1-9][0-9]*))?$")
_BY = {"by-label": "label", "by-uuid": "uuid", "by-partuuid": "partuuid",
       "by-partlabel": "partlabel"}


@dataclass(frozen=True)
class FsImage:
    """One filesystem to create; uuid None: not fixed by the description (derived when built)."""

    fstype: str
    label: str | None
    uuid: str | None
    mountpoint: str
    size_mb: int
    content: str  # "testroot" for "/", "marker" otherwise


@dataclass(frozen=True)
class Partition:
    """A GPT partition, or number 0: the whole disk of a disk without partition table."""

    number: int
    name: str | None  # GPT PARTLABEL
    uuid: str | None  # PARTUUID; None: derived when built
    size_mb: int
    fs: FsImage | None
    luks: str | None  # name of the [[luks]] entry whose container this is
    luks_uuid: str | None = None  # the container's UUID=, when the description fixes it
    luks_label: str | None = None  # the container's LABEL= (LUKS2 label)


@dataclass(frozen=True)
class DiskSpec:
    name: str  # "disk0" → disk0.img
    table: str  # "gpt" | "none"
    size_mb: int
    partitions: tuple[Partition, ...]  # "none": one partition numbered 0 (or none: a filler)
    serial: str  # virtio serial
    guest_name: str  # /dev/vda, ... in the order the drives are given to QEMU


@dataclass(frozen=True)
class BuiltDisk:
    spec: DiskSpec
    path: Path  # shared cache file: boot it with snapshot=on, never write to it


@dataclass(frozen=True)
class TestRoot:
    disk_id: str  # written to /etc/bootgen-disk-id; identifies this exact set of images
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
class _Item:
    what: str  # for messages: "'/var'" or "[[luks]] 'data'"
    ref: _Ref
    fs: FsImage | None
    luks: str | None
    size_mb: int


def _unescape(s: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), s)


def parse_ref(device: str, what: str) -> _Ref:
    """Where a device reference points on the test disks."""
    for prefix in ("LABEL=", "UUID=", "PARTUUID=", "PARTLABEL="):
        if device.startswith(prefix):
            return _Ref(prefix[:-1].lower(), device[len(prefix):])
    m = re.match(r"^/dev/disk/(by-[a-z]+)/(.+)$", device)
    if m and m.group(1) in _BY:
        return _Ref(_BY[m.group(1)], _unescape(m.group(2)))
    m = _VD.match(device)
    if m:
        part = int(m.group(2)) if m.group(2) else None
        if part is not None and part > MAX_PARTITIONS:
            raise BuildError(f"{what}: {device}: GPT has at most {MAX_PARTITIONS} partitions")
        return _Ref("disk", disk=ord(m.group(1)) - 97, part=part)
    raise BuildError(f"{what}: cannot place '{device}' on a test disk",
                     hint="the test disks are virtio (/dev/vdX); use LABEL=, UUID=, PARTUUID=, "
                     "PARTLABEL= or /dev/vdX[N]")


def _fs_image(fs: Filesystem, ref: _Ref | None, what: str) -> FsImage:
    label = ref.value if ref and ref.kind == "label" else None
    fs_uuid = ref.value if ref and ref.kind == "uuid" else None
    if label is not None and len(label.encode()) > LABEL_MAX.get(fs.fstype, 255):
        raise BuildError(f"{what}: label '{label}' is too long for {fs.fstype}",
                         hint=f"{fs.fstype} labels have at most {LABEL_MAX[fs.fstype]} bytes")
    if fs_uuid is not None:
        ok = re.match(r"^[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}$", fs_uuid) if fs.fstype == "vfat" \
            else _STD_UUID.match(fs_uuid)
        if not ok:
            raise BuildError(f"{what}: '{fs_uuid}' is not a {fs.fstype} UUID",
                             hint="vfat: XXXX-XXXX; others: 8-4-4-4-12 hex digits")
    base = ROOT_SIZE_MB if fs.mountpoint == "/" else OTHER_SIZE_MB
    return FsImage(fstype=fs.fstype, label=label, uuid=fs_uuid, mountpoint=fs.mountpoint,
                   size_mb=max(base, MIN_SIZE_MB.get(fs.fstype, 0)),
                   content="testroot" if fs.mountpoint == "/" else "marker")


def _items(host: Host) -> list[_Item]:
    items: list[_Item] = []
    lks = {lk.name: lk for lk in host.luks}
    used: dict[str, str] = {}
    for fs in host.filesystems:
        what = f"'{fs.mountpoint}'"
        if fs.fstype == "tmpfs":
            continue  # no device
        if not fs.device.startswith("/dev/mapper/"):
            ref = parse_ref(fs.device, what)
            img = _fs_image(fs, ref, what)
            items.append(_Item(what, ref, img, None, img.size_mb))
            continue
        name = fs.device.removeprefix("/dev/mapper/")
        if name not in lks:
            raise BuildError(f"{what}: no [[luks]] entry is named '{name}'",
                             hint="the test-disk builder makes /dev/mapper devices for LUKS only")
        if name in used:
            raise BuildError(f"{what} and {used[name]} are both on /dev/mapper/{name}")
        used[name] = what
        img = _fs_image(fs, None, what)
        items.append(_Item(what, _luks_ref(lks[name].device, name), img, name,
                           img.size_mb + LUKS_HEADER_MB))
    for lk in host.luks:  # containers without a described filesystem (swap, raw data...)
        if lk.name not in used:
            items.append(_Item(f"[[luks]] '{lk.name}'", _luks_ref(lk.device, lk.name), None,
                               lk.name, OTHER_SIZE_MB + LUKS_HEADER_MB))
    return items


def _luks_ref(device: str, name: str) -> _Ref:
    what = f"[[luks]] '{name}'"
    if device.startswith("/dev/mapper/"):
        raise BuildError(f"{what}: nested device-mapper devices ({device}) are not supported "
                         "by the test-disk builder")
    ref = parse_ref(device, what)
    if ref.kind == "uuid" and not _STD_UUID.match(ref.value):
        raise BuildError(f"{what}: '{ref.value}' is not a LUKS UUID",
                         hint="8-4-4-4-12 hex digits")
    return ref


def _check_unique(items: list[_Item]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for it in items:
        if it.ref.kind == "disk":
            continue
        key = (it.ref.kind, it.ref.value.lower() if "uuid" in it.ref.kind else it.ref.value)
        if key in seen:
            raise BuildError(f"{it.ref.text()} is the device of both {seen[key]} and {it.what}",
                             hint="each device reference must name one device")
        seen[key] = it.what
        if it.ref.kind == "partuuid" and not _STD_UUID.match(it.ref.value):
            raise BuildError(f"{it.what}: '{it.ref.value}' is not a GPT partition UUID",
                             hint="the test-disk builder makes GPT tables only (no MBR ids)")
        if it.ref.kind == "partlabel" and (len(it.ref.value) > 36 or
                                           any(c in it.ref.value for c in '",\\\n')):
            raise BuildError(f"{it.what}: '{it.ref.value}' cannot be a GPT partition name",
                             hint="at most 36 characters, without quotes, commas or backslashes")


def plan_disks(host: Host) -> tuple[DiskSpec, ...]:
    """The test disks for `host`: every described filesystem and LUKS container gets a place."""
    items = _items(host)
    _check_unique(items)
    slots: dict[int, list[_Item]] = {}
    for it in items:
        if it.ref.kind == "disk":
            slots.setdefault(it.ref.disk, []).append(it)
    for pos, its in slots.items():
        name = f"/dev/vd{chr(97 + pos)}"
        whole = [it for it in its if it.ref.part is None]
        if whole and len(its) > 1:
            other = next(it for it in its if it is not whole[0])
            how = "as a whole disk" if other.ref.part is None else f"but {other.ref.text()} too"
            raise BuildError(f"{name} is given to {whole[0].what} as a whole disk and to "
                             f"{other.what} {how}", hint="give each filesystem its own device")
        nums: dict[int | None, str] = {}
        for it in its:
            if it.ref.part in nums:
                raise BuildError(f"{it.ref.text()} is the device of both {nums[it.ref.part]} "
                                 f"and {it.what}", hint="give each filesystem its own device")
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
    name = f"disk{pos}"
    parts: list[Partition] = []
    gpt = any(it.ref.kind in ("partuuid", "partlabel") or it.ref.part for it in its)
    for it in its:
        ref = it.ref
        lk_uuid = ref.value if it.luks and ref.kind == "uuid" else None
        lk_label = ref.value if it.luks and ref.kind == "label" else None
        parts.append(Partition(
            number=(ref.part or 1) if gpt else 0,
            name=ref.value if ref.kind == "partlabel" else None,
            uuid=ref.value.upper() if ref.kind == "partuuid" else None,
            size_mb=it.size_mb, fs=it.fs, luks=it.luks, luks_uuid=lk_uuid, luks_label=lk_label))
    parts.sort(key=lambda p: p.number)
    size = sum(p.size_mb for p in parts) + (2 if gpt else 0)
    return DiskSpec(name=name, table="gpt" if gpt else "none", size_mb=max(size, 1),
                    partitions=tuple(parts), serial=f"bootgen-{name}",
                    guest_name=f"/dev/vd{chr(97 + pos)}")


def expected_mounts(host: Host) -> tuple[str, ...]:
    """What the test root's init checks: the stage-one filesystems, parents first."""
    return tuple(f"{fs.mountpoint} {fs.fstype}" for fs in host.boot_filesystems)


def describe(spec: DiskSpec) -> str:
    """ "disk0 (ext4 LABEL=root, 64 MiB)" """
    bits = []
    for p in spec.partitions:
        words = [f"LUKS '{p.luks}' holding" if p.luks else ""]
        words += [p.fs.fstype if p.fs else "empty"]
        words += [f"LABEL={p.fs.label}"] if p.fs and p.fs.label else []
        words += [f"UUID={p.fs.uuid}"] if p.fs and p.fs.uuid else []
        words += [f"PARTLABEL={p.name}"] if p.name else []
        words += [f"PARTUUID={p.uuid}"] if p.uuid else []
        bits.append((f"{p.number}: " if p.number else "") + " ".join(w for w in words if w))
    if spec.table == "gpt":
        bits.insert(0, "GPT")
    return f"{spec.name} ({'; '.join(bits + [f'{spec.size_mb} MiB'])})"


# --- building --------------------------------------------------------------------------------


def derived_uuid(*parts: str) -> str:
    """A UUID that depends only on `parts` (images are reproducible; no random ids)."""
    digest = hashlib.sha256("\0".join(("bootgen-disks", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def fs_uuid(spec: DiskSpec, part: Partition) -> str:
    assert part.fs is not None
    return part.fs.uuid or derived_uuid(spec.name, str(part.number), "fs", part.fs.mountpoint)


def part_uuid(spec: DiskSpec, part: Partition) -> str:
    return part.uuid or derived_uuid(spec.name, str(part.number), "partition").upper()


def table_id(spec: DiskSpec) -> str:
    return derived_uuid(spec.name, "table", repr(spec)).upper()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bootgen" / "disks"


def fixture_script() -> Path:
    return templates.data_root() / "qemu" / "testroot-init.sh"


def find_busybox() -> Path:
    """A statically linked busybox for the test root."""
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


def _supported(fstype: str) -> bool:
    return fstype in EXT_TYPES or (fstype == "btrfs" and which("mkfs.btrfs") is not None)


def build_disks(host: Host, workdir: Path, *, cache_dir: Path | None = None,
                progress: Callable[[str], None] | None = None
                ) -> tuple[tuple[BuiltDisk, ...], TestRoot]:
    """Build (or find in the cache) the test disks of `host`.

    The returned paths are shared cache files: boot them with QEMU `snapshot=on` and never
    write to them. `workdir` holds the staging trees while building.
    """
    specs = plan_disks(host)
    for spec in specs:
        for p in spec.partitions:
            if p.luks:
                raise BuildError("LUKS test volumes are built in a helper VM",
                                 hint=f"{describe(spec)} holds the LUKS container '{p.luks}'; "
                                 "the helper VM is not implemented yet")
            if p.fs and not _supported(p.fs.fstype):
                raise BuildError(f"{p.fs.fstype} ('{p.fs.mountpoint}') is not supported by the "
                                 "test-disk builder yet", hint="describe an ext4 filesystem to "
                                 "verify the rest" + ("; btrfs needs btrfs-progs"
                                                      if p.fs.fstype == "btrfs" else ""))
    expected = expected_mounts(host)
    script = fixture_script().read_bytes()
    busybox = find_busybox()
    key = _cache_key(specs, expected, script, _sha256_file(busybox))
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    final = cache / key
    hit = _load(final, specs, expected)
    if hit is not None:
        return hit
    cache.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=cache))
    try:
        disk_id = key[:32]
        mounts = [fs.mountpoint for fs in host.filesystems]
        with tempfile.TemporaryDirectory(prefix="bootgen-disks-", dir=workdir) as stage_dir:
            stage = Path(stage_dir)
            conf = stage / "mke2fs.conf"
            conf.write_text(MKE2FS_CONF)
            ctx = _Ctx(stage, conf, mounts, expected, disk_id, script, busybox)
            for spec in specs:
                if progress:
                    progress(f"building {describe(spec)}")
                _build_disk(spec, tmp / f"{spec.name}.img", ctx)
        for spec in specs:
            (tmp / f"{spec.name}.img").chmod(0o444)
        (tmp / "plan.json").write_text(_plan_json(specs, expected) + "\n")
        (tmp / "disk-id").write_text(disk_id + "\n")
        try:
            os.rename(tmp, final)  # atomic: the entry appears complete or not at all
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # a concurrent builder finished first; its images are the same
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    built = _load(final, specs, expected)
    if built is None:
        raise BuildError(f"the test disks vanished from {final}", hint="is the cache shared?")
    return built


def _load(final: Path, specs: tuple[DiskSpec, ...], expected: tuple[str, ...]
          ) -> tuple[tuple[BuiltDisk, ...], TestRoot] | None:
    try:
        disk_id = (final / "disk-id").read_text().strip()
    except OSError:
        return None
    disks = tuple(BuiltDisk(s, final / f"{s.name}.img") for s in specs)
    if not all(d.path.is_file() for d in disks):
        return None
    return disks, TestRoot(disk_id=disk_id, expected=expected)


def _plan_json(specs: tuple[DiskSpec, ...], expected: tuple[str, ...]) -> str:
    return json.dumps({"disks": [dataclasses.asdict(s) for s in specs],
                       "expected": list(expected)}, indent=1, sort_keys=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_key(specs: tuple[DiskSpec, ...], expected: tuple[str, ...], script: bytes,
               busybox_sha: str) -> str:
    h = hashlib.sha256()
    for part in (str(DISK_BUILDER_VERSION), _plan_json(specs, expected), MKE2FS_CONF,
                 hashlib.sha256(script).hexdigest(), busybox_sha):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class _Ctx:
    stage: Path
    mke2fs_conf: Path
    mountpoints: list[str]
    expected: tuple[str, ...]
    disk_id: str
    script: bytes
    busybox: Path


def _build_disk(spec: DiskSpec, path: Path, ctx: _Ctx) -> None:
    with open(path, "wb") as f:
        f.truncate(spec.size_mb << 20)
    if spec.table == "none":
        for p in spec.partitions:
            if p.fs:
                _make_fs(p.fs, fs_uuid(spec, p), path, ctx)
        return
    lines = ["label: gpt", f"label-id: {table_id(spec)}", "unit: sectors", ""]
    start = 1
    for p in spec.partitions:
        opts = [f"start={start << 11}", f"size={p.size_mb << 11}", f"type={LINUX_FS_GUID}",
                f"uuid={part_uuid(spec, p)}"] + ([f'name="{p.name}"'] if p.name else [])
        lines.append(f"{path.name}{p.number} : " + ", ".join(opts))
        start += p.size_mb
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path.name],
        input=("\n".join(lines) + "\n").encode(), cwd=path.parent)
    start = 1
    for p in spec.partitions:
        if p.fs:
            image = ctx.stage / f"{spec.name}p{p.number}.fs"
            with open(image, "wb") as f:
                f.truncate(p.size_mb << 20)
            _make_fs(p.fs, fs_uuid(spec, p), image, ctx)
            _copy_into(image, path, start << 20)
            image.unlink()
        start += p.size_mb


def _copy_into(src: Path, dst: Path, offset: int) -> None:
    """Copy src into dst at offset, leaving all-zero MiB chunks as holes (dst starts sparse)."""
    zero = bytes(1 << 20)
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        pos = offset
        while chunk := fi.read(1 << 20):
            if chunk != zero[: len(chunk)]:
                fo.seek(pos)
                fo.write(chunk)
            pos += len(chunk)


def _make_fs(fs: FsImage, fsuuid: str, image: Path, ctx: _Ctx) -> None:
    tree = ctx.stage / ("tree" + fs.mountpoint.replace("/", "_"))
    paths = _stage_tree(fs, tree, ctx)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(EPOCH), SOURCE_DATE_EPOCH=str(EPOCH),
               MKE2FS_CONFIG=str(ctx.mke2fs_conf))
    label = ["-L", fs.label] if fs.label else []
    if fs.fstype in EXT_TYPES:
        run(["mke2fs", "-q", "-F", "-t", fs.fstype, *label, "-U", fsuuid,
             "-E", f"root_owner=0:0,hash_seed={fsuuid}", "-d", tree, image], env=env)
        _fix_inodes(image, paths, env)
    elif fs.fstype == "btrfs":
        run(["mkfs.btrfs", "-q", "-f", *label, "-U", fsuuid, "--rootdir", tree, image], env=env)
    else:  # pragma: no cover - rejected before building
        raise BuildError(f"{fs.fstype} is not supported by the test-disk builder yet")
    shutil.rmtree(tree)


def _fix_inodes(image: Path, paths: Iterable[str], env: dict[str, str]) -> None:
    """Own everything by root and pin every timestamp (mke2fs -d copies the staging tree's)."""
    cmds = []
    for p in paths:
        cmds += [f'sif "{p}" {field} {v}' for field, v in
                 (("uid", 0), ("gid", 0), ("atime", EPOCH), ("ctime", EPOCH),
                  ("mtime", EPOCH), ("crtime", EPOCH))]
    script = image.with_suffix(".debugfs")
    script.write_text("\n".join(cmds) + "\n")
    proc = run(["debugfs", "-w", "-f", script, image], env=env)
    script.unlink()
    errors = [ln for ln in proc.stderr.decode(errors="replace").splitlines()
              if ln.strip() and not ln.startswith("debugfs ")]
    if errors:
        raise BuildError(f"debugfs could not adjust {image.name}: {errors[0]}")


def _stage_tree(fs: FsImage, tree: Path, ctx: _Ctx) -> list[str]:
    """Fill the staging tree of one filesystem; return its paths ("/" first), sorted."""
    files: dict[str, tuple[bytes, int]] = {}
    dirs = {mp[len(fs.mountpoint.rstrip("/")):] for mp in ctx.mountpoints
            if mp != fs.mountpoint and _nearest_mount(mp, ctx.mountpoints) == fs.mountpoint}
    links: dict[str, str] = {}
    if fs.content == "testroot":
        dirs |= {"/proc", "/sys", "/dev", "/run", "/tmp", "/bin", "/sbin", "/etc"}
        files["/bin/busybox"] = (ctx.busybox.read_bytes(), 0o755)
        links["/bin/sh"] = "busybox"
        files["/sbin/init"] = files["/sbin/altinit"] = (ctx.script, 0o755)
        files["/etc/os-release"] = (b'NAME="bootgen test root"\nID=bootgen-testroot\n', 0o644)
        files["/etc/bootgen-disk-id"] = (ctx.disk_id.encode() + b"\n", 0o644)
        files["/etc/bootgen-expected"] = ("".join(e + "\n" for e in ctx.expected).encode(),
                                          0o644)
    else:
        files["/bootgen-marker"] = (fs.mountpoint.encode() + b"\n", 0o644)
    for p in list(dirs) + list(files) + list(links):  # parents of everything are directories
        parent = os.path.dirname(p)
        while parent not in ("/", ""):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    tree.mkdir()
    for d in sorted(dirs):
        (tree / d[1:]).mkdir(mode=0o755)
    for name, (data, mode) in files.items():
        (tree / name[1:]).write_bytes(data)
        (tree / name[1:]).chmod(mode)
    for name, target in links.items():
        (tree / name[1:]).symlink_to(target)
    for d in dirs:
        (tree / d[1:]).chmod(0o1777 if d == "/tmp" else 0o755)
    tree.chmod(0o755)
    return ["/", *sorted(dirs | set(files) | set(links))]


def _nearest_mount(mountpoint: str, mounts: list[str]) -> str:
    """The mountpoint of the filesystem that holds the directory `mountpoint`."""
    best = "/"
    for m in mounts:
        if m not in ("/", mountpoint) and mountpoint.startswith(m + "/") and len(m) > len(best):
            best = m
    return best
