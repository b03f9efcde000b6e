"""An emulated TPM 2.0 for test boots (swtpm), and test volumes enrolled against it.

`Swtpm` runs `swtpm socket --tpm2` on a private copy of a TPM state (one file,
tpm2-00.permall: the TPM's seeds and NV memory) for one QEMU boot (`--terminate`: it exits
when QEMU disconnects).

`enroll` makes the fixture `bootgen verify` needs for `[[luks]] tpm2 = true`: it boots a
helper VM (the Debian kernel, a busybox initrd that mounts the build host's root read-only
over 9p and runs the host's own systemd-cryptenroll in it) with a fresh TPM and copies of the
test disks, and enrolls each TPM2 volume twice:

- "good": sealed against the PCR values every test boot has (SeaBIOS boots measure the same
  things each time; PCR 7 holds only the separator, PCRs 8-23 start at zero), so the TPM
  unlocks it without a prompt;
- "changed": sealed after the first bound PCR was extended, i.e. against a value no test boot
  has: the TPM refuses, as after a change of what that PCR measures, and stage one must ask
  for the passphrase.

The result (the TPM state and both disk sets) is cached by content like the test disks: the
key is the disks' cache key, the enrollment parameters and this module's version. Enrollment
must run in a VM because it needs the TPM and the volume key, and the build host may have
neither a TPM nor device-mapper.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..archive import cpio
from ..config.schema import Host
from ..errors import BootError, BuildError
from ..features.luks import Luks
from ..image import kmod
from ..paths import cache_dir, publish_dir
from ..run import which
from . import qemu
from .disks import BuiltDisk, find_busybox
from .luksdisk import TEST_PASSPHRASE

ENROLL_VERSION = 1  # bump whenever the fixture made for the same inputs changes
TEST_PIN = "1234"  # the PIN of test volumes enrolled with tpm2_pin
ENROLL_TIMEOUT = 240.0
HELPER_MODULES = ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p")
CHANGED_DIGEST = hashlib.sha256(b"bootgen: a measurement the test boots do not have").hexdigest()
STATE_FILE = "tpm2-00.permall"

HELPER_INIT = """#!/bin/busybox sh
# bootgen TPM enrollment helper: the build host's root over 9p, its tools, the test TPM.
/bin/busybox mkdir -p /proc /sys /dev /host
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
modprobe -a {modules} || echo "bootgen-enroll: modprobe failed"
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /host; then
    echo "BOOTGEN-ENROLL-EXIT rc=90 (no 9p host root)"
    poweroff -f
fi
mount -t devtmpfs devtmpfs /host/dev
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t tmpfs tmpfs /host/run
mount -t tmpfs tmpfs /host/tmp
cp /enroll.sh /host/run/enroll.sh
n=0
while [ ! -e /dev/tpmrm0 ] || [ ! -b /dev/vda ]; do
    n=$((n + 1)); [ "$n" -gt 100 ] && break; sleep 0.1
