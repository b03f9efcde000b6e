"""A guest that runs this machine's own programs: the build host's root shared read-only.

`run_job` boots the Debian kernel with a tiny busybox initrd (the 9p modules and nothing else),
mounts the build host's "/" read-only over 9p (QEMU virtfs), mounts proc, sys, dev, a tmpfs on
/run and /tmp over it, and runs a shell script in a chroot of it: the host's udevd, lvm,
mdadm, cryptsetup, mount, python3 and bootgen work there as on the host, against the guest's
disks. The script may write a tar archive to the output disk (`OUT_DISK` in its environment),
which `run_job` returns unpacked; its exit status is reported on the console as
`BOOTGEN-HOSTROOT-RC=<status>`.

The host's root is mounted read-only (QEMU refuses writes too); the guest's disks are whatever
the caller attaches (snapshot drives keep the originals untouched). Pitfalls met on the way:
the initrd needs merged-usr style symlinks (absolute links in the host's /usr, e.g.
/usr/sbin/modprobe -> /bin/kmod, resolve in the chroot only), and python must not write
bytecode caches into the read-only share.
"""

from __future__ import annotations

import io
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..archive import cpio
from ..config.schema import Host
from ..errors import BootError
from ..image import kmod
from . import qemu
from .disks import find_busybox

MODULES = ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p")
TAG = "hostroot"
OUT_SERIAL = "bootgen-out"
RC = r"BOOTGEN-HOSTROOT-RC=(\d+)"
TIMEOUT = 600.0  # seconds, before BOOTGEN_TIMEOUT_MULTIPLIER (qemu's waits apply it)

INIT = """#!/bin/busybox sh
# bootgen host-root guest: the build host's / over 9p (read-only), a job run in a chroot of it
/bin/busybox mkdir -p /proc /sys /dev /host /usr/bin /usr/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec < /dev/console > /dev/console 2>&1
modprobe -a {modules} || echo "bootgen-hostroot: modprobe failed"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 {tag} /host
then
    echo "BOOTGEN-HOSTROOT-RC=90 (the host root is not shared)"
    poweroff -f
fi
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mount -t tmpfs -o mode=0755 tmpfs /host/run
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
cp /job.sh /host/run/bootgen-job.sh
out=
n=0
while [ -z "$out" ] && [ "$n" -lt 300 ]; do
    for d in /sys/block/vd*; do
        [ "$(cat "$d/serial" 2>/dev/null)" = {serial} ] && out=/dev/${{d##*/}}
    done
    n=$((n + 1))
    [ -n "$out" ] || sleep 0.1
done
echo "bootgen-hostroot: job starts at $(cut -d" " -f1 /proc/uptime) s (output disk: ${{out:-none}})"
OUT_DISK=$out SYSTEMD_IGNORE_CHROOT=1 PYTHONDONTWRITEBYTECODE=1 LC_ALL=C.UTF-8 HOME=/run \\
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    chroot /host /bin/sh -e /run/bootgen-job.sh
rc=$?
sync
echo "bootgen-hostroot: job done at $(cut -d" " -f1 /proc/uptime) s"
echo "BOOTGEN-HOSTROOT-RC=$rc"
poweroff -f
"""


@dataclass(frozen=True)
class JobResult:
    files: dict[str, bytes]  # the tar the job wrote to OUT_DISK: member name -> content
    links: dict[str, str]  # its symlinks: member name -> target
    log: Path
    lines: tuple[str, ...]  # the console


