"""`bootgen verify --host-disks` / `--disk`: boot the new image against this machine's own disks,
read-only behind copy-on-write overlays, in verification mode (features/hostverify.py): stage
one does everything up to the switch root, checks the real root, prints one verdict line and
powers off. The real system's init never runs; nothing is ever written to a disk.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config.schema import Host
from ..errors import BootError, UsageError, printable
from ..features import provided, references
from ..features.common import VERIFY_PARAM
from ..features.luks import LUKS
from ..features.lvm import mapper_name
from ..image.build import build, kernel_version
from ..progress import Progress
from . import hostdisks, qemu, timeline
from .verify import BOOT_TIMEOUT, FAILED, PIN_PROMPT, PROMPT, BootResult, kernel_params

VERDICT = re.compile(r"BOOTGEN-HOSTVERIFY: (PASS|FAIL) (token=\S+.*?)[ \t]*\n")
DEVICES = re.compile(r"BOOTGEN-HOSTVERIFY-DEVICES: token=(\S+) present=(.*)")
FIELD = re.compile(r'(\w+)=("[^"]*"|\S*)')
ENTRY = re.compile(r"([^,\[\]]+)\[([^\]]*)\]")
MAX_PROMPTS = 10
IN_USE = ("{path} is a disk of this running machine: what the VM reads is a snapshot taken while "
          "it is in use, which may be inconsistent (a journal not yet written out); harmless, "
          "the overlay absorbs every write and the disk is opened read-only")

# Ask the user for a passphrase: (prompt, asked again after a wrong one) -> answer, None: no
# answer (the boot fails at that prompt).
Ask = Callable[[str, bool], str | None]


def unescape(text: str) -> str:
    """A value the guest printed with bytes outside its safe set as \\xNN, as text (shown later
    with errors.printable, which escapes control characters again)."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                 text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


def parse_fields(text: str) -> dict[str, str]:
    return {k: unescape(v[1:-1] if v.startswith('"') else v) for k, v in FIELD.findall(text)}


def parse_devices(text: str) -> dict[str, dict[str, str]]:
    """`present=` of the devices line: name -> {TYPE, UUID, LABEL, PARTUUID, PARTLABEL, DM}."""
    out: dict[str, dict[str, str]] = {}
    for name, ids in ENTRY.findall(text):
        kv = (x.split("=", 1) for x in ids.split(";") if "=" in x)
        out[unescape(name)] = {k: unescape(v) for k, v in kv}
    return out


def present(ref: str, devices: dict[str, dict[str, str]]) -> bool | None:
    """Whether reference `ref` names one of the guest's devices (None: cannot tell)."""
    for prefix in ("UUID=", "PARTUUID="):
        if ref.startswith(prefix):
            want = ref[len(prefix):].lower()
            return any(d.get(prefix[:-1], "").lower() == want for d in devices.values())
    for prefix in ("LABEL=", "PARTLABEL="):
        if ref.startswith(prefix):
            return any(d.get(prefix[:-1]) == ref[len(prefix):] for d in devices.values())
    if ref.startswith("/dev/mapper/"):
        return any(d.get("DM") == ref[len("/dev/mapper/"):] for d in devices.values())
    parts = ref.split("/")
    if len(parts) == 4 and parts[1] == "dev" and parts[2] not in ("disk", "md"):
        return any(d.get("DM") == mapper_name(parts[2], parts[3]) for d in devices.values())
    if len(parts) == 3 and parts[1] == "dev":
        return parts[2] in devices
    return None


def describe_devices(devices: dict[str, dict[str, str]]) -> str:
    out = []
    for name, ids in devices.items():
        words = " ".join(f"{k}={v}" for k, v in ids.items() if k != "TYPE")
        kind = ids.get("TYPE", "no filesystem")
        out.append(f"{name} ({kind}{', ' + words if words else ''})")
    return "; ".join(out) or "none"


