"""Stage `verify`: prove that a host description boots.

Builds the initrd, builds (or reuses) disk images that mirror the described layout, boots the
real kernel in QEMU against them and waits for the test root's verdict line, which carries a
random per-run token: a pass cannot come from anywhere but the real root's init.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..config.schema import Host
from ..errors import BootError, BootgenError, UsageError
from ..features import systemd
from ..features.console import CONSOLE
from ..features.console import KEYMAP as KEYMAP_PATH
from ..features.uki import UKI
from ..image import keymap
from ..image.build import BuildResult, build, kernel_version
from ..progress import Progress
from . import disks, firmware, qemu, timeline, tpm
from .diskbuild import build_disks
from .luksdisk import TEST_PASSPHRASE
from .stack import needs_helper
from .stackbuild import build_stack

BOOT_TIMEOUT = 240.0  # seconds, before BOOTGEN_TIMEOUT_MULTIPLIER
RESULT = re.compile(r"BOOTGEN-RESULT token=(\S+) disk=(\S+) init=(\S+) root=(\S+) "
                    r"mounts=(\S+) verdict=(PASS|FAIL) net=(\S+) detail=(\S+)[ \t]*\n")
# (whole lines only: a line cut mid-transfer must not match)
# Lines that mean stage one gave up: stop waiting for the full timeout.
FAILED = (r"bootgen: stage one failed.*", r"Kernel panic - not syncing.*",
          r"You are in emergency mode.*", r"Cannot open access to console.*",
          *firmware.REFUSED)
REFUSED = re.compile("|".join(firmware.REFUSED))
# The jobs PID 1 gave up on (systemctl --failed, which the emergency drop-in prints, omits them)
SYSTEMD_JOB_FAILED = re.compile(r"systemd\[1\]: (Timed out waiting for device .*|"
                                r"Failed to (?:start|mount) .*)")
BREAK = r"bootgen: break at (\S+)"
# Passphrase prompts of both flavours (the scripted init; systemd-tty-ask-password-agent).
PROMPT = re.compile(r"enter the passphrase for \S+|Please enter passphrase for disk[^\n]*")
PIN_PROMPT = re.compile(r"enter the TPM2 PIN for \S+|Please enter TPM2 PIN:")
# How a boot of a description with TPM2 volumes goes: the TPM unlocks them without a prompt;
# enrolled against other PCR values, the TPM refuses and the passphrase is asked; no TPM at
# all, the passphrase is asked after a bounded wait; a signed UKI booted with Secure Boot
# turned off changes PCR 7, the TPM refuses and the passphrase is asked.
TPM_MODES = ("unlock", "changed", "absent", "secure-boot-off")
TYPING_DELAY = 1.5  # seconds between a prompt on the serial line and typing on the VT



@dataclass(frozen=True)
class BootResult:
    flavor: str
    passed: bool
    reason: str  # "" when passed
    log: Path
    image: Path
    image_size: int
    build_seconds: float
    wall_seconds: float  # host seconds from QEMU start to the verdict (or failure)
    stages: dict[str, timeline.Mark] = field(default_factory=dict)
    result: dict[str, str] = field(default_factory=dict)  # fields of the BOOTGEN-RESULT line
    tail: tuple[str, ...] = ()  # last console lines, for failures
    prompts: int = 0  # passphrase prompts answered on the console
    spans: tuple[timeline.Span, ...] = ()  # units or steps of stage one (timeline.spans)
    variant: str = ""  # what this boot proves besides booting: "TPM unlock", "UKI", ...

    def to_json(self) -> dict[str, object]:
        return {
            "flavor": self.flavor, "passed": self.passed, "reason": self.reason,
            "log": str(self.log), "image": str(self.image), "image_size": self.image_size,
            "build_seconds": round(self.build_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "stages": {s: {"guest": m.guest, "host": m.host} for s, m in self.stages.items()},
            "result": self.result, "prompts": self.prompts, "variant": self.variant,
        }


def default_workdir(host: Host) -> Path:
    return paths.cache_dir("verify", Path(host.source).stem)


def expected_init(host: Host, append: Sequence[str]) -> str:
    init = host.boot.init
    for p in [*host.boot.kernel_params, *append]:
        if p.startswith("init="):
            init = p[len("init="):]
    return os.path.basename(init)


def kernel_params(host: Host, token: str, append: Sequence[str]) -> str:
    params = [*host.boot.kernel_params, *append, f"bootgen.token={token}"]
    if CONSOLE.of(host).keymap and not any(p.startswith("console=tty") and
                                           not p.startswith("console=ttyS") for p in params):
        params.insert(0, "console=tty1")  # a VT to type on: the keymap applies there only
    return qemu.boot_append(params)


def typing_keymap(prep: Prepared) -> bytes | None:
    """The binary keymap of the image under test when it loads one: passphrases are then typed
    as key presses on the VT, through that keymap (None: typed on the serial console)."""
    if prep.build is None:
        return None
    entry = next((e for e in prep.build.image.entries if e.path == KEYMAP_PATH), None)
    return entry.data if entry is not None else None


@dataclass(frozen=True)
class UkiBoot:
    """Boot a unified kernel image under OVMF from an ESP instead of -kernel/-initrd.

    Secure Boot is enforced when the description signs ([uki] sign_key/sign_cert): the
    variable store trusts the description's certificate (PK, KEK and db). `sign=False` leaves
    the UKI unsigned and `tamper=True` flips a byte of its .initrd after signing: both must be
    refused by the firmware."""

    sign: bool = True
    tamper: bool = False
    secure_boot: bool = True  # False: the same firmware with Secure Boot off (setup mode)


def uki_params(host: Host, token: str, append: Sequence[str]) -> list[str]:
    """The embedded command line of a test UKI: [uki] cmdline, the test parameters."""
    params = [*UKI.of(host).cmdline, *host.boot.kernel_params, *append, f"bootgen.token={token}"]
    return qemu.boot_append(list(dict.fromkeys(params))).split(" ")


def uki_machine(host: Host, prep: Prepared, workdir: Path, token: str, append: Sequence[str],
                how: UkiBoot) -> tuple[qemu.Firmware, qemu.Drive]:
    """The UKI of the image under test (signed as the description says, unless `how` says
    otherwise), its ESP and the firmware for one boot."""
    if prep.build is None:
        raise UsageError("a UKI boot needs an image bootgen built")
    return firmware.uki_machine(host, prep.build.packed.data, prep.build.image.spec.kver,
                                uki_params(host, token, append), workdir, prep.flavor,
                                sign=how.sign, tamper=how.tamper,
                                secure_boot=how.secure_boot)


def qemu_config(host: Host, prep: Prepared, append: str,
                forwards: Sequence[qemu.PortForward] = ()) -> qemu.QemuConfig:
    """The VM for a host: its disks, and user-mode networking when the host has a network
    (the first interface's MAC when the description matches by MAC)."""
    macs = [i.mac.lower() for i in host.network.interfaces if i.mac]
    return qemu.QemuConfig(kernel=prep.kernel, initrd=str(prep.image), append=append,
                           drives=prep.drives, net=host.network.enable or bool(forwards),
                           mac=macs[0] if macs else qemu.QemuConfig.mac,
                           forwards=tuple(forwards))


@dataclass(frozen=True)
class Prepared:
    """An image and disks ready to boot."""

    flavor: str
    image: Path
    image_size: int
    build_seconds: float
    drives: tuple[qemu.Drive, ...]
    testroot: disks.TestRoot
    kernel: str
    build: BuildResult | None = None  # None for an image bootgen did not build
    tpm: tpm.Enrolled | None = None  # test volumes enrolled in an emulated TPM


def prepare(host: Host, flavor: str, workdir: Path, *, kernel: str | None = None,
            kver: str | None = None, cache_dir: Path | None = None,
            progress: Progress | None = None, uki: bool = False) -> Prepared:
    """Build the image and the test disks; with TPM2 volumes, enroll them in an emulated TPM
    (for UKI boots under OVMF when `uki`: the bound PCRs differ between the two ways)."""
    workdir.mkdir(parents=True, exist_ok=True)
    version = kernel_version(host, kver)
    kernel = qemu.readable_kernel(kernel) if kernel else qemu.default_kernel(version)
    image = workdir / f"{flavor}.img"
    if needs_helper(host):
        built, testroot = build_stack(host, workdir, kver=version, kernel=kernel,
                                      cache_dir=cache_dir, progress=progress)
    else:
        built, testroot = build_disks(host, workdir, cache_dir=cache_dir, progress=progress)
    # A detached LUKS header cannot be reproduced from the description's file: the test disks
    # come with their own, and the image under test carries that one instead.
    headers = {name: str(path) for d in built for name, path in d.headers.items()}
    if headers:
        host = host.with_section("luks", tuple(
            dataclasses.replace(lk, header=headers.get(lk.name, lk.header)) for lk in host.luks))
    if progress:
        progress(f"{flavor}: building the initrd")
    r = build(host, output=image, flavor=flavor, kver=version,
              manifest_path=workdir / f"{flavor}.json")
    drives = tuple(qemu.Drive(str(d.path), serial=d.spec.serial, snapshot=True) for d in built)
    enrolled = None
    if any(lk.tpm2 for lk in host.luks):
        uefi = None
        if uki:
            def start(initrd: bytes, params: list[str], folder: Path
                      ) -> tuple[qemu.Firmware, qemu.Drive]:
                return firmware.uki_machine(host, initrd, version, params, folder, "enroll")

            uefi = (firmware.uefi_identity(host), start)
        enrolled = tpm.enroll(host, built, version, kernel, progress=progress,
                              cache=cache_dir / "tpm" if cache_dir else None, uefi=uefi)
    return Prepared(flavor, image, len(r.packed.data), r.seconds, drives, testroot, kernel, r,
                    enrolled)


def boot(host: Host, prep: Prepared, workdir: Path, *, append: Sequence[str] = (),
         timeout: float = BOOT_TIMEOUT, progress: Progress | None = None,
         passphrases: Sequence[str] = (TEST_PASSPHRASE,), uki: UkiBoot | None = None,
         tpm_mode: str = "unlock", clock: str = "real") -> BootResult:
    """Boot a prepared image once and judge the test root's verdict. Passphrase prompts are
    answered with `passphrases` in order (the last one repeats): the test disks' LUKS volumes
    open with TEST_PASSPHRASE. With `uki`, OVMF boots a unified kernel image from an ESP.
    With TPM2 volumes (`prep.tpm`), `tpm_mode` is one of TPM_MODES: "unlock" must pass
    without a prompt, "changed" and "absent" only after the passphrase was asked. `clock` is
    qemu.QemuConfig.clock ("instructions": the guest's uptime counts its work, for benchmarks)."""
    if tpm_mode not in TPM_MODES:
        raise UsageError(f"unknown TPM mode {tpm_mode!r}", hint=", ".join(TPM_MODES))
    token = secrets.token_hex(8)
    cfg = qemu_config(host, prep, kernel_params(host, token, append))
    if clock != "real":  # counting instructions needs TCG
        cfg = dataclasses.replace(cfg, clock=clock, accel="tcg")
    variant = "UKI" if uki is not None else ""
    emulated: tpm.Swtpm | None = None
    name = prep.flavor
    if prep.tpm is not None and prep.tpm.uefi != (uki is not None):
        raise UsageError("the test volumes were enrolled for " + (
            "UKI boots" if prep.tpm.uefi else "-kernel boots") + ", this boot is not one",
            hint="prepare(..., uki=True) for UKI boots")
    if tpm_mode == "secure-boot-off":
        u = UKI.of(host)
        if uki is None or u.sign_key is None or u.sign_cert is None:
            raise UsageError("Secure Boot can be turned off only in UKI boots of a description "
                             "that signs", hint="set [uki] sign_key and sign_cert")
        uki = dataclasses.replace(uki, secure_boot=False)
    if prep.tpm is not None:
        variant = {"unlock": "TPM unlock", "changed": "TPM refuses: other PCR values",
                   "absent": "no TPM", "secure-boot-off": "TPM refuses: Secure Boot off"
                   }[tpm_mode] + (", UKI" if uki is not None else "")
        name = f"{prep.flavor}-tpm-{tpm_mode}"
        drives = prep.tpm.changed if tpm_mode == "changed" else prep.tpm.good
        if drives is None:
            raise UsageError("the TPM2 volumes are bound to no PCR: no PCR value can change",
                             hint="set tpm2_pcrs")
        cfg = dataclasses.replace(cfg, drives=drives)
        if tpm_mode != "absent":
            emulated = tpm.Swtpm(prep.tpm.state, workdir / f"{name}-swtpm.log").start()
            cfg = dataclasses.replace(cfg, tpm_socket=emulated.socket)
    bmap = typing_keymap(prep)
    sockets = Path(tempfile.mkdtemp(prefix="bootgen-mon-")) if bmap is not None else None
    if sockets is not None:
        # a VGA card: the VTs get a real console driver (vgacon), which loads fonts
        cfg = dataclasses.replace(cfg, monitor_socket=str(sockets / "monitor.sock"),
                                  extra=(*cfg.extra, "-device", "VGA"))
        variant = ", ".join(v for v in (variant, f"typed on the keyboard "
                                        f"({CONSOLE.of(host).keymap})") if v)
    try:
        if uki is not None:
            fw, esp = uki_machine(host, prep, workdir, token, append, uki)
            cfg = dataclasses.replace(cfg, kernel=None, initrd=None, append="", firmware=fw,
                                      machine="q35", drives=(*cfg.drives, esp))
        result = _boot(host, prep, cfg, workdir / f"{name}.log", token, append, timeout,
                       progress, passphrases, bmap)
    finally:
        if emulated is not None:
            emulated.stop()
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)
    result = dataclasses.replace(result, variant=variant)
    if prep.tpm is not None and result.passed:
        if tpm_mode == "unlock" and result.prompts:
            return dataclasses.replace(result, passed=False, reason="the TPM did not unlock "
                                       "the volume: stage one asked for the passphrase")
        if tpm_mode != "unlock" and not result.prompts:
            return dataclasses.replace(result, passed=False, reason="no passphrase was asked, "
                                       "although the TPM cannot unlock the volume")
    return result


