"""Shared helpers of the benchmark scripts (build.py, boot.py).

Statistics and table formatting, the facts about the machine a run happened on, image
statistics read with bootgen's own reader, the peers' command lines (dracut, initramfs-tools)
and the builder of the hand-made minimal busybox initrd. Peers are benchmark baselines only:
bootgen itself never calls them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootgen.archive import compress, cpio
from bootgen.errors import BootgenError, CommandError
from bootgen.image import kmod
from bootgen.run import run, which

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = REPO / "examples"
MINIMAL = EXAMPLES / "minimal.toml"
HANDMADE_INIT = HERE / "handmade_init.sh"
MB = 1_000_000  # sizes are shown in decimal megabytes, like `bootgen build`

# dracut module sets comparable to bootgen's images of examples/minimal.toml
DRACUT_SYSTEMD_MODULES = "systemd systemd-initrd kernel-modules rootfs-block udev-rules base fs-lib"
DRACUT_SCRIPTED_MODULES = "kernel-modules rootfs-block udev-rules base fs-lib"
DRACUT_DRIVERS = "virtio_pci virtio_blk"

# the hand-made initrd: modules for an ext4 root on virtio (+ dependencies, in load order)
HANDMADE_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
# crc32c-intel needs SSE4.2, which QEMU's TCG CPU model lacks: its insmod fails (ENODEV)
HANDMADE_SKIP = frozenset({"crc32c_intel"})

NA = "—"


# --- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    min: float
    max: float

    def to_json(self) -> dict[str, float | int]:
        return {"n": self.n, "median": round(self.median, 3), "min": round(self.min, 3),
                "max": round(self.max, 3)}


def median(values: Sequence[float]) -> float:
    """The median; the mean of the two middle values for an even count."""
    if not values:
        raise ValueError("median of no values")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def stats(values: Sequence[float]) -> Stats | None:
    if not values:
        return None
    return Stats(len(values), median(values), min(values), max(values))


def ratio_spread(a: Stats | None, b: Stats | None) -> tuple[float, float] | None:
    """The range a ratio of two samples can take: fastest over slowest to slowest over
    fastest."""
    if a is None or b is None or a.n < 2 or b.n < 2 or not b.min:
        return None
    return a.min / b.max, a.max / b.min


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is unknown or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


# --- formatting --------------------------------------------------------------------------------


def fmt_seconds(x: float | None, digits: int = 2) -> str:
    return NA if x is None else f"{x:.{digits}f}"


def fmt_mb(n: int | None) -> str:
    return NA if n is None else f"{n / MB:.2f}"


def fmt_ratio(r: float | None) -> str:
    """"0.29×"; small ratios get one more digit ("0.013×")."""
    if r is None:
        return NA
    return f"{r:.3f}×" if r < 0.1 else f"{r:.2f}×"


def fmt_stats(s: Stats | None, digits: int = 2) -> str:
    """"1.23 (1.20–1.30)": median (min–max); just the value for one sample."""
    if s is None:
        return NA
    if s.n == 1:
        return fmt_seconds(s.median, digits)
    return (f"{fmt_seconds(s.median, digits)} "
            f"({fmt_seconds(s.min, digits)}–{fmt_seconds(s.max, digits)})")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *,
                 markdown: bool = False) -> str:
    """A markdown table, or a plain one with aligned columns (numbers right-aligned)."""
    cells = [[str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, expected {len(headers)}")
    if markdown:
        def line(row: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

        sep = ["---:" if _numeric_column(cells, i) else "---" for i in range(len(headers))]
        return "\n".join([line(headers), "|" + "|".join(sep) + "|", *map(line, cells)])
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    right = [_numeric_column(cells, i) for i in range(len(headers))]

    def plain(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(row, widths, right, strict=True)).rstrip()

    return "\n".join([plain(headers), plain(["-" * w for w in widths]), *map(plain, cells)])


_NUMBERISH = re.compile(r"^[\d.]+(×)?( \([\d.]+–[\d.]+\))?$")


def _numeric_column(rows: Sequence[Sequence[str]], i: int) -> bool:
    values = [r[i] for r in rows if r[i] != NA]
    return bool(values) and all(_NUMBERISH.match(v) for v in values)


# --- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal "value ≤ limit"; value None means it could not be measured in this run."""

    goal: str  # e.g. "scripted build ≤ 0.5 s wall"
    value: float | None
    limit: float
    shown: str  # the measured value as shown, e.g. "0.73 s" or "0.16×"
    note: str = ""
    # the value's range over the runs (a ratio's: min/max and max/min of its two samples);
    # when it straddles the limit the run cannot tell, and says so
    spread: tuple[float, float] | None = None

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        if self.spread is not None and self.spread[0] <= self.limit < self.spread[1]:
            return "undecided (spread overlaps the goal)"
        return "met" if self.value <= self.limit else "NOT MET"

    def to_json(self) -> dict[str, object]:
        return {"goal": self.goal, "value": self.value, "limit": self.limit,
                "spread": self.spread, "verdict": self.verdict, "note": self.note}


