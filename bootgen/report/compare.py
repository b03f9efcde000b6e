"""`bootgen compare`: scripted or systemd for this host?

Builds both flavours, boots each N times in QEMU against the same synthetic disks and puts the
numbers side by side: build time, sizes, contents, time to each stage of stage one (median and
min–max over the boots), plus what the feature registry says differs between the two.

Everything but `compare()` is pure and works on BootResults and host descriptions, so it can be
tested without booting. Definitions used in the table:

- image size: bytes of the image file (what the boot loader loads); raw size: bytes of its cpio
  archives after decompression.
- files: regular files in the image (as `bootgen build` counts them).
- ELF programs: executable regular files whose content is ELF, except shared objects (file name
  containing ".so": libraries and the dynamic loader). Scripts are not counted.
- stage times: guest uptime when the console shows the stage (bootgen.timeline); median and
  spread over the boots that reached the stage, failed boots included up to where they stopped.
"""

from __future__ import annotations

import functools
import posixpath
import statistics
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import FLAVORS, Host
from ..errors import UsageError
from ..features import NAMES, by_name
from ..image.build import BuildResult, kernel_version
from ..image.plan import plan
from ..image.spec import ImageSpec
from ..progress import Progress
from ..vm import qemu, timeline
from ..vm.verify import (
    BOOT_TIMEOUT,
    BootResult,
    Prepared,
    boot,
    default_workdir,
    in_parallel,
    prepare,
)
from . import svg

# stage -> table row; "kernel" (the first console line, ~0 s) is left out of the table
TIMED = (("init", "to /init"), ("root device", "to root found"),
         ("root mounted", "to root mounted"), ("switch root", "to switch_root"),
         ("real init", "to real init"))


@dataclass(frozen=True)
class ImageStats:
    build_seconds: float
    size: int  # bytes of the image file
    raw_size: int  # bytes of its cpio archives, decompressed
    files: int
    programs: int  # ELF programs, see the module docstring
    modules: int


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    n: int  # boots that reached the stage


@dataclass(frozen=True)
class FlavorReport:
    flavor: str
    stats: ImageStats
    runs: tuple[BootResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs)

    @property
    def stages(self) -> dict[str, Spread | None]:
        return stage_spreads(self.runs)


@dataclass(frozen=True)
class FeatureNote:
    """A feature that applies to one flavour only, or to both with different contributions."""

    name: str
    doc: str
    flavors: tuple[str, ...]  # the flavours it applies to
    # both flavours: (kind, item) that only this flavour's contribution has, sorted
    only_in: Mapping[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Comparison:
    host: str  # the description's name (file stem)
    runs: int
    kver: str
    flavors: tuple[FlavorReport, ...]
    features: tuple[FeatureNote, ...]
    clock: str = "real"  # the guests' clock: qemu.CLOCKS

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.flavors)


# --- image numbers ------------------------------------------------------------------------


def is_program(name: str, mode: int, elf: bool) -> bool:
    return bool(mode & 0o111) and elf and ".so" not in posixpath.basename(name)


def image_stats(r: BuildResult) -> ImageStats:
    """Numbers for one image, from what the build recorded (nothing is read again)."""
    packed = r.packed
    files = [e for e in r.image.entries if e.kind == "file"]
    programs = sum(1 for e in files if is_program(e.path, e.mode, packed.files[e.path].elf))
    raw = len(packed.early) + packed.raw_size + len(packed.secrets)
    return ImageStats(r.seconds, len(packed.data), raw, len(files), programs,
                      len(r.image.modules))


# --- aggregation ------------------------------------------------------------------------


def spread(values: Sequence[float]) -> Spread | None:
    if not values:
        return None
    return Spread(statistics.median(values), min(values), max(values), len(values))


def stage_spreads(runs: Sequence[BootResult]) -> dict[str, Spread | None]:
    """Per stage (timeline.STAGES order), guest uptime over the boots that reached it."""
    return {s: spread([r.stages[s].guest for r in runs if s in r.stages])
            for s in timeline.STAGES}


def medians(report: FlavorReport) -> dict[str, float]:
    return {s: sp.median for s, sp in report.stages.items() if sp is not None}


# --- feature difference -----------------------------------------------------------------


KINDS = ("program", "hook", "file", "symlink", "library", "module", "directory", "device node",
         "user", "group")
SHOWN = 4  # items listed per kind in the table; the JSON lists them all


