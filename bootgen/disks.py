"""Synthetic test disks for `bootgen verify`: images that mirror a host's described layout.

`plan_disks` decides, touching nothing, which virtio disks exist and which filesystem (label,
UUID, PARTUUID, PARTLABEL) sits where, so that every device reference of the description finds
its device in the guest. `build_disks` makes the images in userspace (mke2fs -d, mkfs.btrfs
--rootdir, sfdisk on image files: no root, loop devices or device-mapper). "/" gets a busybox
test root whose /sbin/init (qemu/testroot-init.sh) reports what stage one mounted.

Built images live in a content-addressed cache and are shared: boot them with QEMU
`snapshot=on` (or otherwise read-only) and never modify them.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import templates
from .errors import BuildError
from .run import run, which
from .schema import Filesystem, Host

DISK_BUILDER_VERSION = 1  # bump whenever the images built for the same plan change
ROOT_SIZE_MB, OTHER_SIZE_MB = 64, 16
LUKS_HEADER_MB = 16  # LUKS2's default header area
MIN_SIZE_MB = {"btrfs": 128, "xfs": 300}
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8E47DE4"
EXT_TYPES = ("ext2", "ext3", "ext4")
EPOCH = 1704067200  # 2024-01-01: every timestamp inside the ext* images
LABEL_MAX = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 12, "btrfs": 255, "vfat": 11}
MAX_DISKS, MAX_PARTITIONS = 26, 128  # /dev/vda.../dev/vdz; GPT entries sfdisk creates

# mke2fs takes its defaults from /etc/mke2fs.conf, which differs between distributions: pin
# them, so that the images (and the features the guest kernel must know) do not depend on it.
MKE2FS_CONF = """[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
[fs_types]
\text3 = {
\t\tfeatures = has_journal
\t}
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""

_STD_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_BY = {"by-label": "label", "by-uuid": "uuid", "by-partuuid": "partuuid",
       "by-partlabel": "partlabel"}
_SAME_DEVICE = "give each filesystem its own device"


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
    uuid: str | None  # PARTUUID (lower case); None: derived when built
    size_mb: int
    fs: FsImage | None
    luks: str | None  # name of the [[luks]] entry whose container this is
    luks_uuid: str | None = None  # the container's UUID=, when the description fixes it
    luks_label: str | None = None  # the container's LABEL= (a LUKS2 label)


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


def _fs_image(fs: Filesystem, ref: _Ref | None, what: str) -> FsImage:
    label = ref.value if ref and ref.kind == "label" else None
    fsuuid = ref.value if ref and ref.kind == "uuid" else None
    if label is not None and len(label.encode()) > LABEL_MAX.get(fs.fstype, 255):
        raise BuildError(f"{what}: label '{label}' is too long for {fs.fstype}",
                         hint=f"{fs.fstype} labels have at most {LABEL_MAX[fs.fstype]} bytes")
    vfat = re.compile(r"^[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}$")
    if fsuuid is not None and not (vfat if fs.fstype == "vfat" else _STD_UUID).match(fsuuid):
        raise BuildError(f"{what}: '{fsuuid}' is not a {fs.fstype} UUID",
                         hint="vfat: XXXX-XXXX; others: 8-4-4-4-12 hex digits")
    base = ROOT_SIZE_MB if fs.mountpoint == "/" else OTHER_SIZE_MB
    return FsImage(fstype=fs.fstype, label=label, uuid=fsuuid, mountpoint=fs.mountpoint,
                   size_mb=max(base, MIN_SIZE_MB.get(fs.fstype, 0)),
                   content="testroot" if fs.mountpoint == "/" else "marker")


def _luks_ref(device: str, name: str) -> _Ref:
    ref = parse_ref(device, f"[[luks]] '{name}'")
    if ref.kind == "uuid" and not _STD_UUID.match(ref.value):
        raise BuildError(f"[[luks]] '{name}': '{ref.value}' is not a LUKS UUID",
                         hint="8-4-4-4-12 hex digits")
    return ref


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
            img = _fs_image(fs, ref, what)
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
        img = _fs_image(fs, None, what)
        items.append(_Item(what, _luks_ref(lks[name].device, name), img, name,
                           img.size_mb + LUKS_HEADER_MB))
    for lk in host.luks:  # containers without a described filesystem (swap, raw data...)
        if lk.name not in used:
            items.append(_Item(f"[[luks]] '{lk.name}'", _luks_ref(lk.device, lk.name), None,
                               lk.name, OTHER_SIZE_MB + LUKS_HEADER_MB))
    seen: dict[tuple[str, str], str] = {}
    for it in items:
        key = (it.ref.kind, it.ref.value.lower() if "uuid" in it.ref.kind else it.ref.value)
        if it.ref.kind != "disk" and key in seen:
            raise BuildError(f"{it.ref.text()} is the device of both {seen[key]} and {it.what}",
                             hint="each device reference must name one device")
        seen[key] = it.what
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
        luks_label=it.ref.value if it.luks and it.ref.kind == "label" else None)
        for it in its), key=lambda p: p.number)
    size = sum(p.size_mb for p in parts) + (2 if gpt else 0)
    return DiskSpec(name=f"disk{pos}", table="gpt" if gpt else "none", size_mb=max(size, 1),
                    partitions=tuple(parts), serial=f"bootgen-disk{pos}",
                    guest_name=f"/dev/vd{chr(97 + pos)}")


