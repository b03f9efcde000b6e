"""Trusted-boot benchmark: what TPM2 support adds to an image, and how long unlocking takes by
TPM versus by passphrase, in both flavours.

Size: examples/luks.toml and examples/tpm2.toml (the same host, `tpm2 = true` added) built
in-process; the difference of the compressed image (what the boot loader loads) and of the raw
archive, and the files TPM2 adds.

Time: examples/tpm2.toml booted `--runs` times per flavour and mode with `bootgen verify`'s
machinery (TCG, emulated TPM): "TPM" (the TPM unlocks, no prompt) and "passphrase" (the volume
is enrolled against another PCR 7 value: the TPM refuses and the test passphrase is typed on
the serial console at once). The unlock interval is read from kernel-timestamped console lines,
i.e. guest uptime: scripted "bootgen: unlocking cryptroot" → "cryptroot unlocked…", systemd
"Found device dev-disk-by\\x2dpartlabel-cryptroot.device" (systemd-cryptsetup@ starts then)
→ "Finished systemd-cryptsetup@cryptroot.service" (booted with
`systemd.log_target=kmsg printk.devkmsg=on` so that PID 1's unit messages carry kernel
timestamps; bootgen's images are unchanged). The test volumes use PBKDF2
with 1000 iterations, so the passphrase path shows the cost of asking, not of a real key
derivation (a host-calibrated one is far slower under TCG: see docs/benchmarks.md).

    .venv/bin/python benchmarks/trusted.py --markdown
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common import (
    EXAMPLES,
    Stats,
    command_line,
    fmt_mb,
    fmt_stats,
    load_average,
    machine_facts,
    progress,
    render_facts,
    render_table,
    stats,
    warn_if_busy,
)

from bootgen.description import load
from bootgen.image.build import build, kernel_version

FLAVOURS = ("scripted", "systemd")
MODES = {"TPM": "unlock", "passphrase": "changed"}
_TS = r"\[\s*(\d+\.\d+)\] "  # a kernel timestamp, anywhere in the line (status escapes)
UNLOCK = {
    "scripted": (re.compile(_TS + r"bootgen: unlocking cryptroot"),
                 re.compile(_TS + r"bootgen: cryptroot unlocked")),
    # the encrypted device appears (systemd-cryptsetup@ starts right then) → the volume is open
    "systemd": (re.compile(_TS + r"systemd\[1\]: (?:Found device dev-disk-by\\x2dpartlabel-"
                           r"cryptroot\.device|Starting systemd-cryptsetup@cryptroot\.service)"),
                re.compile(_TS + r"systemd\[1\]: Finished systemd-cryptsetup@cryptroot\.service")),
}


def unlock_seconds(flavor: str, console: str) -> float | None:
    """Guest seconds from the start of unlocking cryptroot to the volume being open."""
    start_re, end_re = UNLOCK[flavor]
    start = end = None
    for line in console.splitlines():
        if start is None and (m := start_re.search(line)):
            start = float(m.group(1))
        elif start is not None and (m := end_re.search(line)):
            end = float(m.group(1))
            break
    return None if start is None or end is None else round(end - start, 3)


def sizes(kver: str) -> list[dict[str, object]]:
    out = []
    for flavor in FLAVOURS:
        plain = build(load(EXAMPLES / "luks.toml"), output=None, flavor=flavor, kver=kver)
        tpm = build(load(EXAMPLES / "tpm2.toml"), output=None, flavor=flavor, kver=kver)
        before = {e.path for e in plain.image.entries if e.kind == "file"}
        added = [e for e in tpm.image.entries if e.kind == "file" and e.path not in before]
        out.append({"flavor": flavor, "compressed": len(plain.packed.data),
                    "compressed_tpm2": len(tpm.packed.data),
                    "raw": plain.packed.raw_size, "raw_tpm2": tpm.packed.raw_size,
                    "files_added": len(added)})
    return out


def unlock_times(kver: str, runs: int, workdir: Path) -> dict[str, dict[str, list[float]]]:
    from bootgen.vm.verify import boot, prepare

    host = load(EXAMPLES / "tpm2.toml")
    found: dict[str, dict[str, list[float]]] = {}
    for flavor in FLAVOURS:
        prep = prepare(host, flavor, workdir, kver=kver, progress=progress)
        for label, mode in MODES.items():
            values = found.setdefault(flavor, {}).setdefault(label, [])
            for i in range(runs):
                progress(f"{flavor}, {label}: boot {i + 1} of {runs}")
                append = ["systemd.log_target=kmsg", "printk.devkmsg=on"] \
                    if flavor == "systemd" else []
                r = boot(host, prep, workdir, tpm_mode=mode, append=append)
                if not r.passed:
                    progress(f"  failed: {r.reason} (log {r.log})")
                    continue
                seconds = unlock_seconds(flavor, r.log.read_text(errors="replace"))
                if seconds is None:
                    progress(f"  no unlock interval in {r.log}")
                    continue
                values.append(seconds)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="boots per flavour and mode")
    ap.add_argument("--no-boot", action="store_true", help="sizes only")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", metavar="FILE", type=Path)
    args = ap.parse_args(argv)
    warn_if_busy()
    kver = kernel_version(load(EXAMPLES / "tpm2.toml"))
    facts = machine_facts(kver)
    progress("building examples/luks.toml and examples/tpm2.toml")
    size_rows = sizes(kver)
    times: dict[str, dict[str, list[float]]] = {}
    if not args.no_boot:
        with tempfile.TemporaryDirectory(prefix="bootgen-bench-tpm-") as tmp:
            times = unlock_times(kver, args.runs, Path(tmp))
    facts["load average at end (1/5/15 min)"] = load_average()
    md = args.markdown
    print(f"command: {command_line()}\n")
    print(render_facts(facts, markdown=md) + "\n")
    print(render_table(
        ["flavour", "luks.toml MB", "tpm2.toml MB", "added MB", "added raw MB", "files added"],
        [[str(r["flavor"]), fmt_mb(int(str(r["compressed"]))),
          fmt_mb(int(str(r["compressed_tpm2"]))),
          fmt_mb(int(str(r["compressed_tpm2"])) - int(str(r["compressed"]))),
          fmt_mb(int(str(r["raw_tpm2"])) - int(str(r["raw"]))), str(r["files_added"])]
         for r in size_rows], markdown=md))
    if times:
        print()
        rows = []
        for flavor, by_mode in times.items():
            s: dict[str, Stats | None] = {label: stats(v) for label, v in by_mode.items()}
            rows.append([flavor, fmt_stats(s.get("TPM")), fmt_stats(s.get("passphrase"))])
        print(render_table(["flavour", "unlock by TPM s", "TPM refuses → passphrase s"], rows,
                           markdown=md))
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "sizes": size_rows, "unlock": times},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