def spec_items(spec: ImageSpec) -> dict[str, set[tuple[str, str]]]:
    """What each feature of a plan adds: feature -> (kind, path or name) pairs, kinds from
    KINDS."""
    out: dict[str, set[tuple[str, str]]] = {f: set() for f in spec.features}

    def add(feature: str, kind: str, item: str) -> None:
        out.setdefault(feature, set()).add((kind, item))

    for p in spec.programs:
        add(p.feature, "program", p.name)
    for lib in spec.libraries:
        add(lib.feature, "library", lib.name)
    for f in spec.files:
        add(f.feature, "file", f.target or f.source)
    for g in spec.generated:
        add(g.feature, "file", g.path)
    for h in spec.hooks:
        add(h.feature, "hook", f"{h.point}: {h.template}")
    for s in spec.symlinks:
        add(s.feature, "symlink", s.path)
    for d in spec.dirs:
        add(d.feature, "directory", d.path)
    for n in spec.devnodes:
        add(n.feature, "device node", n.path)
    for m in spec.modules:
        add(m.feature, "module", m.name)
    for u in spec.users:
        add(u.feature, "user", u.name)
    for gr in spec.groups:
        add(gr.feature, "group", gr.name)
    return out


def feature_difference(host: Host, kver: str, flavors: Sequence[str] = FLAVORS
                       ) -> tuple[FeatureNote, ...]:
    """From the plans of each flavour: features that apply to some flavours and not others,
    and features that apply to all of them but contribute different things."""
    items = {f: spec_items(plan(host, flavor=f, kver=kver)) for f in flavors}
    notes = []
    for name in NAMES:
        applies = tuple(f for f in flavors if name in items[f])
        if not applies:
            continue
        doc = by_name(name).doc
        if len(applies) < len(flavors):
            notes.append(FeatureNote(name, doc, applies, {}))
            continue
        mine = {f: items[f][name] for f in flavors}
        only = {f: tuple(sorted(mine[f] - set().union(*(mine[g] for g in flavors if g != f)),
                                key=lambda it: (KINDS.index(it[0]), it[1])))
                for f in flavors}
        if any(only.values()):
            notes.append(FeatureNote(name, doc, applies, {f: v for f, v in only.items() if v}))
    return tuple(notes)


# --- output -----------------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def spread_text(sp: Spread | None, runs: int) -> str:
    if sp is None:
        return "—"
    text = f"{sp.median:.2f} s"
    if sp.n > 1:
        text += f" ({sp.low:.2f}–{sp.high:.2f})"
    if sp.n < runs:
        text += f" [{sp.n}/{runs}]"
    return text


def _boots_text(r: FlavorReport) -> str:
    failed = sum(1 for run in r.runs if not run.passed)
    if failed:
        return f"FAILED {failed} of {len(r.runs)}"
    return f"{len(r.runs)}/{len(r.runs)} passed"


def table(c: Comparison) -> str:
    """The comparison as text: one table, failures, then the feature difference."""
    image: list[tuple[str, list[str]]] = [
        ("", [r.flavor for r in c.flavors]),
        ("build time", [f"{r.stats.build_seconds:.2f} s" for r in c.flavors]),
        ("image size", [_mb(r.stats.size) for r in c.flavors]),
        ("raw size (cpio)", [_mb(r.stats.raw_size) for r in c.flavors]),
        ("files", [str(r.stats.files) for r in c.flavors]),
        ("ELF programs", [str(r.stats.programs) for r in c.flavors]),
        ("kernel modules", [str(r.stats.modules) for r in c.flavors]),
        ("boots", [_boots_text(r) for r in c.flavors]),
    ]
    spreads = [r.stages for r in c.flavors]
    timed = [(label, [spread_text(s[stage], c.runs) for s in spreads]) for stage, label in TIMED]
    first = max(len(label) for label, _ in image + timed) + 3
    widths = [max(len(cells[i]) for _, cells in image + timed) + 3
              for i in range(len(c.flavors))]

    def line(label: str, cells: list[str]) -> str:
        return (label.ljust(first)
                + "".join(x.ljust(w) for x, w in zip(cells, widths, strict=True))).rstrip()

    boots = f"{c.runs} boot{'s' if c.runs > 1 else ''}"
    lines = [f"{c.host}: systemd vs scripted stage one, {boots} each in QEMU (kernel {c.kver})",
             "", *(line(label, cells) for label, cells in image),
             "guest uptime" + (" (instruction clock: 1 ns per instruction)"
                               if c.clock == "instructions" else "")
             + ", median (min–max) over the boots; [n/N]: only n boots got there",
             *(line(label, cells) for label, cells in timed)]
    for r in c.flavors:
        for i, run in enumerate(r.runs, 1):
            if not run.passed:
                lines.append(f"FAILED {r.flavor} boot {i}/{len(r.runs)}: {run.reason} "
                             f"(console log: {run.log})")
    lines += ["", "ELF programs: executable ELF files in the image, shared objects (*.so*) "
              "not counted.", "", *feature_lines(c.features, [r.flavor for r in c.flavors])]
    return "\n".join(lines) + "\n"


