"""Building the test disks of stacked storage inside a helper VM (`build_stack`).

There is no device-mapper, md or loop device on the build machine, so the disks are made where
there are: in a QEMU guest. Its initrd is bootgen's own, built from a description (scripted
flavour, the host's lvm, mdadm, cryptsetup and mkfs tools, kmod as modprobe); a second archive
appended to it carries this job: an /init that loads the modules, finds the disks by their
virtio serial, runs the job script `job_script` renders from the plan (partitions, LUKS, md,
LVM, filesystems, swap, in dependency order; every tool called by its absolute path) and
reports `BOOTGEN-HELPER-RC=<status>` before powering off. The files the filesystems get (the
test root, markers, keyfiles) come on a read-only payload disk made with `mke2fs -d`.

Results are cached by content, like the userspace test disks: same plan, same disks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import description
from ..archive import cpio
from ..config.schema import Host
from ..errors import BootError, BuildError
from ..features.luks import LUKS
from ..image.build import build
from ..paths import locked, publish_dir
from ..run import run
from . import luksdisk, qemu
from .diskbuild import MKE2FS_CONF, _Ctx, _discard, _sha256_file, _stage_tree
from .disks import (
    BuiltDisk,
    DiskSpec,
    FsImage,
    TestRoot,
    default_cache_dir,
    expected_mounts,
    find_busybox,
    fixture_script,
)
from .stack import Content, Device, Layer, Stack, _safe, plan_stack, uuid_for

STACK_BUILDER_VERSION = 1  # bump whenever the disks built for the same plan change
HELPER_TIMEOUT = 600.0  # seconds, before BOOTGEN_TIMEOUT_MULTIPLIER
TOOLS = {
    "lvm": "/usr/sbin/lvm", "dmsetup": "/usr/sbin/dmsetup", "mdadm": "/usr/sbin/mdadm",
    "cryptsetup": "/usr/sbin/cryptsetup", "mkfs.xfs": "/usr/sbin/mkfs.xfs",
    "mkfs.btrfs": "/usr/sbin/mkfs.btrfs", "btrfs": "/usr/bin/btrfs", "mke2fs": "/usr/sbin/mke2fs",
    "sfdisk": "/usr/sbin/sfdisk", "mkswap": "/usr/sbin/mkswap", "mkfs.vfat": "/usr/sbin/mkfs.vfat",
    "blkid": "/usr/sbin/blkid", "kmod": "/usr/bin/kmod",
}
MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "libcrc32c", "dm_mod", "dm_crypt",
           "xts", "ecb", "algif_skcipher", "md_mod", "raid0", "raid1", "raid10", "raid456",
           "ext4", "xfs", "btrfs", "vfat", "nls_cp437", "nls_ascii", "nls_iso8859_1")
GUID = {"fs": "0FC63DAF-8483-4772-8E79-3D69D8E47DE4",  # GPT partition types
        "md": "A19D880F-05FC-4D3B-A006-743F0F84911E",
        "pv": "E6D6D379-F507-44C2-A23C-238F2A3DF928",
        "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"}
LVMC = ("devices { use_devicesfile = 0 obtain_device_list_from_udev = 0 } "
        "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } "
        "backup { backup = 0 archive = 0 }")
RC_LINE = r"BOOTGEN-HELPER-RC=(\d+)"
PAYLOAD = "bootgen-payload"

HELPER_INIT = """#!/bin/sh
# bootgen helper VM: builds test disks. /job.sh comes from the archive appended to the image.
export PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lvm /run/lock/lvm /run/cryptsetup /mnt /payload
echo /usr/local/sbin/modprobe > /proc/sys/kernel/modprobe
exec < /dev/console > /dev/console 2>&1
for m in {modules}; do
    /usr/local/sbin/modprobe "$m" || echo "bootgen-helper: cannot load $m"