def _boot(host: Host, prep: Prepared, cfg: qemu.QemuConfig, log: Path, token: str,
          append: Sequence[str], timeout: float, progress: Progress | None,
          passphrases: Sequence[str], bmap: bytes | None = None) -> BootResult:
    if progress:
        progress(f"{prep.flavor}: booting in QEMU (console log: {log})")
    reason = ""
    result: dict[str, str] = {}
    prompts = pins = 0
    machine = qemu.Machine(cfg, log_path=log, name=f"{prep.flavor} boot")
    try:
        machine.start()
        waiting = "|".join([RESULT.pattern, *FAILED, PROMPT.pattern, PIN_PROMPT.pattern])
        while True:
            m = machine.wait_for_console_text(waiting, timeout)
            if PIN_PROMPT.fullmatch(m.group(0)) and pins < 5:
                machine.send_console(tpm.TEST_PIN + "\n")
                pins += 1
                continue
            if not PROMPT.fullmatch(m.group(0)) or prompts >= 10:
                break
            answer = passphrases[min(prompts, len(passphrases) - 1)]
            if bmap is None:
                machine.send_console(answer + "\n")
            else:  # the prompt shows on every console: give the VT's reader time to start
                time.sleep(TYPING_DELAY * qemu.timeout_multiplier())
                machine.send_keys([*keymap.keys_for(answer, bmap), "ret"])
            prompts += 1
        found = RESULT.search(m.group(0))
        if found is None and REFUSED.fullmatch(m.group(0)):
            reason = f"the firmware refused the image: {m.group(0).strip()}"
        elif found is None:
            reason = _failure(machine, _whole_line(machine, m.group(0)))
        else:
            keys = ("token", "disk", "init", "root", "mounts", "verdict", "net", "detail")
            result = dict(zip(keys, found.groups(), strict=True))
            reason = _judge(result, token, prep.testroot, expected_init(host, append))
            try:
                machine.wait_for_exit(30)
            except BootError:
                pass
    except BootError as e:
        reason = e.message.splitlines()[0]
    finally:
        machine.shutdown()
    lines = machine.lines
    wall = lines[-1].host_seconds if lines else 0.0
    return BootResult(prep.flavor, not reason, reason, log, prep.image, prep.image_size,
                      prep.build_seconds, wall, timeline.marks(lines), result,
                      tuple(line.text for line in lines[-40:]), prompts,
                      tuple(timeline.spans(lines)))