def feature_lines(notes: Sequence[FeatureNote], flavors: Sequence[str]) -> list[str]:
    lines = ["features (from the registry, for this description):"]
    if not notes:
        return [*lines, "  no difference"]
    for f in flavors:
        only = [n for n in notes if n.flavors == (f,)]
        for n in only:
            lines.append(f"  only {f}: {n.name} — {n.doc}")
    both = [n for n in notes if n.only_in]
    if both:
        lines.append("  in both flavours, by different means:")
    for n in both:
        lines.append(f"    {n.name} — {n.doc}")
        for f, items in n.only_in.items():
            lines += textwrap.wrap(f"{f} only: " + items_text(items), width=98,
                                   initial_indent="      ", subsequent_indent="        ",
                                   break_on_hyphens=False)
    return lines


def _short(kind: str, item: str) -> str:
    if kind == "hook":
        point, template = item.split(": ", 1)
        return f"{point} {posixpath.basename(template).removesuffix('.j2')}"
    return posixpath.basename(item) if item.startswith("/") else item


def items_text(items: Sequence[tuple[str, str]]) -> str:
    """"programs a, b; hook pre-mount luks.sh; files x (+3 more)": basenames, SHOWN per kind."""
    parts = []
    for kind in KINDS:
        names = [_short(k, item) for k, item in items if k == kind]
        if not names:
            continue
        label = kind if len(names) == 1 else f"{kind}s"
        more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
        parts.append(f"{label} {', '.join(names[:SHOWN])}{more}")
    return "; ".join(parts)


def timeline_svg(c: Comparison) -> str:
    rows = []
    for r in c.flavors:
        failed = sum(1 for run in r.runs if not run.passed)
        note = f"{failed} of {len(r.runs)} boots FAILED" if failed else ""
        rows.append(svg.Row(r.flavor, medians(r), note, {"data-flavor": r.flavor}))
    boots = f"{c.runs} boot{'s' if c.runs > 1 else ''}"
    return svg.timeline(f"{c.host}: stage one timeline, systemd vs scripted",
                        f"median of {boots} per flavour in QEMU, kernel {c.kver}",
                        rows, timeline.STAGES)


def to_json(c: Comparison) -> dict[str, Any]:
    def sp(s: Spread | None) -> dict[str, float | int] | None:
        return None if s is None else {"median": round(s.median, 3), "min": s.low,
                                       "max": s.high, "n": s.n}

    return {
        "host": c.host, "runs": c.runs, "kernel": c.kver, "passed": c.passed, "clock": c.clock,
        "flavors": {r.flavor: {
            "passed": r.passed,
            "build": {"seconds": round(r.stats.build_seconds, 3), "image_bytes": r.stats.size,
                      "raw_bytes": r.stats.raw_size, "files": r.stats.files,
                      "elf_programs": r.stats.programs, "modules": r.stats.modules},
            "runs": [run.to_json() for run in r.runs],
            "stages": {s: sp(v) for s, v in r.stages.items()},
        } for r in c.flavors},
        "features": [{"name": n.name, "doc": n.doc, "flavors": list(n.flavors),
                      "only_in": {f: {k: [it for kk, it in v if kk == k] for k in KINDS
                                      if any(kk == k for kk, _ in v)}
                                  for f, v in n.only_in.items()}}
                     for n in c.features],
    }


# --- orchestration ----------------------------------------------------------------------


def default_compare_workdir(host: Host) -> Path:
    return default_workdir(host) / "compare"


def compare(host: Host, runs: int, workdir: Path | None = None, *, kernel: str | None = None,
            kver: str | None = None, append: Sequence[str] = (), cache_dir: Path | None = None,
            timeout: float = BOOT_TIMEOUT, progress: Progress | None = None,
            clock: str = "real") -> Comparison:
    """Build both flavours once, boot each `runs` times: the flavours in parallel (one QEMU
    each), the boots of one flavour one after another. Console logs: WORKDIR/boot-I/FLAVOR.log
    (default WORKDIR: verify's, plus /compare)."""
    if runs < 1:
        raise UsageError(f"--runs must be at least 1, not {runs}")
    work = workdir or default_compare_workdir(host)
    version = kernel_version(host, kver)
    if progress:
        progress(qemu.accel_line())
    preps = [prepare(host, f, work, kernel=kernel, kver=version, cache_dir=cache_dir,
                     progress=progress) for f in FLAVORS]
    stats = {p.flavor: image_stats(p.build) for p in preps if p.build is not None}
    results: dict[str, list[BootResult]] = {p.flavor: [] for p in preps}

    def run(prep: Prepared) -> None:
        for i in range(1, runs + 1):
            where = work / f"boot-{i}"
            if progress:
                progress(f"{prep.flavor}: boot {i}/{runs} (console log: "
                         f"{where / prep.flavor}.log)")
            results[prep.flavor].append(boot(host, prep, where, append=append,
                                             timeout=timeout, clock=clock))

    in_parallel([functools.partial(run, p) for p in preps])
    reports = tuple(FlavorReport(p.flavor, stats[p.flavor], tuple(results[p.flavor]))
                    for p in preps)
    return Comparison(Path(host.source).stem, runs, version, reports,
                      feature_difference(host, version), clock)
