"""Building the test disks that `bootgen.vm.disks` plans: `build_disks`.

Everything happens in userspace on image files: mke2fs -d, mkfs.btrfs --rootdir, sfdisk, and
for LUKS containers cryptsetup on a plain file plus our own AES-XTS (`bootgen.luksdisk`).
Images are byte-reproducible except btrfs and LUKS containers (random internal ids / salts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Host
from ..errors import BuildError, UsageError
from ..features.luks import KEY_LIMIT, Luks
from ..paths import locked, publish_dir, read_regular
from ..run import run, which
from . import luksdisk
from .disks import (
    EXT_TYPES,
    LINUX_FS_GUID,
    BuiltDisk,
    DiskSpec,
    FsImage,
    Partition,
    TestRoot,
    default_cache_dir,
    describe,
    expected_mounts,
    find_busybox,
    fixture_script,
    fs_uuid,
    luks_uuid,
    part_uuid,
    plan_disks,
    table_id,
)

DISK_BUILDER_VERSION = 2  # bump whenever the images built for the same plan change
EPOCH = 1704067200  # 2024-01-01: every timestamp inside the ext* images
HEADER_SUFFIX = ".luks-header"  # <luks name>.luks-header: a detached header in the cache entry

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


def build_disks(host: Host, workdir: Path, *, cache_dir: Path | None = None,
                progress: Callable[[str], None] | None = None
                ) -> tuple[tuple[BuiltDisk, ...], TestRoot]:
    """Build the test disks of `host`, or find them in the cache (default
    $XDG_CACHE_HOME/bootgen/disks). The returned paths are shared cache files: boot them with
    QEMU `snapshot=on` and never write to them. `workdir` holds staging trees while building.

    A LUKS entry with `header` gets a fresh detached header (`BuiltDisk.headers`): build the
    initrd under test with that file as the entry's header, since the description's header
    file cannot be reproduced.
    """
    specs = plan_disks(host)
    for spec in specs:
        for p in spec.partitions:
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
                                    hashlib.sha256(script).hexdigest(), _sha256_file(busybox),
                                    _luks_inputs(host))).encode()).hexdigest()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    final = cache / key
    found = _load(final, specs, expected)
    if found is not None:
        return found
    if any(p.luks for s in specs for p in s.partitions):
        luksdisk.cryptsetup()  # missing: say so before anything is written
    # another builder of the same disks (a parallel test, a second verify): wait for it
    with locked(cache.parent / f".{cache.name}-locks" / f"{key[:32]}.lock"):
        found = _load(final, specs, expected)
        if found is not None:
            return found
        _build(host, specs, expected, plan, key, final, cache, workdir, script, busybox,
               progress)
    built = _load(final, specs, expected)
    if built is None:
        raise BuildError(f"the test disks vanished from {final}", hint="is the cache shared?")
    return built


def _build(host: Host, specs: tuple[DiskSpec, ...], expected: tuple[str, ...], plan: str,
           key: str, final: Path, cache: Path, workdir: Path, script: bytes, busybox: Path,
           progress: Callable[[str], None] | None) -> None:
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
                       script, busybox, tmp, {lk.name: lk for lk in host.luks},
                       _device_keyfiles(specs))
            for spec in specs:
                if progress:
                    progress(f"building {describe(spec)}")
                _build_disk(spec, tmp / f"{spec.name}.img", ctx)
                # a keyslot of a host key_file is a cheap (PBKDF2, 1000 rounds) verifier of it
                private = any(p.luks and ctx.luks[p.luks].key_file for p in spec.partitions)
                (tmp / f"{spec.name}.img").chmod(0o400 if private else 0o444)
        (tmp / "plan.json").write_text(plan + "\n")
        (tmp / "disk-id").write_text(disk_id + "\n")
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _luks_inputs(host: Host) -> str:
    """What the LUKS containers depend on beyond the plan: the keyfiles' parameters and the
    host keyfiles' contents (hashed: the cache key must change when a keyfile does)."""
    out = []
    for i, lk in enumerate(host.luks):
        digest = None
        if lk.key_file:
            data = read_regular(lk.key_file, limit=KEY_LIMIT, error=UsageError,
                                location=f"{host.source}: luks[{i}].key_file")
            luksdisk.check_keyfile(data, [_extra_key(lk, Path(lk.key_file))],
                                   f"[[luks]] '{lk.name}'")
            digest = hashlib.sha256(b"bootgen-luks-key-file\0" + data).hexdigest()
        out.append([lk.name, digest, lk.key_file_size, lk.key_file_offset,
                    luksdisk.TEST_PASSPHRASE, luksdisk.PBKDF_ITERATIONS])
    return json.dumps(out)


def _device_keyfiles(specs: tuple[DiskSpec, ...]) -> dict[str, bytes]:
    """The keyfiles placed on test filesystems (key_file_device), by [[luks]] name."""
    found: dict[str, bytes] = {}
    for spec in specs:
        for p in spec.partitions:
            for kf in p.fs.keyfiles if p.fs else ():
                data = device_keyfile(spec, p, kf.path, kf.size)
                found.update(dict.fromkeys(kf.luks, data))
    return found