def explain(host: Host, fields: dict[str, str], devices: dict[str, dict[str, str]] | None,
            wrong: bool) -> tuple[str, str]:
    """(stage, why) of a FAIL verdict."""
    why = fields.get("reason", "")
    stage = fields.get("stage", "stage")
    refs = references(host)
    made = provided(host, refs)
    unmade: list[str] = []
    if devices is not None:
        gone = [(key, ref) for key, ref in refs
                if ref not in made and present(ref, devices) is False]
        unmade = sorted({f"{ref} (by {made[ref][1]})" for _, ref in refs
                         if ref in made and present(ref, devices) is False})
        # a filesystem inside a device that was not created cannot appear: that one is news
        members = [g for g in gone if not g[0].startswith(hostdisks.MAY_BE_STACKED)]
        if (members or (gone and not unmade)) and not wrong:
            names = ", ".join(f"{ref} ({key})" for key, ref in gone)
            return "devices", (f"never appeared: {names}; the devices that did: "
                               f"{describe_devices(devices)} ({why})")
    if wrong or "cryptsetup" in why or "unlock" in why:
        return "unlock", ("wrong passphrase: it was asked again; " if wrong else "") + why
    if unmade:
        return "open", f"not created in stage one: {', '.join(unmade)} ({why})"
    if "init " in why and "not an executable" in why:
        return "init", why
    if stage == "stage" and ("mount" in why or ".mount" in why):
        return "mount", why
    return stage, why


def host_verify(host: Host, flavors: Sequence[str], *, disks: Sequence[str] | None = None,
                dev: Path = Path("/dev"), sys: Path = Path("/sys"), workdir: Path,
                kernel: str | None = None, kver: str | None = None,
                append: Sequence[str] = (), progress: Progress | None = None,
                ask: Ask | None = None, timeout: float = BOOT_TIMEOUT,
                image: Path | None = None) -> list[BootResult]:
    """Build the image of each flavour (or take `image`, built before, of the one flavour) and
    boot it in verification mode against `disks` (paths of block devices or image files) or,
    when None, the disks the description's devices are on (`hostdisks.host_disks`). One boot
    at a time, each with fresh overlays."""
    say = progress or (lambda _: None)
    if image is not None and (len(flavors) != 1 or not image.is_file()
                              or not os.access(image, os.R_OK)):
        raise UsageError(f"{image}: not a readable image file" if len(flavors) == 1 else
                         "an image built before is of one flavour", location="--image",
                         hint="name its flavour with --flavor scripted or systemd")
    if disks is None:
        found = hostdisks.host_disks(host, dev, sys)
        for f in found.found:
            say(f"{f.ref} ({f.key}) is {f.node} on {', '.join(f.disks)}")
        for key, ref in found.hidden:
            say(f"{ref} ({key}) is not visible on this machine (inside a device stage one "
                "opens?): stage one will look for it")
        paths = list(found.disks)
    else:
        paths = list(disks)
    if not paths:
        raise UsageError("no disk to boot", location="--disk")
    attached = hostdisks.attach(paths, sys)
    for a in attached:
        if a.block:
            say("warning: " + IN_USE.format(path=a.path))
    for lk in LUKS.of(host):
        if lk.tpm2:
            say(f"[[luks]] '{lk.name}' is bound to this machine's TPM2, which cannot follow into "
                "the VM: stage one falls back to asking for the passphrase")
    workdir.mkdir(parents=True, exist_ok=True)
    version = kernel_version(host, kver)
    kernel = qemu.readable_kernel(kernel) if kernel else qemu.default_kernel(version)
    say(qemu.accel_line())
    results = []
    answers: dict[str, str] = {}
    for flavor in flavors:
        path, seconds = image, 0.0
        if path is None:
            path = workdir / f"host-{flavor}.img"
            say(f"{flavor}: building the initrd")
            seconds = build(host, output=path, flavor=flavor, kver=version,
                            manifest_path=workdir / f"host-{flavor}.json").seconds
        with tempfile.TemporaryDirectory(prefix="bootgen-overlays-", dir=workdir) as tmp:
            drives = hostdisks.overlays(attached, Path(tmp))
            result = boot(host, flavor, path, kernel, drives, workdir / f"host-{flavor}.log",
                          append=append, progress=progress, ask=ask, answers=answers,
                          timeout=timeout)
        results.append(dataclasses.replace(result, build_seconds=seconds))
    return results