def initrd(kver: str, script: str) -> bytes:
    """busybox, the 9p modules of `kver` with their indexes, /init and the job."""
    closure = kmod.resolve(list(MODULES), kver)
    base = f"usr/lib/modules/{kver}"
    members = [
        cpio.Member("init", stat.S_IFREG | 0o755,
                    INIT.format(modules=" ".join(MODULES), tag=TAG, serial=OUT_SERIAL).encode()),
        cpio.Member("job.sh", stat.S_IFREG | 0o644, script.encode()),
        cpio.Member("bin/busybox", stat.S_IFREG | 0o755, find_busybox().read_bytes()),
        cpio.Member("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        cpio.Member("lib", stat.S_IFLNK | 0o777, b"usr/lib"),
        cpio.Member("sbin", stat.S_IFLNK | 0o777, b"bin"),
    ]
    for d in ("bin", "dev", "proc", "sys", "host", "usr", "usr/lib", "usr/lib/modules", base):
        members.append(cpio.Member(d, stat.S_IFDIR | 0o755))
    for m in closure.modules:
        members.append(cpio.Member(f"{base}/{m.relpath}", stat.S_IFREG | 0o644,
                                   Path(kmod.modules_dir(kver), m.relpath).read_bytes()))
    for name, data in kmod.index_files(closure).items():
        members.append(cpio.Member(f"{base}/{name}", stat.S_IFREG | 0o644, data))
    return cpio.write_newc(members)


def run_job(script: str, workdir: Path, *, kver: str, kernel: str,
            drives: Sequence[qemu.Drive] = (), out_mb: int = 16, append: str = "",
            timeout: float = TIMEOUT, name: str = "host-root guest",
            extra: Sequence[str] = ()) -> JobResult:
    """Boot the guest with `drives` (plus the output disk, attached last), run `script` in the
    host root's chroot, return what it wrote to $OUT_DISK. A job that fails (its status is not
    0) or never finishes is a BootError naming the console log."""
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / "hostroot-initrd.img"
    image.write_bytes(initrd(kver, script))
    out = workdir / "hostroot-out.img"
    with open(out, "wb") as f:
        f.truncate(out_mb << 20)
    log = workdir / "hostroot.log"
    cfg = qemu.QemuConfig(
        kernel=kernel, initrd=str(image),
        append=qemu.boot_append(["console=ttyS0", "quiet", *append.split()]),
        drives=(*drives, qemu.Drive(str(out), serial=OUT_SERIAL)), memory_mb=1024,
        extra=("-virtfs", f"local,path=/,mount_tag={TAG},security_model=none,readonly=on,"
               "multidevs=remap", *extra))
    with qemu.Machine(cfg, log_path=log, name=name) as machine:
        machine.start()
        m = machine.wait_for_console_text(RC, timeout)
        lines = tuple(line.text for line in machine.lines)
        if m.group(1) != "0":
            tail = "; ".join(lines[-6:])
            raise BootError(f"{name}: the job failed (status {m.group(1)}): {tail}",
                            hint=f"console log: {log}")
        try:
            machine.wait_for_exit(60)
        except BootError:
            pass
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    data = out.read_bytes()
    if data.strip(b"\0"):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.issym():
                    links[member.name] = member.linkname
                elif member.isfile():
                    got = tar.extractfile(member)
                    files[member.name] = got.read() if got else b""
    return JobResult(files, links, log, lines)


# --- a described system, brought up in the guest as an installer would ---------------------

SETUP = """# bootgen: bring up the test disks' system under /mnt, as an installer would
modprobe -a virtio_blk dm_mod dm_crypt xts ecb algif_skcipher md_mod raid0 raid1 raid10 \\
    crc32c_generic ext4 xfs btrfs vfat nls_cp437 nls_ascii nls_iso8859_1 2>/dev/null || :
mkdir -p /run/udev /run/lvm /run/lock/lvm /run/cryptsetup /run/mdadm
/lib/systemd/systemd-udevd --daemon --resolve-names=never
udevadm trigger --type=subsystems --action=add
udevadm trigger --type=devices --action=add
udevadm settle --timeout=120
dev() {  # a device reference of the description -> its node
    case $1 in
        /dev/*) echo "$1" ;;
        *) findfs "$1" ;;
    esac
}
"""


def _q(value: object) -> str:
    import shlex

    return shlex.quote(str(value))


def system_script(host: Host, passphrase: str) -> str:
    """A job prelude: udev, the description's LUKS volumes opened with `passphrase`, its arrays
    and volume groups activated, its filesystems mounted under /mnt, and the /etc/fstab and
    /etc/crypttab an installer would have written (devices by UUID, LVs by /dev/mapper path,
    x-initrd.mount on the needed-for-boot filesystems but /). Then /proc, /sys, /dev and /run
    are bound into /mnt, as for a chroot."""
    from ..features.luks import LUKS
    from ..features.lvm import mapper_name, split_lv
    from ..features.mdraid import RAID, mdadm_uuid

    lines = [SETUP, f"printf '%s' {_q(passphrase)} > /run/pass"]
    for lk in LUKS.of(host):
        lines.append(f"cryptsetup open --key-file /run/pass \"$(dev {_q(lk.device)})\" "
                     f"{_q(lk.name)}")
        lines.append("udevadm settle --timeout=60")
    if RAID.of(host):
        conf = "".join(f"ARRAY /dev/md/{md.name} UUID={mdadm_uuid(md.uuid)}\n"
                       for md in RAID.of(host))
        conf = _q("DEVICE partitions containers\n" + conf)
        lines.append(f"printf '%s' {conf} > /run/mdadm/mdadm.conf")
        # udev's incremental assembly (the host's rules, without this conf) may have started
        # the arrays under other names, holding the members: stop them, assemble by the conf
        lines.append("mdadm --stop --scan || :")
        lines.append("mdadm --assemble --scan --config=/run/mdadm/mdadm.conf || :")
        lines.append("udevadm settle --timeout=60")
    lines.append("lvm vgchange -ay --config 'devices { use_devicesfile = 0 }' || :")
    lines.append("udevadm settle --timeout=60")
    fstab = []
    for fs in host.boot_filesystems:
        opts = [o for o in fs.options if o not in ("rw", "ro")] or ["defaults"]
        lines.append(f"mkdir -p /mnt{fs.mountpoint} 2>/dev/null || :")
        lines.append(f"mount -t {fs.fstype} -o {_q(','.join(opts))} \"$(dev {_q(fs.device)})\" "
                     f"/mnt{fs.mountpoint}")
        if fs.mountpoint != "/":
            opts.append("x-initrd.mount")
        passno = 1 if fs.mountpoint == "/" else 2
        lv = split_lv(fs.device)
        source = (f"/dev/mapper/{mapper_name(*lv)}" if lv else fs.device
                  if fs.device.startswith("/dev/") else
                  f"UUID=$(blkid -o value -s UUID \"$(dev {_q(fs.device)})\")")
        fstab.append(f"echo \"{source} {fs.mountpoint} {fs.fstype} {','.join(opts)} 0 "
                     f"{passno if fs.fstype in ('ext4', 'ext3', 'ext2', 'vfat') else 0}\"")
    lines.append("mkdir -p /mnt/etc")
    lines.append("{\necho '# /etc/fstab: written by the bootgen test installer'\n"
                 + "\n".join(fstab) + "\n} > /mnt/etc/fstab")
    crypt = [f"echo \"{lk.name} UUID=$(blkid -o value -s UUID \"$(dev {_q(lk.device)})\") "
             "none luks,discard\"" for lk in LUKS.of(host)]
    if crypt:
        lines.append("{\n" + "\n".join(crypt) + "\n} > /mnt/etc/crypttab")
    lines.append("for d in proc sys dev run; do mkdir -p /mnt/$d; mount --bind /$d /mnt/$d; "
                 "done")
    return "\n".join(lines) + "\n"
