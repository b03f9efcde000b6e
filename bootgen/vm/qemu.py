"""QEMU driver: build the qemu command line, boot a guest and watch its serial console.

The guest's first serial port and the QEMU monitor share qemu's stdio (a mux chardev, as with
`-nographic`): Ctrl-a x quits qemu, Ctrl-a c switches to the monitor. `Machine` runs qemu on a
pseudo-terminal (pexpect); a reader thread writes every byte to the console log as it arrives and
splits the output into timestamped lines, with ANSI escape sequences and CRs removed.
"""

from __future__ import annotations

import codecs
import functools
import math
import os
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import pexpect

from ..errors import BootError, CommandError, UsageError
from ..run import run

FORMATS = ("raw", "qcow2")
INTERFACES = ("virtio", "ide", "scsi", "nvme")
ACCELS = ("auto", "tcg", "kvm")
CLOCKS = ("real", "instructions")
ICOUNT = "shift=0,sleep=on"  # the "instructions" clock: 1 ns per instruction, waits real
# TCG's CPU: QEMU's default model with RDRAND, as every x86-64 CPU since 2012 has. Without it the
# kernel's random pool is ready only seconds into the boot (4.9 s here) and every cryptsetup,
# bootgen's or dracut's, waits for it: a stall real machines do not have.
TCG_CPU = "qemu64,+rdrand"
TAIL_LINES = 40  # console lines quoted in a BootError
QUIT_KEYS = b"\x01x"  # Ctrl-a x: the mux chardev's "quit qemu"
TIMEOUT_ENV = "BOOTGEN_TIMEOUT_MULTIPLIER"
KVM_PROBE_TIMEOUT = 5.0
_KEY = re.compile(r"[a-z0-9_]+(-[a-z0-9_]+)*")
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_VIRT_FLAGS = re.compile(r"^flags\s*:.*\b(vmx|svm)\b", re.MULTILINE)
_ANSI = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC: window titles
    r"|[ -/]+[0-~]"  # nF: charset selection
    r"|[0-Z\\^-~])"  # two-character escapes
)
# An escape sequence cut off at the end of a chunk: kept back until the next chunk completes it.
_ANSI_TAIL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[ -/]*)\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # after escapes: CR, BEL, BS, lone ESC...


@dataclass(frozen=True)
class Drive:
    path: str
    format: str = "raw"  # raw | qcow2
    interface: str = "virtio"  # virtio | ide | scsi (virtio-scsi) | nvme
    serial: str | None = None  # nvme needs one: "nvme<N>" when not given
    readonly: bool = False
    snapshot: bool = False  # writes go to a temporary overlay, the image is untouched
    # `path` is a qcow2 overlay over this disk or image, which QEMU opens read-only (driver
    # "file", or "host_device" for a block device): every write lands in the overlay
    backing: str | None = None
    backing_driver: str = "file"


@dataclass(frozen=True)
class PortForward:
    host_port: int  # bound on 127.0.0.1 only
    guest_port: int


@dataclass(frozen=True)
class Firmware:
    """UEFI firmware in two flash chips: the code (read-only) and a writable copy of a
    variable store (one per boot). `secure`: the SMM-protected flash Secure Boot needs."""

    code: str
    vars: str
    secure: bool = False


@dataclass(frozen=True)
class QemuConfig:
    kernel: str | None  # None: the firmware boots from a disk (a UKI on an ESP)
    initrd: str | None
    append: str  # kernel command line, passed through as given (see boot_append)
    drives: tuple[Drive, ...] = ()
    memory_mb: int = 1024
    cpus: int = 1
    accel: str = "auto"  # auto | tcg | kvm ("auto": kvm only if kvm_usable())
    net: bool = False  # user networking + virtio-net-pci; implied by forwards
    mac: str = "52:54:00:12:34:56"
    forwards: tuple[PortForward, ...] = ()
    qemu: str = "qemu-system-x86_64"
    firmware: Firmware | None = None  # None: QEMU's default BIOS (SeaBIOS)
    machine: str | None = None  # None: QEMU's default ("pc"); "q35" for UEFI boots
    tpm_socket: str | None = None  # control socket of a running swtpm: a TPM 2.0 (TIS)
    monitor_socket: str | None = None  # a second monitor (HMP) on this unix socket: send_keys
    # "real": the guest's clock follows the host's. "instructions" (TCG only): QEMU's -icount,
    # one guest nanosecond per executed instruction; while the guest idles (a sleep, a disk
    # read) its clock follows the host's. The work a boot does then counts the same on a busy
    # or a quiet host; only its waits take real time.
    clock: str = "real"
    extra: tuple[str, ...] = ()  # appended last