def _whole_line(machine: qemu.Machine, start: str) -> str:
    """The console line a pattern matched the start of: the match may end where the output
    read so far ends, in the middle of the line (bounded wait for the rest)."""
    try:
        return (start + machine.wait_for_console_text(r"[^\n]*\n", 10).group(0)).strip()
    except BootError:
        return start.strip()  # the machine stopped mid-line: what arrived


def _failure(machine: qemu.Machine, line: str) -> str:
    """Why stage one gave up, from its console: the systemd flavour lists its failed units after
    the line that stopped the wait, so read on to the end of that list (bounded), then name them
    with the jobs that timed out or failed, which `systemctl --failed` does not list."""
    if not line.startswith(systemd.FAILED_HEADER):
        return f"stage one failed: {line}"
    try:
        machine.wait_for_console_text(re.escape(systemd.FAILED_FOOTER), 30)
    except BootError:
        pass  # the list is cut short; say what arrived
    texts = [ln.text for ln in machine.lines]
    units = [t.split()[1] for t in texts
             if t.startswith(systemd.FAILED_UNIT_PREFIX) and len(t.split()) > 1]
    jobs = list(dict.fromkeys(m.group(1).rstrip(".") for t in texts
                              if (m := SYSTEMD_JOB_FAILED.search(t))))
    said = "; ".join([*jobs, f"failed units: {', '.join(units) or 'none'}"])
    return f"stage one failed: {said}"