done
uptime_ds() {{ read -r u _ < /proc/uptime; u=${{u%.*}}; echo "$u"; }}
disk() {{  # SERIAL: the /dev node of the virtio disk with that serial
    for d in /sys/block/vd*; do
        [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && {{ echo "/dev/${{d##*/}}"; return 0; }}
    done
    return 1
}}
waitdisk() {{
    end=$(( $(uptime_ds) + 30 ))
    until disk "$1" > /dev/null; do
        [ "$(uptime_ds)" -ge "$end" ] && {{ echo "bootgen-helper: no disk $1" >&2; return 1; }}
        sleep 0.1
    done
    disk "$1"
}}
waitnode() {{
    end=$(( $(uptime_ds) + 30 ))
    until [ -b "$1" ]; do
        [ "$(uptime_ds)" -ge "$end" ] && {{ echo "bootgen-helper: no node $1" >&2; return 1; }}
        sleep 0.1
    done
}}
echo "bootgen-helper: job starts"
( set -ex; . /job.sh )
rc=$?
sync
echo "BOOTGEN-HELPER-RC=$rc"
poweroff -f
"""


def q(value: object) -> str:
    return shlex.quote(str(value))


def _ids(stack: Stack) -> dict[str, Device]:
    return {d.id: d for d in stack.devices}


def _uuid(dev: Device, content: Content, what: str) -> str:
    return content.uuid or uuid_for(dev.id, what)


def job_script(stack: Stack, trees: dict[str, str], keys: dict[str, list[str]]) -> str:
    """The shell script that makes `stack` on the helper's disks. `trees`: mount id → payload
    directory of its files; `keys`: LUKS name → payload keyfiles to add as keyslots."""
    t = TOOLS
    lines = [f"# bootgen test disks, builder version {STACK_BUILDER_VERSION}",
             f"LVMC={q(LVMC)}",
             f"P=$(waitdisk {PAYLOAD})", 'mount -o ro -t ext4 "$P" /payload',
             f"printf '%s' {q(luksdisk.TEST_PASSPHRASE)} > /run/pass"]
    for disk in stack.disks:
        lines.append(f"d{disk.disk}=$(waitdisk bootgen-disk{disk.disk})")
    for disk in stack.disks:
        parts = [d for d in stack.devices if d.kind == "part" and d.disk == disk.disk]
        if not parts:
            continue
        table = ["label: gpt", f"label-id: {uuid_for(disk.id, 'table')}", "unit: sectors", ""]
        start = 2048
        for p in parts:
            size = p.size_mb << 11
            name = f', name="{p.partlabel}"' if p.partlabel else ""
            table.append(f"@DISK@{p.number} : start={start}, size={size}, "
                         f"type={GUID.get(p.content.kind, GUID['fs'])}, "
                         f"uuid={p.partuuid or uuid_for(p.id, 'part')}{name}")
            start += size
        # partition numbers go by name: "<disk><n> : ..." (the disk is known at run time)
        lines.append(f"printf '%s\\n' {' '.join(q(x) for x in table)} | "
                     f'sed "s|@DISK@|{disk.ref}|" | {t["sfdisk"]} --quiet {disk.ref}')
        lines += [f"waitnode {p.ref}" for p in parts]
    devices = _ids(stack)
    made = [d for d in stack.devices if d.kind in ("disk", "part")]
    lines += [line for d in made for line in _content(d, trees)]
    for layer in stack.layers:
        lines += _layer(layer, devices, keys)
        lines += [line for ident in layer.makes for line in _content(devices[ident], trees)]
        if layer.kind == "pool" and layer.content is not None:
            lines.append(f"{t['btrfs']} device scan")
            lines += _fs_content(f"pool_{_safe(layer.name)}", layer.content,
                                 _first(layer, devices), trees, None)
    for layer in reversed(stack.layers):  # close everything, top first
        if layer.kind == "vg":
            lines.append(f'{t["lvm"]} vgchange --config "$LVMC" -an {q(layer.name)}')
        elif layer.kind == "md":
            lines.append(f"{t['mdadm']} --stop /dev/md/{q(layer.name)}")
        elif layer.kind == "luks":
            lines.append(f"{t['cryptsetup']} close {q(layer.name)}")
    return "\n".join(lines) + "\n"


def _first(layer: Layer, devices: dict[str, Device]) -> str:
    return " ".join(devices[i].ref for i in layer.on)


def _layer(layer: Layer, devices: dict[str, Device], keys: dict[str, list[str]]) -> list[str]:
    t = TOOLS
    on = _first(layer, devices)
    if layer.kind == "luks":
        ident = f"--uuid {q(layer.uuid)} " if layer.uuid else ""
        label = f"--label {q(layer.label)} " if layer.label else ""
        pbkdf = f"--pbkdf pbkdf2 --pbkdf-force-iterations {luksdisk.PBKDF_ITERATIONS}"
        out = [f"{t['cryptsetup']} luksFormat -q --type luks2 {pbkdf} {ident}{label}"
               f"--key-file /run/pass {on}"]
        for key in keys.get(layer.name, []):
            size = f"--new-keyfile-size {layer.key_size} " if layer.key_size else ""
            offset = f"--new-keyfile-offset {layer.key_offset} " if layer.key_offset else ""
            out.append(f"{t['cryptsetup']} luksAddKey -q {pbkdf} --key-file /run/pass "
                       f"{size}{offset}{on} {q(key)}")
        out.append(f"{t['cryptsetup']} open --key-file /run/pass {on} {q(layer.name)}")
        return out
    if layer.kind == "md":
        return [f"{t['mdadm']} --create /dev/md/{q(layer.name)} --run --assume-clean "
                f"--level={layer.level} --raid-devices={len(layer.on)} --metadata=1.2 "
                f"--uuid={layer.uuid} --name={q(layer.name)} --homehost=bootgen {on}",
                f"waitnode /dev/md/{q(layer.name)}"]
    if layer.kind == "vg":
        out = [f'{t["lvm"]} pvcreate --config "$LVMC" -y {on}',
               f'{t["lvm"]} vgcreate --config "$LVMC" {q(layer.name)} {on}']
        for ident in layer.makes:
            lv = devices[ident]
            out += [f'{t["lvm"]} lvcreate --config "$LVMC" -y -n {q(lv.ref.rsplit("/", 1)[1])} '
                    f"-L {lv.size_mb}M {q(layer.name)}", f"waitnode {lv.ref}"]
        return out
    # pool: a btrfs over several devices
    label = f"-L {q(layer.label)} " if layer.label else ""
    uuid = f"-U {q(layer.uuid)} " if layer.uuid else ""
    return [f"{t['mkfs.btrfs']} -q -f -d {layer.level} -m {layer.level} {label}{uuid}{on}"]


def _content(dev: Device, trees: dict[str, str]) -> list[str]:
    c = dev.content
    if c.kind == "swap":
        label = f"-L {q(c.label)} " if c.label else ""
        return [f"{TOOLS['mkswap']} -U {_uuid(dev, c, 'swap')} {label}{dev.ref}"]
    if c.kind == "fs":
        return _fs_content(dev.id, c, dev.ref, trees, _uuid(dev, c, "fs"))
    return []


def _fs_content(ident: str, c: Content, ref: str, trees: dict[str, str],
                uuid: str | None) -> list[str]:
    """mkfs (unless the pool made it already: uuid None) and copy each mount's files in."""
    t = TOOLS
    label = c.label
    out: list[str] = []
    if c.fstype in ("ext2", "ext3", "ext4"):
        (mount,) = c.mounts or (None,)
        tree = trees.get(_mount_id(ident, 0), "/payload/empty")
        out.append(f"MKE2FS_CONFIG=/payload/mke2fs.conf {t['mke2fs']} -q -F -t {c.fstype} "
                   + (f"-L {q(label)} " if label else "")
                   + f"-U {uuid} -E root_owner=0:0 -d {tree} {ref}")
        return out
    if c.fstype == "xfs":
        out.append("TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 "
                   f"{t['mkfs.xfs']} -q -f " + (f"-L {q(label)} " if label else "")
                   + f"-m uuid={uuid} {ref}")
    elif c.fstype == "btrfs" and uuid is not None:
        out.append(f"{t['mkfs.btrfs']} -q -f " + (f"-L {q(label)} " if label else "")
                   + f"-U {uuid} {ref}")
    elif c.fstype == "vfat":
        volid = (uuid or "").replace("-", "")[:8].upper()
        out.append(f"{t['mkfs.vfat']} -i {volid} " + (f"-n {q(label)} " if label else "")
                   + ref)
    first = ref.split()[0]
    out.append(f"mount -t {c.fstype} {first} /mnt")
    for i, m in enumerate(c.mounts):
        target = "/mnt"
        if m.subvolume:
            target = f"/mnt/{m.subvolume}"
            out.append(f"{t['btrfs']} -q subvolume create {q(target)}")
        source = trees.get(_mount_id(ident, i))
        if source:
            flags = "-r" if c.fstype == "vfat" else "-a"
            out.append(f"cp {flags} {source}/. {q(target)}/")
    out.append("umount /mnt")
    return out


def _mount_id(ident: str, index: int) -> str:
    return f"{ident}-{index}"


def _contents(stack: Stack) -> list[tuple[str, Content]]:
    """(id, content) of every filesystem the job makes, pools included."""
    out = [(d.id, d.content) for d in stack.devices if d.content.kind == "fs"]
    out += [(f"pool_{_safe(la.name)}", la.content) for la in stack.layers
            if la.kind == "pool" and la.content is not None]
    return out


def _stage_payload(host: Host, stack: Stack, payload: Path, ctx: _Ctx
                   ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Files of every filesystem (as trees) and the keyfiles, in the payload directory."""
    trees: dict[str, str] = {}
    (payload / "empty").mkdir()
    (payload / "trees").mkdir()
    (payload / "mke2fs.conf").write_text(MKE2FS_CONF)
    for ident, content in _contents(stack):
        for i, mount in enumerate(content.mounts or (None,)):  # type: ignore[arg-type]
            mountpoint = mount.mountpoint if mount else ""
            kind = {"/": "testroot", "": "keyfiles"}.get(mountpoint, "marker")
            fs = FsImage(content.fstype, content.label, content.uuid, mountpoint, 0, kind,
                         content.keyfiles if i == 0 else ())
            name = _mount_id(ident, i)
            _stage_tree(fs, payload / "trees" / name, ctx)
            trees[name] = f"/payload/trees/{name}"
    keys: dict[str, list[str]] = {}
    (payload / "keys").mkdir()
    for lk in LUKS.of(host):
        if lk.key_file:
            shutil.copyfile(lk.key_file, payload / "keys" / f"{lk.name}.key")
            keys.setdefault(lk.name, []).append(f"/payload/keys/{lk.name}.key")
        if lk.name in ctx.device_keys:
            (payload / "keys" / f"{lk.name}.devkey").write_bytes(ctx.device_keys[lk.name])
            keys.setdefault(lk.name, []).append(f"/payload/keys/{lk.name}.devkey")
    return trees, keys


def _device_keys(stack: Stack) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for ident, content in _contents(stack):
        for kf in content.keyfiles:
            data = luksdisk.derived_bytes(kf.size, "keyfile", ident, kf.path)
            found.update(dict.fromkeys(kf.luks, data))
    return found


def helper_host(kver: str) -> Host:
    """The helper VM's description: scripted stage one, the disk tools, every storage module
    (loaded by the job's /init, not at start)."""
    modules = ", ".join(f'"{m}"' for m in MODULES)
    binaries = ", ".join(f'"{p}"' for p in TOOLS.values())
    return description.loads(f"""
[boot]
flavor = "scripted"
compression_level = 3
[kernel]
version = "{kver}"
available_modules = [{modules}]
[[filesystems]]
mountpoint = "/"
device = "LABEL=bootgen-helper-none"
fstype = "ext4"
[extra]
binaries = [{binaries}]
[rescue]
allow_passwordless = true
""", "<bootgen helper VM>")


def job_modules(stack: Stack) -> tuple[str, ...]:
    """The modules a job needs (loading btrfs or xfs costs seconds under TCG)."""
    kinds = {la.kind for la in stack.layers}
    fstypes = {c.fstype for _i, c in _contents(stack)}
    want = ["virtio_pci", "virtio_blk", "crc32c_generic", "libcrc32c"]
    if "luks" in kinds:
        want += ["dm_mod", "dm_crypt", "xts", "ecb", "algif_skcipher"]
    if "md" in kinds:
        want += ["md_mod", "raid0", "raid1", "raid10", "raid456"]
    if "vg" in kinds:
        want += ["dm_mod"]
    if "pool" in kinds or "btrfs" in fstypes:
        want += ["btrfs"]
    want += [m for fs, mods in (("ext4", ("ext4",)), ("ext3", ("ext4",)), ("ext2", ("ext4",)),
                                ("xfs", ("xfs",)),
                                ("vfat", ("vfat", "nls_cp437", "nls_ascii", "nls_iso8859_1")))
             if fs in fstypes for m in mods]
    return tuple(dict.fromkeys(["ext4", *want]))  # the payload disk is ext4


def job_archive(script: str, modules: tuple[str, ...]) -> bytes:
    """The archive appended to the helper image: its /init, the job, kmod as modprobe."""
    members = [
        cpio.Member("init", stat.S_IFREG | 0o755,
                    HELPER_INIT.format(modules=" ".join(modules)).encode()),
        cpio.Member("job.sh", stat.S_IFREG | 0o644, script.encode()),
        cpio.Member("usr/local", stat.S_IFDIR | 0o755),
        cpio.Member("usr/local/sbin", stat.S_IFDIR | 0o755),
        cpio.Member("usr/local/sbin/modprobe", stat.S_IFLNK | 0o777, b"/usr/bin/kmod"),
    ]
    return cpio.write_newc(members)


def build_stack(host: Host, workdir: Path, *, kver: str, kernel: str,
                cache_dir: Path | None = None,
                progress: Callable[[str], None] | None = None
                ) -> tuple[tuple[BuiltDisk, ...], TestRoot]:
    """The test disks of a host with stacked storage, from the cache or built in the helper
    VM. Boot the returned (shared, read-only) images with QEMU `snapshot=on`."""
    stack = plan_stack(host)
    expected = expected_mounts(host)
    script_fixture, busybox = fixture_script().read_bytes(), find_busybox()
    plan = json.dumps({"stack": dataclasses.asdict(stack), "expected": list(expected)},
                      indent=1, sort_keys=True)
    keyfiles = [hashlib.sha256(Path(lk.key_file).read_bytes()).hexdigest()
                for lk in LUKS.of(host) if lk.key_file]
    key = hashlib.sha256("\0".join((f"stack-{STACK_BUILDER_VERSION}", plan, kver, MKE2FS_CONF,
                                    HELPER_INIT, hashlib.sha256(script_fixture).hexdigest(),
                                    _sha256_file(busybox), *keyfiles,
                                    luksdisk.TEST_PASSPHRASE)).encode()).hexdigest()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    final = cache / key
    found = _load(final, stack, expected)
    if found is not None:
        return found
    # another builder of the same disks (a parallel test, a second verify): wait for it
    with locked(cache.parent / f".{cache.name}-locks" / f"{key[:32]}.lock"):
        found = _load(final, stack, expected)
        if found is not None:
            return found
        _build(host, stack, expected, plan, key, final, cache, workdir, kver, kernel,
               script_fixture, busybox, progress)
    built = _load(final, stack, expected)
    if built is None:
        raise BuildError(f"the test disks vanished from {final}", hint="is the cache shared?")
    return built


def _build(host: Host, stack: Stack, expected: tuple[str, ...], plan: str, key: str,
           final: Path, cache: Path, workdir: Path, kver: str, kernel: str,
           script_fixture: bytes, busybox: Path,
           progress: Callable[[str], None] | None) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    if final.exists():
        _discard(final, cache)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=cache))
    try:
        disk_id = key[:32]
        with tempfile.TemporaryDirectory(prefix="bootgen-stack-", dir=workdir) as stage_dir:
            stage = Path(stage_dir)
            payload = stage / "payload"
            payload.mkdir()
            ctx = _Ctx(stage, [fs.mountpoint for fs in host.filesystems], expected, disk_id,
                       script_fixture, busybox, tmp, {lk.name: lk for lk in LUKS.of(host)},
                       _device_keys(stack))
            trees, keys = _stage_payload(host, stack, payload, ctx)
            script = job_script(stack, trees, keys)
            payload_img = stage / "payload.img"
            size = sum(f.stat().st_size for f in payload.rglob("*") if f.is_file()) >> 20
            with open(payload_img, "wb") as f:
                f.truncate((size + 16) << 20)
            run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", PAYLOAD, "-d", payload, payload_img])
            for disk in stack.disks:
                with open(tmp / f"disk{disk.disk}.img", "wb") as f:
                    f.truncate(disk.size_mb << 20)
            _run_helper(stack, script, payload_img, tmp, stage, kver, kernel, progress,
                        workdir / "test-disk-helper.log")
        for disk in stack.disks:
            (tmp / f"disk{disk.disk}.img").chmod(0o444)
        (tmp / "plan.json").write_text(plan + "\n")
        (tmp / "job.sh").write_text(script)
        (tmp / "disk-id").write_text(disk_id + "\n")
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_helper(stack: Stack, script: str, payload: Path, out: Path, stage: Path, kver: str,
                kernel: str, progress: Callable[[str], None] | None, log: Path) -> None:
    if progress:
        layers = ", ".join(sorted({la.kind for la in stack.layers})) or "filesystems"
        progress(f"building {len(stack.disks)} test disk(s) ({layers}) in a helper VM; "
                 "cached for later runs")
    image = stage / "helper.img"
    r = build(helper_host(kver), output=image, kver=kver)
    data = r.packed.data
    image.write_bytes(data + b"\0" * (-len(data) % 4) + job_archive(script, job_modules(stack)))
    drives = [qemu.Drive(str(out / f"disk{d.disk}.img"), serial=f"bootgen-disk{d.disk}")
              for d in stack.disks]
    drives.append(qemu.Drive(str(payload), serial=PAYLOAD, readonly=True))
    cfg = qemu.QemuConfig(kernel=kernel, initrd=str(image), append="console=ttyS0 panic=-1",
                          drives=tuple(drives))
    with qemu.Machine(cfg, log_path=log, name="test-disk helper") as machine:
        machine.start()
        try:
            m = machine.wait_for_console_text(RC_LINE, HELPER_TIMEOUT)
        except BootError as e:
            raise BuildError(f"the helper VM did not finish the test disks: "
                             f"{e.message.splitlines()[0]}", hint=f"console log: {log}") from e
        if m.group(1) != "0":
            tail = "; ".join(line.text for line in machine.lines[-8:])
            raise BuildError(f"the helper VM failed to build the test disks (status "
                             f"{m.group(1)}): {tail}", hint=f"console log: {log}")
        machine.wait_for_exit(60)
    log.unlink(missing_ok=True)


def _load(final: Path, stack: Stack, expected: tuple[str, ...]
          ) -> tuple[tuple[BuiltDisk, ...], TestRoot] | None:
    try:
        disk_id = (final / "disk-id").read_text().strip()
    except OSError:
        return None
    disks = tuple(BuiltDisk(DiskSpec(f"disk{d.disk}", "stack", d.size_mb, (),
                                     f"bootgen-disk{d.disk}", f"/dev/vd{chr(97 + d.disk)}"),
                            final / f"disk{d.disk}.img") for d in stack.disks)
    if not all(d.path.is_file() for d in disks):
        return None
    return disks, TestRoot(disk_id=disk_id, expected=expected)