@dataclass(frozen=True)
class ConsoleLine:
    host_seconds: float  # host time since Machine.start() when the line was complete
    text: str  # without CR/LF, ANSI escape sequences stripped


def boot_append(params: Sequence[str]) -> str:
    """Join kernel parameters, adding `console=ttyS0` and `panic=-1` when missing."""
    out = [p for p in params if p]
    if not any(p == "console=ttyS0" or p.startswith("console=ttyS0,") for p in out):
        out.append("console=ttyS0")
    if not any(p.startswith("panic=") for p in out):
        out.append("panic=-1")
    return " ".join(out)


def _opt(value: str) -> str:
    """Escape a value for QEMU's comma-separated option syntax (a comma is doubled)."""
    return value.replace(",", ",,")


def _check(cfg: QemuConfig) -> None:
    def bad(message: str, hint: str = "") -> UsageError:
        return UsageError(message, location="qemu", hint=hint)

    if cfg.memory_mb <= 0 or cfg.cpus <= 0:
        raise bad(f"memory ({cfg.memory_mb} MiB) and cpus ({cfg.cpus}) must be positive")
    if cfg.accel not in ACCELS:
        raise bad(f"unknown accelerator {cfg.accel!r}", hint="use one of " + ", ".join(ACCELS))
    if cfg.clock not in CLOCKS:
        raise bad(f"unknown clock {cfg.clock!r}", hint="use one of " + ", ".join(CLOCKS))
    if not _MAC.fullmatch(cfg.mac):
        raise bad(f"invalid MAC address {cfg.mac!r}", hint="write it as 52:54:00:12:34:56")
    for d in cfg.drives:
        if not d.path:
            raise bad("drive with an empty path")
        if d.format not in FORMATS:
            raise bad(f"{d.path}: unknown format {d.format!r}", hint="use raw or qcow2")
        if d.interface not in INTERFACES:
            raise bad(f"{d.path}: unknown interface {d.interface!r}",
                      hint="use one of " + ", ".join(INTERFACES))
        if d.backing is not None and (d.format != "qcow2" or d.snapshot or d.backing_driver
                                      not in ("file", "host_device")):
            raise bad(f"{d.path}: an overlay over a read-only disk is a qcow2 drive",
                      hint="format='qcow2', backing_driver 'file' or 'host_device'")
        if d.interface == "ide" and d.readonly:
            raise bad(f"{d.path}: QEMU cannot attach a read-only IDE disk",
                      hint="use snapshot=true or another interface")
    if sum(d.interface == "ide" for d in cfg.drives) > 4:
        raise bad("more than 4 IDE disks", hint="use virtio, scsi or nvme")
    hosts = [f.host_port for f in cfg.forwards]
    for port in hosts + [f.guest_port for f in cfg.forwards]:
        if not 1 <= port <= 65535:
            raise bad(f"port {port} is out of range 1-65535")
    if len(set(hosts)) != len(hosts):
        raise bad("the same host port is forwarded twice")


