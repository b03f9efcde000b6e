"""Build benchmark: how long `bootgen build` takes and how big its images are, versus dracut
and initramfs-tools building comparable images on the same machine, in the same run.

Every build is a subprocess timed by its wall clock (Python start-up included for bootgen):
bootgen `--runs` times per image (default 3), the peers `--peer-runs` times (default 1).
Sizes and file counts are read back from the images with bootgen's own initrd reader.

    .venv/bin/python benchmarks/build.py --markdown
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    EXAMPLES,
    MINIMAL,
    NA,
    PEERS,
    ImageStats,
    Recipe,
    Stats,
    Target,
    bootgen_recipe,
    bootgen_reported_seconds,
    command_line,
    compile_bytecode,
    fmt_mb,
    fmt_ratio,
    fmt_seconds,
    fmt_stats,
    kernel_release,
    load_average,
    machine_facts,
    other_qemus,
    package_version,
    progress,
    ratio,
    render_facts,
    render_table,
    render_targets,
    stats,
    timed,
    try_image_stats,
    warn_if_busy,
)

from bootgen.errors import BootgenError

FLAVOURS = ("systemd", "scripted")
BUILD_TIMEOUT = 900.0

# (bootgen image, peer image) pairs compared in the ratio table
PAIRS = (
    ("bootgen-systemd", "dracut-systemd"),
    ("bootgen-systemd", "dracut-default"),
    ("bootgen-systemd", "initramfs-tools"),
    ("bootgen-scripted", "dracut-scripted"),
    ("bootgen-scripted", "initramfs-tools"),
)


@dataclass
class Row:
    recipe: Recipe
    runs: int
    seconds: list[float] = field(default_factory=list)
    reported: list[float] = field(default_factory=list)  # bootgen's own "time" line
    image: ImageStats | None = None
    error: str = ""
    contended: int = 0  # runs with another QEMU running just before or after

    @property
    def name(self) -> str:
        return self.recipe.name

    def wall(self) -> Stats | None:
        return stats(self.seconds)

    def own(self) -> Stats | None:
        return stats(self.reported)

    def to_json(self) -> dict[str, object]:
        w, o = self.wall(), self.own()
        return {"name": self.name, "tool": self.recipe.tool, "flavour": self.recipe.flavour,
                "what": self.recipe.what, "runs": self.runs,
                "seconds": [round(s, 3) for s in self.seconds],
                "wall": w.to_json() if w else None,
                "bootgen_reported": o.to_json() if o else None,
                "image": self.image.to_json() if self.image else None, "error": self.error,
                "contended_runs": self.contended}


def recipes(include_peers: bool) -> list[Recipe]:
    out = [bootgen_recipe(MINIMAL, f) for f in FLAVOURS]
    out += [bootgen_recipe(MINIMAL, f, cold=True) for f in FLAVOURS]
    # what a lower level buys on the first build, and costs in size (docs/benchmarks.md)
    out += [bootgen_recipe(MINIMAL, "systemd", cold=True, zstd_level=n) for n in (12, 16)]
    others = sorted(p for p in EXAMPLES.glob("*.toml") if p != MINIMAL)
    out += [bootgen_recipe(p, f) for p in others for f in FLAVOURS]
    return out + (list(PEERS) if include_peers else [])


def measure(row: Row, kver: str, out: Path) -> None:
    r = row.recipe
    if not r.installed():
        row.error = "not installed"
        progress(f"{r.name}: {r.program} not installed")
        return
    if r.tool == "bootgen" and not r.name.endswith("-cold"):
        # untimed: the first build after bootgen or the host changed fills the segment cache,
        # which the "-cold" rows measure; these rows measure the builds after it
        progress(f"{r.name}: warm-up build (fills the segment cache when it is empty)")
        warm = timed(r.argv(kver, out), timeout=BUILD_TIMEOUT)
        if not warm.ok:
            row.error = f"build failed: {warm.error or 'no image written'}"
            progress(f"{r.name} warm-up: {row.error}")
            return
    for i in range(1, row.runs + 1):
        out.unlink(missing_ok=True)
        before = other_qemus()
        res = timed(r.argv(kver, out), timeout=BUILD_TIMEOUT)
        busy = bool(before or other_qemus())
        row.contended += busy
        if not res.ok or not out.is_file():
            row.error = f"build failed: {res.error or 'no image written'}"
            progress(f"{r.name} run {i}/{row.runs}: {row.error}")
            return
        row.seconds.append(res.seconds)
        own = bootgen_reported_seconds(res.output) if r.tool == "bootgen" else None
        if own is not None:
            row.reported.append(own)
        progress(f"{r.name} run {i}/{row.runs}: {res.seconds:.2f} s"
                 + (" (another QEMU was running)" if busy else ""))
    row.image, why = try_image_stats(out)
    if row.image is None:
        row.error = f"unreadable image: {why}"
    out.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Time `bootgen build` against dracut and initramfs-tools on this machine "
                    "and compare image sizes.")
    ap.add_argument("--runs", type=int, default=3, help="builds per bootgen image (default 3)")
    ap.add_argument("--peer-runs", type=int, default=1,
                    help="builds per dracut/initramfs-tools image (default 1)")
    ap.add_argument("--no-peers", action="store_true", help="only time bootgen")
    ap.add_argument("--only", metavar="NAME,...", help="only these images (comma-separated)")
    ap.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    ap.add_argument("--markdown", action="store_true",
                    help="print the tables as markdown (for docs/benchmarks.md)")
    ap.add_argument("--kernel-version", metavar="KVER", help="default: the newest installed")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.peer_runs < 1:
        ap.error("--runs and --peer-runs must be at least 1")
    chosen = recipes(not args.no_peers)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        known = {r.name for r in recipes(True)}
        unknown = [n for n in names if n not in known]
        if unknown:
            ap.error(f"unknown image {unknown[0]!r}; choose from {', '.join(sorted(known))}")
        chosen = [r for r in recipes(True) if r.name in names]
    try:
        kver = kernel_release(args.kernel_version)
    except BootgenError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    warn_if_busy()
    facts = machine_facts(kver, {
        "dracut": package_version("dracut-core"),
        "initramfs-tools": package_version("initramfs-tools"),
        "bootgen bytecode": compile_bytecode(),
    })
    rows = [Row(r, args.runs if r.tool == "bootgen"
                else args.peer_runs) for r in chosen]
    with tempfile.TemporaryDirectory(prefix="bootgen-bench-build-") as tmp:
        for row in rows:
            measure(row, kver, Path(tmp) / f"{row.name}.img")
    facts["load average at end (1/5/15 min)"] = load_average()
    by = {row.name: row for row in rows}
    print(render(rows, facts, args))
    if args.json:
        args.json.write_text(json.dumps({
            "command": command_line(), "facts": facts,
            "rows": [row.to_json() for row in rows],
            "ratios": [ratios_json(by, a, b) for a, b in PAIRS if a in by and b in by],
            "targets": [t.to_json() for t in targets(by)],
        }, indent=1) + "\n")
    failed = [row for row in rows if row.error and row.error != "not installed"]
    return 1 if any(r.recipe.tool == "bootgen" for r in failed) else 0


def _median(s: Stats | None) -> float | None:
    return s.median if s else None


def _size(row: Row | None, raw: bool = False) -> int | None:
    if row is None or row.image is None:
        return None
    return row.image.raw if raw else row.image.compressed


def pair_ratios(by: dict[str, Row], a: str, b: str
                ) -> tuple[float | None, float | None, float | None]:
    """bootgen / peer for the median build time, the image size and the raw size."""
    return (ratio(_median(by[a].wall()), _median(by[b].wall())),
            ratio(_size(by[a]), _size(by[b])), ratio(_size(by[a], True), _size(by[b], True)))


def ratios_json(by: dict[str, Row], a: str, b: str) -> dict[str, object]:
    t, s, r = pair_ratios(by, a, b)
    return {"bootgen": a, "peer": b, "time": t, "size": s, "raw": r}


def targets(by: dict[str, Row]) -> list[Target]:
    def wall(name: str) -> float | None:
        row = by.get(name)
        return _median(row.wall()) if row else None

    def secs(x: float | None) -> str:
        return NA if x is None else f"{x:.2f} s"

    def mb(n: int | None) -> str:
        return NA if n is None else f"{fmt_mb(n)} MB"

    out = []
    for ours in ("bootgen-systemd", "bootgen-systemd-cold"):
        for peer in ("dracut-systemd", "dracut-default"):
            r = ratio(wall(ours), wall(peer))
            label = " (no segment cache)" if ours.endswith("-cold") else ""
            out.append(Target(f"systemd build ≤ 1/20 of {peer}{label}", r, 1 / 20,
                              fmt_ratio(r), f"median {secs(wall(ours))} / {secs(wall(peer))}"))
    w = wall("bootgen-systemd")
    out.append(Target("systemd build ≤ 0.6 s wall (issue 15)", w, 0.6, secs(w),
                      "median wall time of the `bootgen build` process, segment cache warm"))
    r = ratio(wall("bootgen-systemd-cold"), wall("dracut-systemd"))
    out.append(Target("systemd first build ≤ 0.5× dracut-systemd (issue 15)", r, 0.5,
                      fmt_ratio(r), f"{secs(wall('bootgen-systemd-cold'))} / "
                      f"{secs(wall('dracut-systemd'))}, no segment cache"))
    for ours in ("bootgen-scripted", "bootgen-scripted-cold"):
        w = wall(ours)
        label = " (no segment cache)" if ours.endswith("-cold") else ""
        out.append(Target(f"scripted build ≤ 0.5 s wall{label}", w, 0.5, secs(w),
                          "median wall time of the `bootgen build` process"))
    s = _size(by.get("bootgen-scripted"))
    out.append(Target("scripted image ≤ 3 MB", s / 1e6 if s else None, 3.0, mb(s),
                      "compressed image"))
    s = _size(by.get("bootgen-systemd"))
    out.append(Target("systemd image ≤ 8 MB", s / 1e6 if s else None, 8.0, mb(s),
                      "compressed image"))
    d = _size(by.get("dracut-default"))
    r = ratio(s, d)
    out.append(Target("systemd image ≤ 1/3 of dracut's default", r, 1 / 3, fmt_ratio(r),
                      f"{mb(s)} / {mb(d)}"))
    return out


def render(rows: list[Row], facts: dict[str, str], args: argparse.Namespace) -> str:
    md = args.markdown
    by = {row.name: row for row in rows}
    table = render_table(
        ["image", "tool", "flavour", "what", "runs", "build s: median (min–max)",
         "bootgen's own s", "size MB", "format", "raw MB", "entries", "files", "status"],
        [[row.name, row.recipe.tool, row.recipe.flavour, row.recipe.what, str(len(row.seconds)),
          fmt_stats(row.wall()), fmt_seconds(_median(row.own())), fmt_mb(_size(row)),
          row.image.compression if row.image else NA, fmt_mb(_size(row, True)),
          str(row.image.entries) if row.image else NA,
          str(row.image.files) if row.image else NA, row.error or "ok"] for row in rows],
        markdown=md)
    pair_rows = []
    for a, b in PAIRS:
        if a in by and b in by:
            pair_rows.append([f"{a} / {b}", *map(fmt_ratio, pair_ratios(by, a, b))])
    ratio_table = render_table(["bootgen / peer", "build time", "size", "raw size"], pair_rows,
                               markdown=md)
    parts = [("Build time and image size", table)]
    parts += [("Ratios", ratio_table)] if pair_rows else []
    parts += [("Targets", render_targets(targets(by), markdown=md))]
    runs = (f"bootgen {args.runs} run(s) per image, after an untimed warm-up build (the "
            f"\"-cold\" rows: each without the segment cache), peers {args.peer_runs}; wall "
            "time of the whole command (Python start-up included for bootgen); other QEMUs "
            f"running just before or after {sum(r.contended for r in rows)} of the "
            f"{sum(len(r.seconds) for r in rows)} builds")
    if md:
        body = "\n\n".join(f"**{title}**\n\n{t}" for title, t in parts)
        return (f"`{command_line()}`\n\n{runs}.\n\n{render_facts(facts, markdown=True)}\n\n"
                f"{body}")
    body = "\n\n".join(f"== {title}\n{t}" for title, t in parts)
    return f"command: {command_line()}\n{runs}\n\n{render_facts(facts)}\n\n{body}"


if __name__ == "__main__":
    sys.exit(main())