def render_targets(targets: Sequence[Target], *, markdown: bool = False) -> str:
    rows = [[t.goal, t.shown, t.verdict, t.note] for t in targets]
    return render_table(["target", "measured", "verdict", "from"], rows, markdown=markdown)


# --- facts about the run -----------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return NA
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text and out.returncode == 0 else NA


def package_version(name: str) -> str:
    """The installed Debian package version, or "not installed"."""
    if which("dpkg-query") is None:
        return NA
    v = _first_line(["dpkg-query", "-W", "-f", "${Status} ${Version}", name])
    if not v.startswith("install ok installed "):
        return "not installed"
    return v.rsplit(" ", 1)[-1]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or NA
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else platform.processor() or NA


def memory_gib() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return NA
    m = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return f"{int(m.group(1)) / 2**20:.1f} GiB" if m else NA


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return NA


def bootgen_revision() -> str:
    if which("git") is None:
        return NA
    rev = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return rev + (" (+ uncommitted changes)" if dirty != NA else "")


def compile_bytecode() -> str:
    """Byte-compile the bootgen package being measured, as installing a package does (pip,
    Debian's postinst), so that timings do not include compiling its sources: a checkout run
    with PYTHONDONTWRITEBYTECODE=1, as on the machines these numbers come from, otherwise
    compiles every module on every start (0.07 s of a warm build on 2026-12-01). Says what
    it did, for the facts."""
    import compileall

    import bootgen

    where = Path(bootgen.__file__).parent
    done = compileall.compile_dir(str(where), quiet=1)
    return "compiled (compileall, as installed)" if done else f"could not compile {where}"


def machine_facts(kver: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    facts = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "nproc": str(os.cpu_count() or NA),
        "memory": memory_gib(),
        "host kernel": platform.release(),
        "image kernel": kver,
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "python": platform.python_version(),
        "bootgen": bootgen_revision(),
        "load average at start (1/5/15 min)": load_average(),
    }
    facts.update(extra or {})
    return facts


def render_facts(facts: dict[str, str], *, markdown: bool = False) -> str:
    if markdown:
        return "\n".join(f"- {k}: {v}" for k, v in facts.items())
    width = max(len(k) for k in facts)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in facts.items())


def command_line() -> str:
    """How this script was started, e.g. ".venv/bin/python benchmarks/build.py --markdown"."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def other_qemus(proc: Path = Path("/proc")) -> int:
    """How many QEMU system emulators are running (call it while none of ours is)."""
    count = 0
    for comm in proc.glob("[0-9]*/comm"):
        try:
            count += comm.read_text().startswith("qemu-system")
        except OSError:  # the process exited meanwhile
            pass
    return count


def warn_if_busy(limit: float = 1.0) -> None:
    """Say on stderr when the machine is already busy: timings will be noisy."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    if load > limit:
        progress(f"warning: load average {load:.2f} on {os.cpu_count()} CPUs: "
                 "other work is running, timings will be noisy")


# --- running and timing commands ---------------------------------------------------------------


def bootgen_argv() -> list[str]:
    """The `bootgen` command of this Python environment (the console script beside it)."""
    script = Path(sys.executable).parent / "bootgen"
    if script.is_file():
        return [str(script)]
    found = which("bootgen")
    return [found] if found else [sys.executable, "-m", "bootgen.cli"]


@dataclass(frozen=True)
class Timed:
    seconds: float
    ok: bool
    output: str  # stdout + stderr
    error: str  # one line, "" when ok


def timed(argv: Sequence[str | Path], *, timeout: float = 900.0) -> Timed:
    """Run argv and measure its wall time; a failure is returned, never raised."""
    t0 = time.monotonic()
    try:
        proc = run(argv, check=False, timeout=timeout)
    except CommandError as e:
        return Timed(time.monotonic() - t0, False, "", e.message)
    seconds = time.monotonic() - t0
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    if proc.returncode != 0:
        tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or [""]
        return Timed(seconds, False, out, f"exit status {proc.returncode}: {tail[0][:160]}")
    return Timed(seconds, True, out, "")


_BOOTGEN_TIME = re.compile(r"^\s*time\s+(\d+(?:\.\d+)?) s\s*$", re.MULTILINE)


def bootgen_reported_seconds(output: str) -> float | None:
    """The build time `bootgen build` prints in its summary ("time 0.43 s")."""
    m = _BOOTGEN_TIME.search(output)
    return float(m.group(1)) if m else None