def _judge(result: dict[str, str], token: str, testroot: disks.TestRoot, init: str) -> str:
    if result["token"] != token:
        return f"the verdict carries token {result['token']}, not this run's {token}"
    if result["disk"] != testroot.disk_id:
        return f"the root that booted is not the test disk (disk id {result['disk']})"
    if result["init"] != init:
        return f"the real root ran {result['init']}, expected {init}"
    if result["verdict"] != "PASS":
        return f"the test root found mounts={result['mounts']}"
    return ""


def verify(host: Host, flavors: Sequence[str], *, workdir: Path | None = None,
           kernel: str | None = None, kver: str | None = None, append: Sequence[str] = (),
           cache_dir: Path | None = None, progress: Progress | None = None,
           uki: UkiBoot | None = None, clock: str = "real") -> list[BootResult]:
    """Build and boot each flavour; boots run in parallel (one QEMU per flavour)."""
    work = workdir or default_workdir(host)
    if progress:
        progress(qemu.accel_line())
    prepared = [prepare(host, f, work, kernel=kernel, kver=kver, cache_dir=cache_dir,
                        progress=progress, uki=uki is not None) for f in flavors]
    results: list[BootResult | None] = [None] * len(prepared)

    def run(i: int) -> None:
        results[i] = boot(host, prepared[i], work, append=append, progress=progress, uki=uki,
                          clock=clock)

    def run_modes(i: int) -> list[BootResult]:
        enrolled = prepared[i].tpm
        u = UKI.of(host)
        modes = ["unlock"] + (["changed"] if enrolled and enrolled.changed else []) + (
            ["secure-boot-off"] if uki is not None and u.sign_key and u.sign_cert else [])
        return [boot(host, prepared[i], work, append=append, progress=progress, uki=uki,
                     tpm_mode=mode, clock=clock) for mode in modes]

    if any(p.tpm is not None for p in prepared):
        by_flavor: list[list[BootResult]] = [[] for _ in prepared]

        def run_tpm(i: int) -> None:
            by_flavor[i] = run_modes(i)

        in_parallel([functools.partial(run_tpm, i) for i in range(len(prepared))])
        return [r for rs in by_flavor for r in rs]
    in_parallel([functools.partial(run, i) for i in range(len(prepared))])
    return [r for r in results if r is not None]