def boot(host: Host, flavor: str, image: Path, kernel: str, drives: Sequence[qemu.Drive],
         log: Path, *, append: Sequence[str] = (), progress: Progress | None = None,
         ask: Ask | None = None, answers: dict[str, str] | None = None,
         timeout: float = BOOT_TIMEOUT) -> BootResult:
    """One boot in verification mode; the verdict judged. `answers` remembers passphrases
    between boots (by prompt)."""
    answers = {} if answers is None else answers
    token = secrets.token_hex(8)
    params = kernel_params(host, token, [*append, VERIFY_PARAM, "noresume"])
    macs = [i.mac.lower() for i in host.network.interfaces if i.mac]
    cfg = qemu.QemuConfig(kernel=kernel, initrd=str(image), append=params, drives=tuple(drives),
                          net=host.network.enable, mac=macs[0] if macs else qemu.QemuConfig.mac,
                          machine="q35" if any(d.interface == "ide" for d in drives) else None)
    if progress:
        progress(f"{flavor}: booting in verification mode (console log: {log})")
    reason, fields, prompts, wrong = "", {}, 0, False
    asked: dict[str, int] = {}
    machine = qemu.Machine(cfg, log_path=log, name=f"{flavor} host-disk boot")
    try:
        machine.start()
        waiting = "|".join([VERDICT.pattern, *FAILED, PROMPT.pattern, PIN_PROMPT.pattern])
        while True:
            m = machine.wait_for_console_text(waiting, timeout)
            text = m.group(0).strip()
            if not (PROMPT.fullmatch(text) or PIN_PROMPT.fullmatch(text)):
                break
            again = asked.get(text, 0) > 0
            wrong = wrong or (again and PROMPT.fullmatch(text) is not None)
            asked[text] = asked.get(text, 0) + 1
            answer = answers.get(text) if not again else None
            if answer is None and ask is not None and prompts < MAX_PROMPTS:
                answer = ask(text, again)
            if answer is None:
                reason = f"stage one asks for a passphrase and none was given: {text}"
                break
            answers[text] = answer
            machine.send_console(answer + "\n")
            prompts += 1
        found = VERDICT.search(m.group(0)) if not reason else None
        if found is None and not reason:  # a verdict may follow the failure message
            try:
                found = VERDICT.search(machine.wait_for_console_text(VERDICT.pattern, 15)
                                       .group(0))
            except BootError:
                found = None
        if found is None and not reason:
            reason = f"stage one failed before its verdict: {m.group(0).strip()}"
        elif found is not None:
            fields = {"verdict": found.group(1), **parse_fields(found.group(2))}
            reason = judge(host, fields, token, machine.lines, wrong)
            try:
                machine.wait_for_exit(30)
            except BootError:
                reason = reason or "the machine did not power off after the verdict"
    except BootError as e:
        reason = e.message.splitlines()[0]
    finally:
        machine.shutdown()
    lines = machine.lines
    stages = timeline.marks(lines)
    if "uptime" in fields:
        try:
            stages["verdict"] = timeline.Mark("verdict", float(fields["uptime"]),
                                              lines[-1].host_seconds if lines else 0.0, "")
        except ValueError:
            pass
    wall = lines[-1].host_seconds if lines else 0.0
    return BootResult(flavor, not reason, printable(reason), log, image, image.stat().st_size,
                      0.0, wall, stages, fields, tuple(line.text for line in lines[-40:]),
                      prompts, tuple(timeline.spans(lines)), variant="host disks")


def judge(host: Host, fields: dict[str, str], token: str, lines: Sequence[qemu.ConsoleLine],
          wrong: bool) -> str:
    """"" for a PASS of this run; else why not, naming the stage that stopped."""
    if fields.get("token") != token:
        return f"the verdict carries token {fields.get('token')}, not this run's {token}"
    if fields["verdict"] == "PASS":
        return ""
    devices = None
    for line in lines:
        m = DEVICES.search(line.text)
        if m and m.group(1) == token:
            devices = parse_devices(m.group(2))
    stage, why = explain(host, fields, devices, wrong)
    return f"stage one stopped at {stage}: {why}"