# --- image recipes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How to build one image with an external command."""

    name: str  # e.g. "dracut-systemd"
    tool: str  # bootgen | dracut | initramfs-tools
    flavour: str  # systemd | scripted
    what: str  # short description for the tables
    program: str  # a name looked up in PATH, or a path
    argv: Callable[[str, Path], list[str]]  # (kver, output) -> argv

    def installed(self) -> bool:
        return which(self.program) is not None or Path(self.program).is_file()


def bootgen_recipe(example: Path, flavour: str, *, cold: bool = False,
                   zstd_level: int | None = None) -> Recipe:
    """bootgen building an example; `cold`: without its segment cache (BOOTGEN_CACHE=off), i.e.
    what the very first build of a flavour on a machine costs; `zstd_level`: the example with
    `[boot] compression_level` set to it (written beside the image)."""
    def argv(kver: str, out: Path) -> list[str]:
        env = ["env", "BOOTGEN_CACHE=off"] if cold else []
        desc = example
        if zstd_level is not None:
            desc = out.parent / f"{example.stem}-zstd{zstd_level}.toml"
            text = example.read_text()
            if "\n[boot]\n" not in "\n" + text or "compression" in text:
                raise ValueError(f"{example}: no plain [boot] table to set the level in")
            desc.write_text(("\n" + text).replace(
                "\n[boot]\n", f"\n[boot]\ncompression_level = {zstd_level}\n", 1)[1:])
        return [*env, *bootgen_argv(), "build", str(desc), "-o", str(out), "--flavor",
                flavour, "--kernel-version", kver, "--manifest", str(manifest_path(out))]

    name = f"bootgen-{flavour}" if example == MINIMAL else f"bootgen-{example.stem}-{flavour}"
    name += f"-zstd{zstd_level}" if zstd_level is not None else ""
    what = f"{example.stem}.toml" + (f", zstd -{zstd_level}" if zstd_level is not None else "")
    return Recipe(name + ("-cold" if cold else ""), "bootgen", flavour,
                  what + (" (no cache)" if cold else ""), bootgen_argv()[0], argv)


def dracut_argv(kind: str, kver: str, out: Path) -> list[str]:
    """dracut for a comparable module set ("systemd", "scripted") or its generic default."""
    dracut = which("dracut") or "dracut"
    # dracut's own defaults, not the host's /etc/dracut.conf{,.d} (benchmarks/dracut.conf.d/)
    conf = ["--conf", "/dev/null", "--confdir", str(HERE / "dracut.conf.d")]
    if kind == "default":
        return [dracut, *conf, "--force", "--no-hostonly", "--kver", kver, str(out)]
    common = [*conf, "--force", "--quiet", "--no-hostonly", "--no-early-microcode", "--kver", kver]
    if kind == "systemd":
        mods = ["-m", DRACUT_SYSTEMD_MODULES]
    elif kind == "scripted":
        mods = ["-m", DRACUT_SCRIPTED_MODULES, "-o", "systemd"]
    else:
        raise ValueError(f"unknown dracut image kind {kind!r}")
    return [dracut, *common, *mods, "--drivers", DRACUT_DRIVERS, "--filesystems", "ext4",
            "--compress", "zstd", str(out)]


def mkinitramfs_argv(kver: str, out: Path) -> list[str]:
    return [which("mkinitramfs") or "mkinitramfs", "-o", str(out), kver]


PEERS: tuple[Recipe, ...] = (
    Recipe("dracut-systemd", "dracut", "systemd", "same module set", "dracut",
           lambda k, o: dracut_argv("systemd", k, o)),
    Recipe("dracut-scripted", "dracut", "scripted", "same module set", "dracut",
           lambda k, o: dracut_argv("scripted", k, o)),
    Recipe("dracut-default", "dracut", "systemd", "generic default", "dracut",
           lambda k, o: dracut_argv("default", k, o)),
    Recipe("initramfs-tools", "initramfs-tools", "scripted", "MODULES=most", "mkinitramfs",
           mkinitramfs_argv),
)


def peer(name: str) -> Recipe:
    return next(r for r in PEERS if r.name == name)


def kernel_release(kver: str | None) -> str:
    return kver or kmod.newest_kernel()


# --- image statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageStats:
    compressed: int  # bytes of the image file
    raw: int  # bytes of its cpio archives, decompressed
    entries: int  # archive members (directories, links, files, nodes)
    files: int  # regular files
    compression: str  # e.g. "zstd", "none+zstd" for an early cpio in front

    def to_json(self) -> dict[str, object]:
        return {"compressed": self.compressed, "raw": self.raw, "entries": self.entries,
                "files": self.files, "compression": self.compression}