def _drive_args(drives: Sequence[Drive]) -> list[str]:
    args: list[str] = []
    have_scsi = False
    for i, d in enumerate(drives):
        did = f"d{i}"
        if d.backing is not None:  # the disk read-only, the overlay in front of it
            args += ["-blockdev", f"driver={d.backing_driver},filename={_opt(d.backing)},"
                     f"node-name={did}-disk,read-only=on",
                     "-blockdev", f"driver=raw,file={did}-disk,node-name={did}-base,read-only=on",
                     "-blockdev", f"driver=qcow2,node-name={did},file.driver=file,"
                     f"file.filename={_opt(d.path)},backing={did}-base"]
        else:
            opts = [f"file={_opt(d.path)}", f"format={d.format}", "if=none", f"id={did}"]
            opts += ["readonly=on"] if d.readonly else []
            opts += ["snapshot=on"] if d.snapshot else []
            args += ["-drive", ",".join(opts)]
        serial = d.serial if d.serial is not None or d.interface != "nvme" else f"nvme{i}"
        if d.interface == "scsi":
            if not have_scsi:
                args += ["-device", "virtio-scsi-pci,id=scsi0"]
                have_scsi = True
            dev = ["scsi-hd", "bus=scsi0.0", f"drive={did}"]
        else:
            model = {"virtio": "virtio-blk-pci", "ide": "ide-hd", "nvme": "nvme"}[d.interface]
            dev = [model, f"drive={did}"]
        dev += [f"serial={_opt(serial)}"] if serial is not None else []
        args += ["-device", ",".join(dev)]
    return args


def qemu_argv(cfg: QemuConfig, *, kvm: bool) -> list[str]:
    """The qemu command line for `cfg`. Pure: looks at no file; bad settings raise UsageError."""
    _check(cfg)
    argv = [
        cfg.qemu, "-nodefaults", "-display", "none", "-no-reboot",
        "-chardev", "stdio,id=con0,mux=on,signal=off",
        "-serial", "chardev:con0", "-mon", "chardev=con0,mode=readline",
    ]  # fmt: skip
    argv += ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", TCG_CPU]
    if cfg.clock == "instructions":
        if kvm:
            raise UsageError("an instruction-counted clock needs TCG", location="qemu",
                             hint="accel='tcg', or clock='real' under KVM")
        argv += ["-icount", ICOUNT]
    fw = cfg.firmware
    if cfg.machine is not None or fw is not None:
        machine = cfg.machine or "q35"
        argv += ["-machine", f"{machine},smm=on" if fw is not None and fw.secure else machine]
    if fw is not None:
        if fw.secure:
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        argv += ["-drive", f"if=pflash,format=raw,unit=0,file={_opt(fw.code)},readonly=on",
                 "-drive", f"if=pflash,format=raw,unit=1,file={_opt(fw.vars)}"]
    argv += ["-m", str(cfg.memory_mb), "-smp", str(cfg.cpus)]
    if cfg.kernel is not None:
        argv += ["-kernel", cfg.kernel]
        argv += ["-initrd", cfg.initrd] if cfg.initrd is not None else []
        argv += ["-append", cfg.append]
    if cfg.monitor_socket is not None:
        argv += ["-monitor", f"unix:{_opt(cfg.monitor_socket)},server=on,wait=off"]
    if cfg.tpm_socket is not None:
        argv += ["-chardev", f"socket,id=chrtpm,path={_opt(cfg.tpm_socket)}",
                 "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
    argv += _drive_args(cfg.drives)
    if cfg.net or cfg.forwards:
        netdev = ["user", "id=n0"]
        netdev += [f"hostfwd=tcp:127.0.0.1:{f.host_port}-:{f.guest_port}" for f in cfg.forwards]
        argv += ["-netdev", ",".join(netdev), "-device", f"virtio-net-pci,netdev=n0,mac={cfg.mac}"]
    return argv + list(cfg.extra)


def kvm_check(cpuinfo: str, probe: Callable[[], bool]) -> bool:
    """KVM is usable if the CPU advertises vmx/svm and the probe boots a guest under it."""
    return bool(_VIRT_FLAGS.search(cpuinfo)) and probe()


def kvm_probe(qemu: str = "qemu-system-x86_64", timeout: float = KVM_PROBE_TIMEOUT) -> bool:
    """Run the firmware under `-accel kvm -cpu host` until it gives up booting (it then resets,
    and -no-reboot makes qemu exit). True if SeaBIOS saw KVM and qemu exited cleanly in time."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = [
        qemu, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "32", "-nodefaults",
        "-display", "none", "-no-reboot", "-boot", "strict=on,reboot-timeout=0",
        "-chardev", "stdio,id=dbg", "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
    ]  # fmt: skip
    try:
        proc = run(argv, input=b"", check=False, timeout=timeout)
    except CommandError:  # missing qemu, or the guest hung
        return False
    return proc.returncode == 0 and b"Running on KVM" in proc.stdout


def kvm_usable(qemu: str = "qemu-system-x86_64") -> bool:
    """Whether `-accel kvm` really runs guests here; checked once per process."""
    return kvm_verdict(qemu)[0]


@functools.cache
def kvm_verdict(qemu: str = "qemu-system-x86_64") -> tuple[bool, str]:
    """(KVM usable, why not): the reason is one line for people, "" when KVM works.
    Checked once per process."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    return judge_kvm(cpuinfo, os.path.exists("/dev/kvm"),
                     os.access("/dev/kvm", os.R_OK | os.W_OK), lambda: kvm_probe(qemu))