def expected_mounts(host: Host) -> tuple[str, ...]:
    """What the test root's init checks: the stage-one filesystems, parents first."""
    return tuple(f"{fs.mountpoint} {fs.fstype}" for fs in host.boot_filesystems)


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


# --- building --------------------------------------------------------------------------------


def derived_uuid(*parts: str) -> str:
    """A UUID that depends only on `parts` (reproducible images: no random ids)."""
    digest = hashlib.sha256("\0".join(("bootgen-disks", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def fs_uuid(spec: DiskSpec, part: Partition) -> str:
    assert part.fs is not None
    return part.fs.uuid or derived_uuid(spec.name, str(part.number), "fs", part.fs.mountpoint)


def part_uuid(spec: DiskSpec, part: Partition) -> str:
    return part.uuid or derived_uuid(spec.name, str(part.number), "partition")


def table_id(spec: DiskSpec) -> str:
    return derived_uuid(spec.name, "table", repr(spec))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bootgen" / "disks"


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


def build_disks(host: Host, workdir: Path, *, cache_dir: Path | None = None,
                progress: Callable[[str], None] | None = None
                ) -> tuple[tuple[BuiltDisk, ...], TestRoot]:
    """Build the test disks of `host`, or find them in the cache (default
    $XDG_CACHE_HOME/bootgen/disks). The returned paths are shared cache files: boot them with
    QEMU `snapshot=on` and never write to them. `workdir` holds staging trees while building.
    """
    specs = plan_disks(host)
    for spec in specs:
        for p in spec.partitions:
            if p.luks:
                raise BuildError("LUKS test volumes are built in a helper VM",
                                 hint=f"{describe(spec)} holds the LUKS container '{p.luks}'; "
                                 "the helper VM is not implemented yet")
            ok = p.fs is None or p.fs.fstype in EXT_TYPES or (
                p.fs.fstype == "btrfs" and which("mkfs.btrfs") is not None)
            if p.fs and not ok:
                raise BuildError(f"{p.fs.fstype} ('{p.fs.mountpoint}') is not supported by the "
                                 "test-disk builder yet", hint="describe an ext4 filesystem to "
                                 "verify the rest" + ("; btrfs needs btrfs-progs"
                                                      if p.fs.fstype == "btrfs" else ""))
    expected = expected_mounts(host)
    script, busybox = fixture_script().read_bytes(), find_busybox()
    plan = json.dumps({"disks": [dataclasses.asdict(s) for s in specs],
                       "expected": list(expected)}, indent=1, sort_keys=True)
    key = hashlib.sha256("\0".join((str(DISK_BUILDER_VERSION), plan, MKE2FS_CONF,
                                    hashlib.sha256(script).hexdigest(),
                                    _sha256_file(busybox))).encode()).hexdigest()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    final = cache / key
    found = _load(final, specs, expected)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    if final.exists():  # incomplete (files removed by hand?): set it aside
        _discard(final, cache)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=cache))
    try:
        disk_id = key[:32]  # the content hash: unique per content, stable across cache hits
        with tempfile.TemporaryDirectory(prefix="bootgen-disks-", dir=workdir) as stage_dir:
            stage = Path(stage_dir)
            (stage / "mke2fs.conf").write_text(MKE2FS_CONF)
            ctx = _Ctx(stage, [fs.mountpoint for fs in host.filesystems], expected, disk_id,
                       script, busybox)
            for spec in specs:
                if progress:
                    progress(f"building {describe(spec)}")
                _build_disk(spec, tmp / f"{spec.name}.img", ctx)
                (tmp / f"{spec.name}.img").chmod(0o444)
        (tmp / "plan.json").write_text(plan + "\n")
        (tmp / "disk-id").write_text(disk_id + "\n")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)  # atomic: the entry appears complete or not at all
        except OSError as e:  # a concurrent builder was first: same content, keep its entry
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
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