def image_stats(data: bytes) -> ImageStats:
    """Sizes and counts of any initrd, read with bootgen's own reader."""
    segments = compress.read_image(data)
    raw = 0
    for seg in segments:
        if seg.compression == "none":
            raw += seg.end - seg.offset
        else:
            raw += len(compress.decompress_stream(data, seg.offset)[1])
    members = [m for seg in segments for m in seg.members]
    return ImageStats(len(data), raw, len(members), sum(m.is_file for m in members),
                      "+".join(dict.fromkeys(s.compression for s in segments)))


def manifest_path(image: Path) -> Path:
    """Where a bootgen recipe writes the manifest of its image."""
    return image.with_name(image.name + ".json")


def manifest_stats(image_bytes: int, manifest: dict[str, Any]) -> ImageStats:
    """Sizes and counts of a bootgen image from its manifest: what pack recorded, nothing
    decompressed again. Entries count paths (each once)."""
    segments = manifest["segments"]
    raw = manifest["early_bytes"] + sum(s["raw_bytes"] for s in segments) \
        + manifest["secrets_bytes"]
    rows = manifest["entries"]
    kinds = ["none"] * bool(manifest["early_bytes"]) + [manifest["compression"]]
    return ImageStats(image_bytes, raw, len(rows), sum(r["kind"] == "file" for r in rows),
                      "+".join(dict.fromkeys(kinds)))


def try_image_stats(path: Path) -> tuple[ImageStats | None, str]:
    """Stats of any initrd; a bootgen image with its manifest beside it is not read again."""
    try:
        manifest = manifest_path(path)
        if manifest.is_file():
            stats = manifest_stats(path.stat().st_size, json.loads(manifest.read_text()))
            manifest.unlink()
            return stats, ""
        return image_stats(path.read_bytes()), ""
    except (OSError, BootgenError, ValueError, KeyError) as e:
        return None, str(getattr(e, "message", e))


# --- the hand-made busybox initrd --------------------------------------------------------------


def parse_show_depends(text: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """Module files from `modprobe --show-depends` output, in load order, each once.

    Lines are "insmod /lib/modules/.../x.ko [params]" (or "builtin x", ignored)."""
    out: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "insmod":
            path = words[1]
            if kmod.modname(path) not in skip and path not in out:
                out.append(path)
    return out


def handmade_module_files(kver: str, names: Sequence[str] = HANDMADE_MODULES,
                          skip: frozenset[str] = HANDMADE_SKIP) -> list[str]:
    modprobe = which("modprobe")
    if modprobe is None:
        raise CommandError("modprobe not found", hint="install kmod")
    files: list[str] = []
    for name in names:
        proc = run([modprobe, "-S", kver, "--show-depends", name])
        for path in parse_show_depends(proc.stdout.decode(errors="replace"), skip):
            if path not in files:
                files.append(path)
    return files


def busybox_applets(busybox: Path) -> list[str]:
    """Applet paths relative to / ("bin/sh", "sbin/insmod", ...) from `busybox --list-full`."""
    out = run([str(busybox), "--list-full"]).stdout.decode()
    return sorted({ln.strip().lstrip("/") for ln in out.splitlines() if ln.strip()})


def handmade_members(init: bytes, busybox: bytes, applets: Sequence[str],
                     modules: Sequence[tuple[str, bytes]]) -> list[cpio.Member]:
    """The archive: /init, /bin/busybox and its applet links, /lib/modules/NN-<name>.ko
    numbered in load order (so that a shell glob lists them in that order), a console node
    and the mount points."""
    members = [
        cpio.Member("init", stat.S_IFREG | 0o755, init),
        cpio.Member("bin/busybox", stat.S_IFREG | 0o755, busybox),
        cpio.Member("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    ]
    members += [cpio.Member(d, stat.S_IFDIR | 0o755) for d in ("proc", "sys", "dev", "newroot")]
    members += [cpio.Member(a, stat.S_IFLNK | 0o777, b"/bin/busybox")
                for a in applets if a not in ("bin/busybox", "init")]
    if len(modules) > 99:
        raise ValueError("more than 99 modules")
    members += [cpio.Member(f"lib/modules/{i:02d}-{name}.ko", stat.S_IFREG | 0o644, data)
                for i, (name, data) in enumerate(modules, start=1)]
    return members


def build_handmade(kver: str, out: Path, *, busybox: Path | None = None) -> list[str]:
    """Write the hand-made initrd (zstd newc) to `out`; return its modules in load order."""
    from bootgen.vm.disks import find_busybox

    bb = busybox or find_busybox()
    files = handmade_module_files(kver)
    modules = [(kmod.modname(f), Path(f).read_bytes()) for f in files]
    members = handmade_members(HANDMADE_INIT.read_bytes(), bb.read_bytes(),
                               busybox_applets(bb), modules)
    data = compress.compress(cpio.write_newc(members), "zstd")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return [name for name, _ in modules]
