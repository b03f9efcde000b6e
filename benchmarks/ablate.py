"""Where the systemd stage one's time goes: boot variants of one image and compare.

Every variant is the systemd image of examples/minimal.toml with one thing changed — a kernel
parameter that masks a unit, a unit that repeats some work, the same files compressed another way
— booted on the same test disks as `benchmarks/boot.py` boots them, under the instruction clock
(QEMU -icount: one guest nanosecond per instruction, real time while it waits), so that a
difference of a few hundredths of a second is the variant's and not the host's. The table gives
each variant's guest uptime at the real root's init and its difference to the unchanged image:
what that part of stage one costs (a masked unit: what it saves; a repeated step: what one more
costs; a compression: what unpacking costs before /init).

    .venv/bin/python benchmarks/ablate.py --markdown            # ~15 boots, ~15 min here
    .venv/bin/python benchmarks/ablate.py --only base,none,lz4  # some variants
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from boot import Image, boot_once
from common import (
    MINIMAL,
    Stats,
    bootgen_recipe,
    command_line,
    fmt_mb,
    fmt_stats,
    kernel_release,
    machine_facts,
    progress,
    render_facts,
    render_table,
    stats,
    timed,
)

from bootgen import description as config
from bootgen.archive import compress
from bootgen.errors import BootgenError
from bootgen.vm import qemu
from bootgen.vm.diskbuild import build_disks

REPEAT = 20  # how many times a repeated step runs


def repeat_unit(command: str, after: str = "") -> str:
    """A description fragment: a unit in initrd.target that runs `command` REPEAT times."""
    loop = f"i=0; while [ $i -lt {REPEAT} ]; do {command} >/dev/null; i=$((i+1)); done"
    return unit_fragment("bench.service", "[Unit]\nDefaultDependencies=no\n" + after
                         + "[Service]\nType=oneshot\nExecStart=/bin/sh -c '" + loop + "'\n",
                         wants=True)


def unit_fragment(name: str, text: str, *, wants: bool = False) -> str:
    """A [systemd] table adding one unit (or drop-in) `name` with `text`."""
    out = f"\n[systemd]\nunits = {{ {json.dumps(name)} = {json.dumps(text)} }}\n"
    return out + (f"wants = [{json.dumps(name)}]\n" if wants else "")


NOT_IN_INITRD = ("tty", "vc", "mem", "memory", "workqueue", "bdi", "msr", "cpuid",
                 "event_source", "clockevents", "clocksource", "machinecheck")


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    params: tuple[str, ...] = ()  # extra kernel parameters
    description: str = ""  # appended to examples/minimal.toml
    recompress: tuple[str, int | None] | None = None  # the base image's cpio, compressed so


VARIANTS = (
    Variant("base", "the systemd image of minimal.toml, unchanged"),
    Variant("no-journald", "journald and its sockets masked",
            ("systemd.mask=systemd-journald.service", "systemd.mask=systemd-journald.socket",
             "systemd.mask=systemd-journald-dev-log.socket")),
    Variant("no-tmpfiles", "systemd-tmpfiles-setup and -setup-dev masked",
            ("systemd.mask=systemd-tmpfiles-setup.service",
             "systemd.mask=systemd-tmpfiles-setup-dev.service")),
    Variant("no-modules-load", "systemd-modules-load masked (udev and mount load them)",
            ("systemd.mask=systemd-modules-load.service",)),
    Variant("no-fsck", "fsck.mode=skip", ("fsck.mode=skip",)),
    Variant("udev-1-worker", "udev.children_max=1", ("udev.children_max=1",)),
    Variant("coldplug-less", "udev-trigger skips " + ", ".join(NOT_IN_INITRD),
            description=unit_fragment(
                "systemd-udev-trigger.service.d/ablate.conf",
                "[Service]\nExecStart=\nExecStart=-udevadm trigger --type=all --action=add "
                "--prioritized-subsystem=module,block,tpmrm,net,tty,input "
                + " ".join(f"--subsystem-nomatch={s}" for s in NOT_IN_INITRD) + "\n")),
    Variant("+coldplug", "one more coldplug pass (udevadm trigger --action=add --settle)",
            description=unit_fragment(
                "bench.service", "[Unit]\nDefaultDependencies=no\nAfter=systemd-udevd.service "
                "systemd-udev-trigger.service\n[Service]\nType=oneshot\nExecStart=udevadm "
                "trigger --type=devices --action=add --settle\n", wants=True)),
    Variant("+20 true", f"a unit running `true` {REPEAT} times (the loop's own cost)",
            description=repeat_unit("true")),
    Variant("+20 systemctl", f"{REPEAT} x `systemctl --version` (an exec of a systemd binary)",
            description=repeat_unit("systemctl --version")),
    Variant("none", "the same files uncompressed", recompress=("none", None)),
    Variant("lz4", "the same files, lz4 -9 (legacy format)", recompress=("lz4", 9)),
    Variant("zstd-3", "the same files, zstd -3", recompress=("zstd", 3)),
    Variant("xz", "the same files, xz -9", recompress=("xz", 9)),
)
NAMES = tuple(v.name for v in VARIANTS)


@dataclass
class Result:
    variant: Variant
    size: int = 0
    error: str = ""
    uptimes: list[float] = field(default_factory=list)

    def stats(self) -> Stats | None:
        return stats(self.uptimes)


def build(v: Variant, base: Path, kver: str, work: Path) -> Path:
    """The image for variant `v` (`base` for the variants that only change parameters)."""
    if v.recompress is not None:
        data, raw, pos = base.read_bytes(), b"", 0
        while (pos := compress.skip_zeros(data, pos)) < len(data):
            _, out, pos = compress.decompress_stream(data, pos)
            raw += out
        method, level = v.recompress
        out = work / f"{v.name}.img"
        out.write_bytes(compress.compress(raw, method, level))
        return out
    if not v.description:
        return base
    desc = work / f"{v.name.replace(' ', '-')}.toml"
    desc.write_text(MINIMAL.read_text() + v.description)
    return build_systemd(desc, kver, desc.with_suffix(".img"))


def build_systemd(desc: Path, kver: str, out: Path) -> Path:
    """`bootgen build` of desc's systemd image, as the boot benchmark builds it."""
    res = timed(bootgen_recipe(desc, "systemd").argv(kver, out))
    if not res.ok:
        raise BootgenError(f"building {desc.name}: {res.error}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="variants: " + ", ".join(NAMES))
    ap.add_argument("--runs", type=int, default=1,
                    help="boots per variant (default 1: the instruction clock repeats itself "
                         "to a few hundredths)")
    ap.add_argument("--only", metavar="NAME,...", help="these variants (base is always booted)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", metavar="FILE", type=Path)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)
    chosen = list(VARIANTS)
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = sorted(names - set(NAMES))
        if unknown:
            ap.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(NAMES)}")
        chosen = [v for v in VARIANTS if v.name in names or v.name == "base"]
    kver = kernel_release(None)
    kernel = qemu.default_kernel(kver)
    host = config.load(MINIMAL)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bootgen-ablate-"))
    work.mkdir(parents=True, exist_ok=True)
    facts = machine_facts(kver, {"guest clock": f"instructions (-icount {qemu.ICOUNT}), "
                                                f"TCG -cpu {qemu.TCG_CPU}, 1 CPU, 1024 MiB"})
    built, testroot = build_disks(host, work)
    drives = tuple(qemu.Drive(str(d.path), serial=d.spec.serial, snapshot=True) for d in built)
    try:
        base = build_systemd(MINIMAL, kver, work / "base.img")
    except BootgenError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    results = [Result(v) for v in chosen]
    images: dict[str, Path] = {}
    for r in results:
        try:
            images[r.variant.name] = build(r.variant, base, kver, work)
            r.size = images[r.variant.name].stat().st_size
        except BootgenError as e:
            r.error = e.message
    for run in range(1, args.runs + 1):
        for r in results:
            if r.error:
                continue
            img = Image(r.variant.name, r.variant.what, (), path=images[r.variant.name],
                        size=r.size)
            b, _ = boot_once(host, img, f"{r.variant.name.replace(' ', '-')}-{run}", drives,
                             testroot, kernel, work, ["quiet", *r.variant.params], 180,
                             "instructions")
            if b.passed and b.guest is not None:
                r.uptimes.append(b.guest)
            else:
                r.error = f"FAILED: {b.reason} (log {b.log})"
            progress(f"{r.variant.name} run {run}: "
                     + (f"{b.guest:.2f} s" if b.passed and b.guest else r.error))
    ref = results[0].stats()
    rows = []
    for r in results:
        s = r.stats()
        delta = f"{s.median - ref.median:+.2f}" if s and ref and r is not results[0] else ""
        rows.append([r.variant.name, r.variant.what, fmt_mb(r.size), fmt_stats(s), delta,
                     r.error or "ok"])
    print(render_facts(facts, markdown=args.markdown))
    print()
    print(render_table(["variant", "what", "image MB", "real init, guest s", "vs base s",
                        "status"], rows, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps({
            "command": command_line(), "facts": facts,
            "variants": [{"name": r.variant.name, "what": r.variant.what, "size": r.size,
                          "uptimes": r.uptimes, "error": r.error} for r in results]},
            indent=1) + "\n")
    return 0 if all(not r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