def device_keyfile(spec: DiskSpec, part: Partition, path: str, size: int) -> bytes:
    """The content of the keyfile at `path` on that partition's filesystem (test disks only)."""
    return luksdisk.derived_bytes(size, "keyfile", spec.name, str(part.number), path)


def volume_key(spec: DiskSpec, part: Partition) -> bytes:
    """The volume key of the LUKS container in `part` (test disks only: derived from the plan,
    so that the encrypted data is reproducible)."""
    assert part.luks is not None
    return luksdisk.test_volume_key(spec.name, str(part.number), part.luks,
                                    luks_uuid(spec, part))


def _extra_key(lk: Luks, path: Path) -> luksdisk.ExtraKey:
    return luksdisk.ExtraKey(path, lk.key_file_size, lk.key_file_offset)


def _load(final: Path, specs: tuple[DiskSpec, ...], expected: tuple[str, ...]
          ) -> tuple[tuple[BuiltDisk, ...], TestRoot] | None:
    try:
        disk_id = (final / "disk-id").read_text().strip()
    except OSError:
        return None
    disks = tuple(BuiltDisk(s, final / f"{s.name}.img",
                            {p.luks: final / f"{p.luks}{HEADER_SUFFIX}"
                             for p in s.partitions if p.luks and p.luks_header})
                  for s in specs)
    if not all(d.path.is_file() and all(h.is_file() for h in d.headers.values())
               for d in disks):
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
    out: Path  # the cache entry being built: detached LUKS headers go there
    luks: dict[str, Luks]  # the [[luks]] entries by name
    device_keys: dict[str, bytes]  # keyfiles on test filesystems, by [[luks]] name


def _build_disk(spec: DiskSpec, path: Path, ctx: _Ctx) -> None:
    with open(path, "wb") as f:
        f.truncate(spec.size_mb << 20)
    if spec.table == "none":
        for p in spec.partitions:
            _fill(spec, p, path, ctx)
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
        if p.fs or p.luks:
            image = ctx.stage / f"{spec.name}p{p.number}.part"
            with open(image, "wb") as f:
                f.truncate(p.size_mb << 20)
            _fill(spec, p, image, ctx)
            _copy_into(image, path, start << 20)
            image.unlink()
        start += p.size_mb


def _fill(spec: DiskSpec, p: Partition, target: Path, ctx: _Ctx) -> None:
    """Make the content of `p` in `target`, a sparse file of (at least) the partition's size."""
    if not p.luks:
        if p.fs:
            _make_fs(p.fs, fs_uuid(spec, p), target, ctx)
        return
    lk = ctx.luks[p.luks]
    keys = [_extra_key(lk, Path(lk.key_file))] if lk.key_file else []
    if p.luks in ctx.device_keys:
        keyfile = ctx.stage / f"{p.luks}.keyfile"
        keyfile.write_bytes(ctx.device_keys[p.luks])
        keys.append(_extra_key(lk, keyfile))
    inner = None
    if p.fs:
        inner = ctx.stage / f"{spec.name}p{p.number}.fs"
        with open(inner, "wb") as f:
            f.truncate(p.fs.size_mb << 20)
        _make_fs(p.fs, fs_uuid(spec, p), inner, ctx)
    header = ctx.out / f"{p.luks}{HEADER_SUFFIX}" if p.luks_header else None
    vol = luksdisk.Volume(luks_uuid(spec, p), p.luks_label, volume_key(spec, p), tuple(keys))
    luksdisk.build_volume(target, vol, ctx.stage, inner=inner, header=header)
    for scratch in (inner, ctx.stage / f"{p.luks}.keyfile"):
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    if header is not None:
        header.chmod(0o444)


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
    elif fs.content == "marker":
        files["/bootgen-marker"] = (fs.mountpoint.encode() + b"\n", 0o644)
    links = {"/bin/sh": "busybox"} if fs.content == "testroot" else {}
    taken = {*files, *links}
    for kf in fs.keyfiles:
        files[kf.path] = (ctx.device_keys[kf.luks[0]], 0o600)
    for p in [*dirs, *files]:  # parents are directories
        while (p := os.path.dirname(p)) != "/":
            dirs.add(p)
    for kf in fs.keyfiles:
        if kf.path in taken or kf.path in dirs:
            raise BuildError(f"[[luks]] '{kf.luks[0]}': key_file_path {kf.path} is taken on the "
                             "test filesystem", hint="choose another path")
    tree.mkdir(mode=0o755)
    for d in sorted(dirs):
        (tree / d[1:]).mkdir()
        (tree / d[1:]).chmod(0o1777 if d == "/tmp" else 0o755)
    for name, (data, mode) in files.items():
        (tree / name[1:]).write_bytes(data)
        (tree / name[1:]).chmod(mode)
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