def judge_kvm(cpuinfo: str, exists: bool, accessible: bool, probe: Callable[[], bool]
              ) -> tuple[bool, str]:
    if not _VIRT_FLAGS.search(cpuinfo):
        return False, "the CPU shows no VT-x/AMD-V (a VM without nested virtualisation?)"
    if not exists:
        return False, "/dev/kvm does not exist (is the kvm module loaded?)"
    if not accessible:
        return False, ("/dev/kvm is not accessible to you: add yourself to the kvm group "
                       "and log in again")
    if not kvm_check(cpuinfo, probe):
        return False, "a KVM test boot did not start"
    return True, ""


def accel_line(qemu: str = "qemu-system-x86_64") -> str:
    """How guests run here, in one line."""
    usable, why = kvm_verdict(qemu)
    return "QEMU uses KVM" if usable else f"QEMU emulates the CPU (TCG, slower): {why}"


def use_kvm(cfg: QemuConfig) -> bool:
    """Resolve cfg.accel: "kvm" and "tcg" are obeyed, "auto" asks kvm_usable()."""
    if cfg.accel not in ACCELS:
        raise UsageError(f"unknown accelerator {cfg.accel!r}", hint="use auto, tcg or kvm")
    return cfg.accel == "kvm" or (cfg.accel == "auto" and kvm_usable(cfg.qemu))


def default_kernel(kver: str) -> str:
    path = Path("/boot") / f"vmlinuz-{kver}"
    if not path.is_file():
        raise UsageError(f"no kernel image at {path}",
                         hint="install linux-image-amd64 or pass --kernel")
    return readable_kernel(str(path))


def readable_kernel(path: str) -> str:
    """`path`, once it is known that QEMU (running as this user) can read it."""
    if not os.access(path, os.R_OK):
        try:
            mode = f"mode {os.stat(path).st_mode & 0o777:04o}, "
        except OSError:
            mode = ""
        raise UsageError(f"cannot read the kernel {path} ({mode}not readable by you)",
                         hint=f"sudo chmod 0644 {path} (some distributions install kernels "
                         "readable by root only), or pass --kernel with a readable copy")
    return path