def _discard(entry: Path, cache: Path) -> None:
    aside = Path(tempfile.mkdtemp(prefix=".stale-", dir=cache))
    try:
        os.rename(entry, aside / "entry")
    except FileNotFoundError:  # another builder set it aside already
        pass
    shutil.rmtree(aside, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class _Ctx:
    stage: Path  # scratch directory; holds mke2fs.conf
    mountpoints: list[str]  # of all described filesystems
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
    lines, start = ["label: gpt", f"label-id: {table_id(spec)}", "unit: sectors", ""], 1
    for p in spec.partitions:
        opts = [f"start={start << 11}", f"size={p.size_mb << 11}", f"type={LINUX_FS_GUID}",
                f"uuid={part_uuid(spec, p)}"] + ([f'name="{p.name}"'] if p.name else [])
        lines.append(f"{path.name}{p.number} : " + ", ".join(opts))  # file name + partno
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
               MKE2FS_CONFIG=str(ctx.stage / "mke2fs.conf"))
    label = ["-L", fs.label] if fs.label else []
    if fs.fstype in EXT_TYPES:
        run(["mke2fs", "-q", "-F", "-t", fs.fstype, *label, "-U", fsuuid,
             "-E", f"root_owner=0:0,hash_seed={fsuuid}", "-d", tree, image], env=env)
        _fix_inodes(image, paths, env)
    else:  # btrfs; not reproducible (random internal ids), owned by the building user
        run(["mkfs.btrfs", "-q", "-f", *label, "-U", fsuuid, "--rootdir", tree, image], env=env)
    shutil.rmtree(tree)


def _fix_inodes(image: Path, paths: list[str], env: dict[str, str]) -> None:
    """Own everything by root and pin all timestamps (mke2fs -d copies the staging tree's)."""
    values = [("uid", "0"), ("gid", "0")] + [(t, f"@{EPOCH}")
                                             for t in ("atime", "ctime", "mtime", "crtime")]
    script = image.with_suffix(".debugfs")
    script.write_text("".join(f'sif "{p}" {k} {v}\n' for p in paths for k, v in values))
    proc = run(["debugfs", "-w", "-f", script, image], env=env)
    script.unlink()
    errors = [ln for ln in proc.stderr.decode(errors="replace").splitlines()
              if ln.strip() and not ln.startswith("debugfs ")]
    if errors:
        raise BuildError(f"debugfs could not adjust {image.name}: {errors[0]}")


def _stage_tree(fs: FsImage, tree: Path, ctx: _Ctx) -> list[str]:
    """Fill the staging tree of one filesystem; return its paths, "/" first."""
    files: dict[str, tuple[bytes, int]] = {}
    # mountpoints of the filesystems mounted on this one, relative to it
    dirs = {mp[len(fs.mountpoint.rstrip("/")):] for mp in ctx.mountpoints
            if mp != fs.mountpoint and _nearest_mount(mp, ctx.mountpoints) == fs.mountpoint}
    if fs.content == "testroot":
        dirs |= {"/proc", "/sys", "/dev", "/run", "/tmp", "/bin", "/sbin", "/etc"}
        files["/bin/busybox"] = (ctx.busybox.read_bytes(), 0o755)
        files["/sbin/init"] = files["/sbin/altinit"] = (ctx.script, 0o755)
        files["/etc/os-release"] = (b'NAME="bootgen test root"\nID=bootgen-testroot\n', 0o644)
        files["/etc/bootgen-disk-id"] = (ctx.disk_id.encode() + b"\n", 0o644)
        files["/etc/bootgen-expected"] = ("".join(e + "\n" for e in ctx.expected).encode(),
                                          0o644)
    else:
        files["/bootgen-marker"] = (fs.mountpoint.encode() + b"\n", 0o644)
    for p in [*dirs, *files]:  # parents are directories
        while (p := os.path.dirname(p)) != "/":
            dirs.add(p)
    tree.mkdir(mode=0o755)
    for d in sorted(dirs):
        (tree / d[1:]).mkdir()
        (tree / d[1:]).chmod(0o1777 if d == "/tmp" else 0o755)
    for name, (data, mode) in files.items():
        (tree / name[1:]).write_bytes(data)
        (tree / name[1:]).chmod(mode)
    links = {"/bin/sh": "busybox"} if fs.content == "testroot" else {}
    for name, target in links.items():
        (tree / name[1:]).symlink_to(target)
    tree.chmod(0o755)
    return ["/", *sorted(dirs | set(files) | set(links))]


def _nearest_mount(mountpoint: str, mounts: list[str]) -> str:
    """The mountpoint of the filesystem that holds the directory `mountpoint`."""
    best = "/"
    for m in mounts:
        if m not in ("/", mountpoint) and mountpoint.startswith(m + "/") and len(m) > len(best):
            best = m
    return best