def in_parallel(jobs: Sequence[Callable[[], None]]) -> None:
    """Run jobs in threads (one QEMU each); re-raise the first error in the caller's thread."""
    errors: list[BaseException] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        if isinstance(errors[0], BootgenError):
            raise errors[0]
        raise BootError(f"boot driver failed: {errors[0]!r}") from errors[0]


def shell(host: Host, flavor: str, stage: str, *, workdir: Path | None = None,
          kernel: str | None = None, kver: str | None = None, append: Sequence[str] = (),
          cache_dir: Path | None = None, progress: Progress | None = None,
          before_interact: Callable[[], None] | None = None) -> int:
    """Boot to a breakpoint and hand the console to the user; return QEMU's exit status."""
    if progress:
        progress(qemu.accel_line())
    work = workdir or default_workdir(host)
    prep = prepare(host, flavor, work, kernel=kernel, kver=kver, cache_dir=cache_dir,
                   progress=progress)
    token = secrets.token_hex(8)
    params = [*append, f"rd.break={stage}"]
    cfg = qemu_config(host, prep, kernel_params(host, token, params))
    if progress:
        progress(f"{flavor}: booting to rd.break={stage}; Ctrl-a x quits QEMU")
    with qemu.Machine(cfg, log_path=work / f"{flavor}-shell.log", name="shell") as machine:
        machine.start()
        machine.wait_for_console_text(BREAK, BOOT_TIMEOUT)
        if before_interact:
            before_interact()
        machine.interact()
        return machine.wait_for_exit(10)