def timeout_multiplier() -> float:
    """BOOTGEN_TIMEOUT_MULTIPLIER (default 1.0), a factor applied to every boot timeout."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{TIMEOUT_ENV} must be a positive number, not {raw!r}")
    return value


def _split_escape(text: str) -> tuple[str, str]:
    """Split off an escape sequence left incomplete at the end of `text`."""
    m = _ANSI_TAIL.search(text)
    cut = len(text) if m is None or len(text) - m.start() > 4096 else m.start()
    return text[:cut], text[cut:]


class Machine:
    """One qemu process and its serial console. Use it as a context manager, then call start()."""

    def __init__(self, cfg: QemuConfig, *, log_path: str | Path, name: str = "guest") -> None:
        self.cfg = cfg
        self.name = name
        self.argv: list[str] = []
        self._log_path = Path(log_path)
        self._log: BinaryIO | None = None
        self._child: pexpect.spawn | None = None
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._carry = ""  # an escape sequence cut off at the end of the last chunk
        self._partial = ""  # the line being printed
        self._pending = ""  # cleaned console text after the last match
        self._lines: list[ConsoleLine] = []
        self._eof = False
        self._t0 = 0.0
        self._status: int | None = None
        self._closed = False

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def lines(self) -> list[ConsoleLine]:
        with self._cond:
            return list(self._lines)

    @property
    def exit_status(self) -> int | None:
        """qemu's exit status once it has been collected (negative: killed by that signal)."""
        return self._status

    def start(self) -> None:
        if self._child is not None:
            raise UsageError(f"{self.name}: machine already started")
        self.argv = qemu_argv(self.cfg, kvm=use_kvm(self.cfg))
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self._log_path, "wb")  # closed by shutdown()
        self._t0 = time.monotonic()
        try:
            self._child = pexpect.spawn(self.argv[0], self.argv[1:], echo=False, timeout=None)
        except pexpect.ExceptionPexpect as e:
            self._log.close()
            self._log = None
            raise UsageError(f"cannot run {self.argv[0]}: {e}",
                             hint="install qemu-system-x86 or check QemuConfig.qemu") from e
        self._start_reader()

    def _start_reader(self) -> None:
        if self._child is None or self._eof:
            return
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_loop, args=(self._child.child_fd,),
                                        name=f"{self.name}-console", daemon=True)
        self._reader.start()

    def _stop_reader(self, drain: float = 0.0) -> None:
        """Stop the reader thread, first giving it `drain` seconds to read what is left."""
        if self._reader is not None:
            self._reader.join(drain)
            self._stop.set()
            self._reader.join()
            self._reader = None

    def _read_loop(self, fd: int) -> None:
        while not self._stop.is_set():
            if not select.select([fd], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: qemu has exited and the pty is closed
                data = b""
            self._feed(data, eof=not data)
            if not data:
                return

    def _feed(self, data: bytes, *, eof: bool = False) -> bytes:
        with self._cond:
            if data and self._log is not None:
                self._log.write(data)
                self._log.flush()
            text = self._carry + self._decoder.decode(data, final=eof)
            text, self._carry = (text, "") if eof else _split_escape(text)
            text = _CONTROL.sub("", _ANSI.sub("", text))
            now = time.monotonic() - self._t0
            self._pending += text
            *done, self._partial = (self._partial + text).split("\n")
            if eof and self._partial:
                done.append(self._partial)
                self._partial = ""
            self._lines += [ConsoleLine(now, line) for line in done]
            self._eof = self._eof or eof
            self._cond.notify_all()
        return data

    def _running(self) -> pexpect.spawn:
        if self._child is None or self._closed:
            raise UsageError(f"{self.name}: machine is not running", hint="call start() first")
        return self._child

    def _dead(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for qemu to exit; collect its status."""
        child = self._running()
        deadline = time.monotonic() + timeout
        while child.isalive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        if self._status is None:
            status = child.exitstatus
            self._status = status if status is not None else -(child.signalstatus or 0)
        return True

    def _failure(self, what: str, hint: str = "") -> BootError:
        with self._cond:
            tail = [line.text for line in self._lines[-TAIL_LINES:]]
            if self._partial:
                tail = tail[1 - TAIL_LINES :] + [self._partial]
        shown = "\n".join("  | " + t for t in tail) or "  (no console output)"
        message = (f"{what}\nconsole log: {self._log_path}\n"
                   f"last {len(tail)} console lines:\n{shown}")
        return BootError(message, location=self.name, hint=hint)

    def wait_for_console_text(self, pattern: str, timeout: float) -> re.Match[str]:
        """Search console output after the previous match for `pattern` (a regex, MULTILINE;
        ANSI escapes and CRs removed). The timeout is scaled by timeout_multiplier()."""
        try:
            regex = re.compile(pattern, re.MULTILINE)
        except re.error as e:
            raise UsageError(f"invalid console pattern {pattern!r}: {e}") from e
        self._running()
        limit = timeout * timeout_multiplier()
        deadline = time.monotonic() + limit
        with self._cond:
            while True:
                m = regex.search(self._pending)
                if m is not None:
                    self._pending = self._pending[m.end() :]
                    return m
                remaining = deadline - time.monotonic()
                if self._eof:
                    break
                if remaining <= 0:
                    raise self._failure(
                        f"timed out after {limit:g}s waiting for console text {pattern!r}",
                        hint=f"a slow host? set {TIMEOUT_ENV}=2 (or more)")
                self._cond.wait(remaining)
        self._dead(max(remaining, 2.0))
        status = "unknown" if self._status is None else str(self._status)
        raise self._failure(f"qemu exited (exit status {status}) while waiting for console "
                            f"text {pattern!r} ({limit:g}s allowed)")

    def send_console(self, text: str) -> None:
        """Type `text` on the serial console (a newline is sent as is: write "root\\n")."""
        child = self._running()
        try:
            child.send(text.encode())
        except OSError as e:
            raise self._failure(f"cannot write to the console: {e}") from e

    def send_keys(self, keys: Sequence[str], delay: float = 0.1) -> None:
        """Press keys on the emulated keyboard (QEMU key names: "a", "shift-7", "ret"), one
        at a time, through the monitor on `cfg.monitor_socket`. Keys go to the VGA/VT console,
        through the guest's keymap; the serial console never sees them."""
        if self.cfg.monitor_socket is None:
            raise UsageError(f"{self.name}: no monitor socket to type with",
                             hint="set QemuConfig.monitor_socket")
        for key in keys:
            if not _KEY.fullmatch(key):
                raise UsageError(f"{key!r} is not a QEMU key name", hint="e.g. a, shift-7, ret")
        self._running()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mon:
                mon.settimeout(10)
                mon.connect(self.cfg.monitor_socket)
                for key in keys:
                    mon.sendall(f"sendkey {key}\n".encode())
                    time.sleep(delay)
                time.sleep(0.2)  # let QEMU read the last command before the socket closes
        except OSError as e:
            raise self._failure(f"cannot type through the monitor: {e}") from e

    def wait_for_exit(self, timeout: float) -> int:
        """Wait for qemu to exit by itself (scaled timeout); return its exit status."""
        limit = timeout * timeout_multiplier()
        if self._status is not None:
            return self._status
        if not self._dead(limit):
            raise self._failure(f"qemu still running after {limit:g}s")
        self._stop_reader(drain=2.0)  # the console output that is still in the pty
        assert self._status is not None
        return self._status

    def shutdown(self) -> None:
        """Quit qemu (Ctrl-a x, then signals), collect it, close the log. Idempotent."""
        child = self._child
        if child is None or self._closed:
            return
        try:
            if child.isalive():
                try:
                    child.send(QUIT_KEYS)
                except OSError:
                    pass
                if not self._dead(1.0):
                    child.terminate(force=True)
            self._dead(5.0)
            self._stop_reader(drain=2.0)
        finally:
            self._stop_reader()
            child.close(force=True)
            with self._cond:
                if self._log is not None:
                    self._log.close()
                    self._log = None
            self._closed = True

    def interact(self) -> None:
        """Give the user's terminal to the console until qemu exits (Ctrl-a x quits qemu)."""
        child = self._running()
        if not sys.stdin.isatty():
            raise UsageError("an interactive console needs a terminal on stdin")
        self._stop_reader()  # interact() reads the pty itself; its output still goes to _feed
        try:
            child.interact(escape_character=None, output_filter=self._feed)
        finally:
            self._start_reader()  # drain what is left after qemu quit

    def __enter__(self) -> Machine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