done
chroot /host /bin/sh /run/enroll.sh
echo "BOOTGEN-ENROLL-EXIT rc=$?"
sync
poweroff -f
"""


@dataclass(frozen=True)
class Volume:
    """A TPM2 volume to enroll: where it is on the test disks."""

    luks: Luks
    disk: int  # index into the built disks
    partition: int  # 0: the whole disk


@dataclass(frozen=True)
class Enrolled:
    state: Path  # a directory with the TPM state (cache: copy it per boot, see Swtpm)
    good: tuple[qemu.Drive, ...]  # the test drives, TPM2 volumes enrolled at the boot's PCRs
    changed: tuple[qemu.Drive, ...] | None  # enrolled against another value of a bound PCR
    uefi: bool = False  # enrolled in a UKI boot under OVMF (else: SeaBIOS, -kernel)


# How test boots of UKIs start: (initrd, command line, folder) → firmware and ESP drive. The
# helper VM starts the same way (same firmware, same Secure Boot state, signed with the same
# key), so that PCR 7 (the Secure Boot policy and the certificate that verified the image) has
# the value the test boots will have.
UefiStart = Callable[[bytes, list[str], Path], tuple[qemu.Firmware, qemu.Drive]]


def volumes(host: Host, built: tuple[BuiltDisk, ...]) -> list[Volume]:
    out = []
    for lk in host.luks:
        if not lk.tpm2:
            continue
        found = [(i, p) for i, d in enumerate(built) for p in d.spec.partitions
                 if p.luks == lk.name]
        if not found:
            raise BuildError(f"[[luks]] '{lk.name}': no test disk holds it")
        i, p = found[0]
        if p.luks_header:
            raise BuildError(f"[[luks]] '{lk.name}': verify cannot enroll a TPM2 volume with "
                             "a detached header", hint="verify it without header")
        out.append(Volume(lk, i, p.number))
    return out


def swtpm() -> str:
    found = which("swtpm")
    if found is None:
        raise BuildError("swtpm is missing (the emulated TPM of test boots)",
                         hint="install the Debian packages swtpm and swtpm-tools")
    return found


class Swtpm:
    """swtpm on a private copy of `state` (a directory holding tpm2-00.permall, or empty for a
    new TPM), for one QEMU boot. The control socket lives in a short /tmp path (unix socket
    paths are limited to 107 bytes)."""

    def __init__(self, state: Path | None, log: Path) -> None:
        self._source = state
        self._log = log
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        assert self._dir is not None
        return str(self._dir / "ctrl.sock")

    @property
    def state_dir(self) -> Path:
        assert self._dir is not None
        return self._dir / "state"

    def start(self) -> Swtpm:
        self._dir = Path(tempfile.mkdtemp(prefix="bootgen-tpm-"))
        self.state_dir.mkdir()
        if self._source is not None and (self._source / STATE_FILE).is_file():
            shutil.copyfile(self._source / STATE_FILE, self.state_dir / STATE_FILE)
        argv = [swtpm(), "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
                "--ctrl", f"type=unixio,path={self.socket}",
                "--log", f"file={self._log},level=1", "--terminate"]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr \
                    else ""
                self.stop()
                raise BuildError(f"swtpm did not start: {err.strip()[-300:] or 'no socket'}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def helper_initrd(kver: str, script: str, root: str = "/") -> bytes:
    """A busybox initrd that runs `script` in a chroot of the build host's root (over 9p)."""
    closure = kmod.resolve(list(HELPER_MODULES), kver, root=root)
    base = f"lib/modules/{kver}"
    members = [cpio.Member("init", stat.S_IFREG | 0o755,
                           HELPER_INIT.format(modules=" ".join(HELPER_MODULES)).encode()),
               cpio.Member("enroll.sh", stat.S_IFREG | 0o644, script.encode()),
               cpio.Member("bin/busybox", stat.S_IFREG | 0o755, find_busybox().read_bytes()),
               cpio.Member("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]
    for d in ("bin", "dev", "proc", "sys", "host", "lib", "lib/modules", base):
        members.append(cpio.Member(d, stat.S_IFDIR | 0o755))
    for m in closure.modules:
        members.append(cpio.Member(f"{base}/{m.relpath}", stat.S_IFREG | 0o644,
                                   Path(root, "lib/modules", kver, m.relpath).read_bytes()))
    for name, data in kmod.index_files(closure, root=root).items():
        members.append(cpio.Member(f"{base}/{name}", stat.S_IFREG | 0o644, data))
    return cpio.write_newc(members)


def enroll_script(pcrs: tuple[int, ...], pin: bool, good: list[str], changed: list[str]) -> str:
    flags = f"--tpm2-device=auto --tpm2-pcrs={'+'.join(str(p) for p in pcrs)}"
    flags += " --tpm2-with-pin=yes" if pin else ""
    lines = ["set -u", "export TPM2TOOLS_TCTI=device:/dev/tpmrm0 SYSTEMD_LOG_LEVEL=notice",
             f"export PASSWORD='{TEST_PASSPHRASE}' NEWPIN='{TEST_PIN}'"]
    for dev in good:
        lines.append(f"systemd-cryptenroll {flags} {dev} || exit 11")
    if changed:
        lines.append(f"tpm2_pcrextend {pcrs[0]}:sha256={CHANGED_DIGEST} || exit 12")
        for dev in changed:
            lines.append(f"systemd-cryptenroll {flags} {dev} || exit 13")
    return "\n".join(lines) + "\n"


def enroll(host: Host, built: tuple[BuiltDisk, ...], kver: str, kernel: str, *,
           cache: Path | None = None, progress: Callable[[str], None] | None = None,
           uefi: tuple[str, UefiStart] | None = None) -> Enrolled:
    """The TPM state and test drives for `host`'s TPM2 volumes (see the module docstring).
    `uefi` (what PCR 7 depends on, how to start a UKI): enroll in a UKI boot under OVMF, for
    test boots of UKIs."""
    vols = volumes(host, built)
    if not vols:
        raise BuildError("no [[luks]] entry has tpm2 = true")
    pcrs = {tuple(sorted(set(v.luks.tpm2_pcrs))) for v in vols}
    pins = {v.luks.tpm2_pin for v in vols}
    if len(pcrs) > 1 or len(pins) > 1:
        raise BuildError("verify enrolls all TPM2 volumes of a description alike",
                         hint="give every tpm2 volume the same tpm2_pcrs and tpm2_pin")
    bound, pin = pcrs.pop(), pins.pop()
    disks = sorted({v.disk for v in vols})
    key = hashlib.sha256(json.dumps([ENROLL_VERSION, [str(d.path.parent.name) for d in built],
                                     [d.path.name for d in built], disks, bound, pin, kver,
                                     TEST_PASSPHRASE, TEST_PIN, uefi[0] if uefi else "bios"]
                                    ).encode()).hexdigest()
    folder = cache or cache_dir("tpm")
    final = folder / key[:32]
    found = _load(final, built, disks, bool(bound), uefi is not None)
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    # one helper VM per fixture: a concurrent verify (another test worker) waits for it
    with open(folder / f".{key[:32]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _load(final, built, disks, bool(bound), uefi is not None)
        if found is not None:
            return found
        _make(final, folder, key, built, vols, disks, bound, pin, kver, kernel, progress,
              uefi[1] if uefi else None)
    loaded = _load(final, built, disks, bool(bound), uefi is not None)
    if loaded is None:
        raise BuildError(f"the TPM fixture vanished from {final}", hint="is the cache shared?")
    return loaded


def _make(final: Path, folder: Path, key: str, built: tuple[BuiltDisk, ...],
          vols: list[Volume], disks: list[int], bound: tuple[int, ...], pin: bool, kver: str,
          kernel: str, progress: Callable[[str], None] | None, uefi: UefiStart | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=folder))
    try:
        if progress:
            progress("enrolling the test volumes in the emulated TPM (helper VM)")
        _enroll_into(tmp, built, vols, disks, bound, pin, kver, kernel, uefi)
        publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy a disk image, leaving all-zero MiB chunks as holes."""
    zero = bytes(1 << 20)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(1 << 20):
            if chunk == zero[:len(chunk)]:
                fo.seek(len(chunk), os.SEEK_CUR)
            else:
                fo.write(chunk)
        fo.truncate()
    dst.chmod(0o644)


def _disk_name(i: int) -> str:
    return f"disk{i}"


def _load(final: Path, built: tuple[BuiltDisk, ...], disks: list[int], changed: bool,
          uefi: bool) -> Enrolled | None:
    if not (final / "state" / STATE_FILE).is_file() or not (final / "done").is_file():
        return None

    def drives(kind: str) -> tuple[qemu.Drive, ...]:
        return tuple(qemu.Drive(str(final / f"{_disk_name(i)}.{kind}.img") if i in disks
                                else str(d.path), serial=d.spec.serial, snapshot=True)
                     for i, d in enumerate(built))

    for kind in ("good", "changed") if changed else ("good",):
        if not all((final / f"{_disk_name(i)}.{kind}.img").is_file() for i in disks):
            return None
    return Enrolled(final / "state", drives("good"), drives("changed") if changed else None,
                    uefi)


def _enroll_into(out: Path, built: tuple[BuiltDisk, ...], vols: list[Volume],
                 disks: list[int], pcrs: tuple[int, ...], pin: bool, kver: str,
                 kernel: str, uefi: UefiStart | None) -> None:
    kinds = ("good", "changed") if pcrs else ("good",)
    drives: list[qemu.Drive] = []
    names: dict[str, list[str]] = {k: [] for k in kinds}
    for kind in kinds:
        for i in disks:
            copy = out / f"{_disk_name(i)}.{kind}.img"
            sparse_copy(built[i].path, copy)
            guest = f"/dev/vd{chr(97 + len(drives))}"
            drives.append(qemu.Drive(str(copy)))
            for v in vols:
                if v.disk == i:
                    names[kind].append(guest + (str(v.partition) if v.partition else ""))
    script = enroll_script(pcrs, pin, names["good"], names.get("changed", []))
    initrd = out / "helper.img"
    initrd.write_bytes(helper_initrd(kver, script))
    (out / "state").mkdir()
    log = out / "enroll.log"
    cmdline = ["console=ttyS0", "quiet", "panic=-1"]
    with Swtpm(None, out / "swtpm.log") as tpm:
        cfg = qemu.QemuConfig(
            kernel=kernel, initrd=str(initrd), append=" ".join(cmdline),
            drives=tuple(drives), tpm_socket=tpm.socket,
            extra=("-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                   "readonly=on,multidevs=remap"))
        if uefi is not None:
            fw, esp = uefi(initrd.read_bytes(), cmdline, out)
            cfg = dataclasses.replace(cfg, kernel=None, initrd=None, append="", firmware=fw,
                                      machine="q35", drives=(*cfg.drives, esp))
        with qemu.Machine(cfg, log_path=log, name="TPM enrollment") as machine:
            machine.start()
            m = machine.wait_for_console_text(r"BOOTGEN-ENROLL-EXIT rc=(\d+)[^\n]*",
                                              ENROLL_TIMEOUT)
            if m.group(1) != "0":
                raise BootError(f"enrolling the test volumes failed ({m.group(0).strip()})",
                                location="TPM enrollment", hint=f"see {log}")
            try:
                machine.wait_for_exit(30)
            except BootError:
                pass
        shutil.copyfile(tpm.state_dir / STATE_FILE, out / "state" / STATE_FILE)
    initrd.unlink()
    for scratch in (*out.glob("*-esp.img"), *out.glob("*-vars.fd")):
        scratch.unlink()
    for f in out.glob("*.img"):
        f.chmod(0o444)
    (out / "done").write_text("ok\n")
