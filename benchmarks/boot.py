"""Boot benchmark: time to the real root's init, bootgen versus its peers, on one test root.

Every image boots the same disks, the ones `bootgen verify` builds for examples/minimal.toml
(an ext4 root LABEL=root on virtio), N times each, one QEMU at a time (TCG unless KVM really
works, 1 CPU, 1 GiB), with `quiet`. The test root's /sbin/init prints its uptime
(BOOTGEN-UPTIME) and a verdict carrying this boot's random token: the headline number is that
guest uptime, i.e. when the real root's init ran. Host wall time from QEMU's start to that line
is shown too (it adds QEMU start-up and the firmware).

The guest's clock counts instructions by default (`--clock instructions`: QEMU's
`-icount shift=0,sleep=on` under TCG: one guest nanosecond per executed instruction, and real
time while the guest waits): the uptime then measures the work a boot does plus its waits, the
same boot gives the same number to a few hundredths on a busy or a quiet host, and a ratio's
verdict does not depend on what else the machine ran. It is a model (every instruction costs the
same); `--clock real` lets the guest's clock follow the host's, and needs a quiet machine.

Images: bootgen systemd and scripted (`bootgen build`), dracut systemd and scripted for the
same module set, dracut's generic default image, initramfs-tools, and a hand-made busybox
initrd that only insmods and mounts (benchmarks/handmade_init.sh). Peers get
`root=LABEL=root rw`; bootgen's images do not: they know their root from the description, and
root= on the command line makes bootgen's systemd image hand the root over to
systemd-fstab-generator, another code path than the one measured.

    .venv/bin/python benchmarks/boot.py --markdown
    .venv/bin/python benchmarks/boot.py --layout lvm --markdown   # or raid

With `--layout lvm` or `raid` the root is on a logical volume or a RAID1 array
(benchmarks/layouts/, test disks built by bootgen's helper VM, as `bootgen verify` does): bootgen
against dracut with the same modules plus its lvm or mdraid module, told the root and the volume
group or array on the command line as dracut wants (`rd.lvm.vg=`, `rd.md.uuid=`).

`--layout luks-keyfile` boots examples/luks.toml with its root volume unlocked by an embedded
keyfile (a test key written into the work directory; bootgen appends it as its secrets archive):
dracut systemd gets its crypt module, the same crypto modules, the keyfile and a crypttab naming
the same volume (`--include`), and `root=/dev/mapper/cryptroot`. `--layout network` boots
examples/network.toml: DHCP on the virtio NIC while the root is found and mounted, nobody
waiting for the lease (dracut's systemd-networkd module has no such wait: `rd.neednet=1` would
hold back bootgen's switch root and not dracut's). dracut systemd gets its systemd-networkd
module and `ip=dhcp`; that module brings dracut's
kernel-network-modules, i.e. every NIC driver of the kernel (it cannot be left out), where
bootgen's image has virtio_net alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    EXAMPLES,
    HERE,
    MINIMAL,
    NA,
    Recipe,
    Stats,
    Target,
    bootgen_recipe,
    build_handmade,
    command_line,
    fmt_mb,
    fmt_ratio,
    fmt_seconds,
    fmt_stats,
    kernel_release,
    load_average,
    machine_facts,
    other_qemus,
    package_version,
    peer,
    progress,
    ratio,
    ratio_spread,
    render_facts,
    render_table,
    render_targets,
    stats,
    timed,
    warn_if_busy,
)

from bootgen import description as config
from bootgen.config.schema import Host
from bootgen.errors import BootgenError
from bootgen.vm import disks, qemu, verify
from bootgen.vm.diskbuild import build_disks
from bootgen.vm.stack import needs_helper
from bootgen.vm.stackbuild import build_stack

IMAGES = ("handmade", "bootgen-scripted", "bootgen-systemd", "dracut-scripted",
          "dracut-systemd", "dracut-default", "initramfs-tools")
PEER_PARAMS = ("root=LABEL=root", "rw")

# (numerator, denominator, goal) of the ratios shown; a goal limit of None: informational
RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("bootgen-scripted", "handmade", 1.15),
    ("bootgen-systemd", "dracut-systemd", 0.6),
    ("bootgen-systemd", "handmade", None),
    ("bootgen-scripted", "dracut-scripted", None),
    ("bootgen-scripted", "initramfs-tools", None),
    ("bootgen-systemd", "dracut-default", None),
)
# with the root on LVM or RAID (issue 12): bootgen no slower than dracut in either flavour
STORAGE_RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("bootgen-systemd", "dracut-systemd", 1.0),
    ("bootgen-scripted", "dracut-scripted", 1.0),
)


# the examples the issue names besides the plain one (LUKS with a keyfile, network)
EXAMPLE_IMAGES = ("bootgen-scripted", "bootgen-systemd", "dracut-systemd")
EXAMPLE_RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("bootgen-systemd", "dracut-systemd", 0.6),
    ("bootgen-scripted", "dracut-systemd", None),
)
# crypto modules bootgen's luks feature puts beside dm_crypt for aes-xts (given to dracut too)
LUKS_DRIVERS = ("dm_crypt", "xts", "ecb", "aesni_intel", "algif_skcipher")


@dataclass(frozen=True)
class Layout:
    """Where the root is: the description bootgen builds from and boots, and what its peers
    are told and given for the same root. `materialize` writes what the layout needs into the
    work directory (a description naming a keyfile there) and returns the layout that uses it."""

    description: Path
    images: tuple[str, ...]
    peer_params: tuple[str, ...]
    dracut_modules: tuple[str, ...] = ()
    dracut_drivers: tuple[str, ...] = ()
    ratios: tuple[tuple[str, str, float | None], ...] = RATIOS
    bootgen_params: tuple[str, ...] = ()
    dracut_args: tuple[str, ...] = ()
    materialize: Callable[[Layout, Path], Layout] | None = None

    def at(self, workdir: Path) -> Layout:
        return self.materialize(self, workdir) if self.materialize else self


def _luks_keyfile(layout: Layout, workdir: Path) -> Layout:
    """examples/luks.toml with a keyfile for its root volume, and the same for dracut."""
    key = workdir / "cryptroot.key"
    key.write_bytes(hashlib.shake_256(b"bootgen boot benchmark test key").digest(64))
    text = layout.description.read_text()
    if "tries = 3\n" not in text:
        raise BootgenError(f"{layout.description}: no `tries = 3` line to add the keyfile after")
    desc = workdir / "luks-keyfile.toml"
    desc.write_text(text.replace("tries = 3\n", f"tries = 3\nkey_file = {json.dumps(str(key))}\n",
                                 1))
    crypttab = workdir / "crypttab"
    crypttab.write_text(f"cryptroot PARTLABEL=cryptroot {key} luks\n")
    return dataclasses.replace(layout, description=desc, materialize=None, dracut_args=(
        "--install", str(key), "--include", str(crypttab), "/etc/crypttab"))


LAYOUTS: dict[str, Layout] = {
    "plain": Layout(MINIMAL, IMAGES, PEER_PARAMS),
    "lvm": Layout(HERE / "layouts" / "lvm.toml",
                  ("bootgen-scripted", "bootgen-systemd", "dracut-scripted", "dracut-systemd"),
                  ("root=/dev/vg0/root", "rd.lvm.vg=vg0", "rw"), ("lvm",), ("dm_mod",),
                  STORAGE_RATIOS),
    "raid": Layout(HERE / "layouts" / "raid.toml",
                   ("bootgen-scripted", "bootgen-systemd", "dracut-scripted", "dracut-systemd"),
                   ("root=/dev/md/root", "rd.md.uuid=3f2c2a5e:8a4b1c9d:0e6f7a8b:9c0d1e2f", "rw"),
                   ("mdraid",), ("md_mod", "raid1"), STORAGE_RATIOS),
    "luks-keyfile": Layout(EXAMPLES / "luks.toml", EXAMPLE_IMAGES,
                           ("root=/dev/mapper/cryptroot", "rw"), ("crypt",), LUKS_DRIVERS,
                           EXAMPLE_RATIOS, materialize=_luks_keyfile),
    "network": Layout(EXAMPLES / "network.toml", EXAMPLE_IMAGES,
                      ("root=LABEL=root", "rw", "ip=dhcp"), ("systemd-networkd",),
                      ("virtio_net",), EXAMPLE_RATIOS),
}
BOOT_TIMEOUT = 180.0


# Kernel lines (they carry the guest's own timestamp) seen in a boot without `quiet`
_TS = r"^\[\s*(\d+\.\d+)\] "
STAGE_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("/init", re.compile(_TS + r"Run \S+ as init process")),
    ("disk probed", re.compile(_TS + r"virtio_blk \S+: \[vd[a-z]+\]")),
    ("root mounted", re.compile(_TS + r"EXT4-fs \((?:vd[a-z]+\d*|dm-\d+|md\d+)\): "
                                r"mounted filesystem")),
    ("switch root", re.compile(_TS + r"(?:systemd\[1\]: Switching root|"
                               r"bootgen: switching to the root)")),
    ("real init", re.compile(r"BOOTGEN-UPTIME (\d+(?:\.\d+)?)")),
)
STAGES = tuple(name for name, _ in STAGE_MARKERS)
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\r")


def log_stages(text: str) -> dict[str, float]:
    """Guest uptime of each stage marker's first occurrence in a console log."""
    found: dict[str, float] = {}
    for line in _ESCAPES.sub("", text).splitlines():
        for name, pattern in STAGE_MARKERS:
            m = pattern.search(line)
            if m and name not in found:
                found[name] = float(m.group(1))
    return {s: found[s] for s in STAGES if s in found}


def longest_step(stages: dict[str, float]) -> str:
    """The longest interval between consecutive stages (kernel start = 0), e.g.
    "/init → disk probed 1.20 s"."""
    prev, prev_t, best, best_d = "kernel", 0.0, "", -1.0
    for name in STAGES:
        if name in stages:
            d = stages[name] - prev_t
            if d > best_d:
                best, best_d = f"{prev} → {name}", d
            prev, prev_t = name, stages[name]
    return f"{best} {best_d:.2f} s" if best else NA


@dataclass
class Boot:
    passed: bool
    guest: float | None  # uptime at which the real root's init ran
    wall: float | None  # host seconds from QEMU's start to that line
    reason: str
    log: Path
    contended: bool = False  # another QEMU ran just before or just after this boot

    def to_json(self) -> dict[str, object]:
        return {"passed": self.passed, "guest": self.guest, "wall": self.wall,
                "reason": self.reason, "log": str(self.log), "contended": self.contended}


@dataclass
class Image:
    name: str
    what: str
    params: tuple[str, ...]
    path: Path | None = None
    size: int | None = None
    build_seconds: float | None = None
    error: str = ""  # why it could not be built
    boots: list[Boot] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    stages_log: Path | None = None

    def passed(self) -> list[Boot]:
        return [b for b in self.boots if b.passed]

    def guest(self) -> Stats | None:
        return stats([b.guest for b in self.passed() if b.guest is not None])

    def wall(self) -> Stats | None:
        return stats([b.wall for b in self.passed() if b.wall is not None])

    def status(self) -> str:
        if self.error:
            return self.error
        failed = [b for b in self.boots if not b.passed]
        if failed:
            first = failed[0]
            return f"FAILED {len(failed)}/{len(self.boots)}: {first.reason} (log {first.log})"
        return "ok"

    def to_json(self) -> dict[str, object]:
        g, w = self.guest(), self.wall()
        return {"name": self.name, "what": self.what, "params": list(self.params),
                "size": self.size, "build_seconds": self.build_seconds, "error": self.error,
                "boots": [b.to_json() for b in self.boots],
                "guest": g.to_json() if g else None, "wall": w.to_json() if w else None,
                "stages": self.stages, "stages_log": str(self.stages_log or "")}


def recipe(name: str, layout: Layout = LAYOUTS["plain"]) -> Recipe | None:
    if name in ("bootgen-systemd", "bootgen-scripted"):
        r = bootgen_recipe(layout.description, name.removeprefix("bootgen-"))
        return dataclasses.replace(r, name=name)
    if name == "handmade":
        return None
    r = peer(name)
    if layout.dracut_modules and r.tool == "dracut":
        base = r.argv
        extra = ["--add", " ".join(layout.dracut_modules),
                 "--add-drivers", " ".join(layout.dracut_drivers), *layout.dracut_args]

        def argv(kver: str, out: Path) -> list[str]:
            got = base(kver, out)
            return [*got[:-1], *extra, got[-1]]

        r = dataclasses.replace(r, argv=argv, what=f"{r.what} + {' '.join(layout.dracut_modules)}")
    return r


def describe(name: str, layout: Layout = LAYOUTS["plain"]) -> str:
    r = recipe(name, layout)
    if r is None:
        return "busybox + insmod + mount"
    return f"{r.tool} {r.flavour}, {r.what}"


def build_image(img: Image, kver: str, out: Path, layout: Layout = LAYOUTS["plain"]) -> None:
    r = recipe(img.name, layout)
    progress(f"building {img.name} ...")
    if r is None:
        t0 = time.monotonic()
        try:
            mods = build_handmade(kver, out)
        except (BootgenError, OSError) as e:
            img.error = f"build failed: {getattr(e, 'message', e)}"
            return
        img.build_seconds = time.monotonic() - t0
        progress(f"  hand-made modules, in load order: {' '.join(mods)}")
    elif not r.installed():
        img.error = f"{r.program} not installed"
        return
    else:
        res = timed(r.argv(kver, out))
        if not res.ok or not out.is_file():
            img.error = f"build failed: {res.error or 'no image written'}"
            return
        img.build_seconds = res.seconds
    img.path, img.size = out, out.stat().st_size
    progress(f"  {img.name}: {fmt_mb(img.size)} MB in {img.build_seconds:.1f} s")


def boot_once(host: Host, img: Image, tag: str, drives: tuple[qemu.Drive, ...],
              testroot: disks.TestRoot, kernel: str, workdir: Path, params: Sequence[str],
              timeout: float, clock: str = "real") -> tuple[Boot, dict[str, float]]:
    assert img.path is not None and img.size is not None
    prep = verify.Prepared(flavor=tag, image=img.path, image_size=img.size, build_seconds=0.0,
                           drives=drives, testroot=testroot, kernel=kernel)
    log = workdir / f"{tag}.log"
    before = other_qemus()
    try:
        r = verify.boot(host, prep, workdir, append=list(params), timeout=timeout, clock=clock)
    except BootgenError as e:
        return Boot(False, None, None, e.message.splitlines()[0], log), {}
    contended = bool(before or other_qemus())
    mark = r.stages.get("real init")
    guest = mark.guest if mark else None
    wall = mark.host if mark else r.wall_seconds
    try:
        text = r.log.read_text(errors="replace")
    except OSError:
        text = ""
    return Boot(r.passed, guest, wall, r.reason, r.log, contended), log_stages(text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Boot bootgen's images and its peers' on the same test root, one QEMU at "
                    "a time, and compare the guest uptime at which the real root's init runs.",
        epilog="images: " + ", ".join(IMAGES))
    ap.add_argument("--runs", type=int, default=5, help="boots per image (default 5)")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="plain",
                    help="where the root is (default plain: ext4 on a partition)")
    ap.add_argument("--only", metavar="NAME,...",
                    help="boot only these images (comma-separated names, see below)")
    ap.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    ap.add_argument("--markdown", action="store_true",
                    help="print the tables as markdown (for docs/benchmarks.md)")
    ap.add_argument("--timeout", type=float, default=BOOT_TIMEOUT,
                    help=f"seconds per boot (default {BOOT_TIMEOUT:.0f})")
    ap.add_argument("--no-stages", action="store_true",
                    help="skip the extra boot without `quiet` per image (stage breakdown)")
    ap.add_argument("--clock", choices=qemu.CLOCKS, default="instructions",
                    help="the guest's clock: 'instructions' (default; TCG's -icount, one guest "
                         "ns per instruction, real time while it waits: the same boot gives "
                         "the same uptime on a busy or a quiet host) or 'real' (the host's)")
    ap.add_argument("--kernel-version", metavar="KVER", help="default: the newest installed")
    ap.add_argument("--workdir", type=Path,
                    help="where images and console logs go (default: a new temp directory "
                         "whose images are removed at the end; the logs are kept)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    layout = LAYOUTS[args.layout]  # the work directory's version once it exists
    names = list(layout.images)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in layout.images]
        if unknown:
            ap.error(f"unknown image {unknown[0]!r}; choose from {', '.join(layout.images)}")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bootgen-bench-boot-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        layout = layout.at(workdir)
        kver = kernel_release(args.kernel_version)
        kernel = qemu.default_kernel(kver)
        host = config.load(layout.description)
    except BootgenError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    accel = ("tcg -cpu " + qemu.TCG_CPU if args.clock == "instructions" or not qemu.kvm_usable()
             else "kvm -cpu host")
    clock = f"instructions (-icount {qemu.ICOUNT})" if args.clock == "instructions" else "real"
    warn_if_busy()
    facts = machine_facts(kver, {
        "qemu": f"{package_version('qemu-system-x86')}, -accel {accel}, 1 CPU, 1024 MiB, "
                f"guest clock {clock}",
        "dracut": package_version("dracut-core"),
        "initramfs-tools": package_version("initramfs-tools"),
        "busybox": package_version("busybox-static"),
    })

    progress(f"test disks for {layout.description.name} ...")
    try:
        if needs_helper(host):
            built, testroot = build_stack(host, workdir, kver=kver, kernel=kernel,
                                          progress=progress)
        else:
            built, testroot = build_disks(host, workdir)
    except BootgenError as e:
        print(f"error: cannot build the test disks: {e.message}", file=sys.stderr)
        return 1
    drives = tuple(qemu.Drive(str(d.path), serial=d.spec.serial, snapshot=True) for d in built)

    images = [Image(n, describe(n, layout),
                    layout.bootgen_params if n.startswith("bootgen-") else layout.peer_params)
              for n in names]
    for img in images:
        build_image(img, kver, workdir / f"{img.name}.img", layout)
    bootable = [img for img in images if img.path is not None]

    # Runs are interleaved (all images once, then again...) so that a change in the machine's
    # load during the run spreads over all images instead of hitting one.
    total, done = args.runs * len(bootable), 0
    for run_no in range(1, args.runs + 1):
        for img in bootable:
            done += 1
            b, _ = boot_once(host, img, f"{img.name}-{run_no}", drives, testroot, kernel,
                             workdir, ["quiet", *img.params], args.timeout, args.clock)
            img.boots.append(b)
            what = (f"real init at {fmt_seconds(b.guest)} s guest, {fmt_seconds(b.wall, 1)} s "
                    f"wall" if b.passed else f"FAILED: {b.reason} (log {b.log})")
            busy = " (another QEMU was running)" if b.contended else ""
            progress(f"[{done}/{total}] {img.name} run {run_no}/{args.runs}: {what}{busy}")
    if not args.no_stages:
        for img in bootable:
            b, marks = boot_once(host, img, f"{img.name}-verbose", drives, testroot, kernel,
                                 workdir, list(img.params), args.timeout, args.clock)
            img.stages, img.stages_log = marks, b.log
            progress(f"[stages] {img.name}: " + ", ".join(f"{k} {v:.2f}"
                                                          for k, v in marks.items()))
    facts["load average at end (1/5/15 min)"] = load_average()

    report = render(images, facts, args, markdown=args.markdown)
    print(report)
    if args.json:
        by = {img.name: img for img in images}
        args.json.write_text(json.dumps({
            "command": command_line(), "facts": facts, "runs": args.runs,
            "images": [img.to_json() for img in images],
            "targets": [t.to_json() for t in targets(by, LAYOUTS[args.layout].ratios)],
        }, indent=1) + "\n")
    if not args.workdir:
        for img in images:
            if img.path is not None:
                img.path.unlink(missing_ok=True)
    progress(f"console logs: {workdir}")
    return 0 if all(img.status() == "ok" for img in images) else 1


def targets(by: dict[str, Image], ratios: Sequence[tuple[str, str, float | None]] = RATIOS
            ) -> list[Target]:
    """Each goal's ratio of medians; "met" or "NOT MET" only when the ratio's range over the
    runs (fastest over slowest, slowest over fastest) lies on one side of the goal."""
    out = []
    for num, den, limit in ratios:
        if limit is None:
            continue
        a, b = by.get(num), by.get(den)
        ga, gb = a.guest() if a else None, b.guest() if b else None
        r = ratio(ga.median if ga else None, gb.median if gb else None)
        spread = ratio_spread(ga, gb)
        shown = fmt_ratio(r) + (f" ({spread[0]:.2f}–{spread[1]:.2f})" if spread else "")
        out.append(Target(f"boot to root: {num} ≤ {limit:g}× {den}", r, limit, shown,
                          f"median guest uptime {fmt_seconds(ga.median if ga else None)} s / "
                          f"{fmt_seconds(gb.median if gb else None)} s", spread))
    return out


def render(images: list[Image], facts: dict[str, str], args: argparse.Namespace, *,
           markdown: bool) -> str:
    by = {img.name: img for img in images}
    rows = []
    for img in images:
        g, w = img.guest(), img.wall()
        rows.append([img.name, img.what, fmt_mb(img.size), f"{len(img.passed())}/{len(img.boots)}",
                     fmt_stats(g), fmt_stats(w, 1), img.status()])
    main_table = render_table(
        ["image", "what", "size MB", "passed", "real init, guest s: median (min–max)",
         "host wall s", "status"], rows, markdown=markdown)
    ratio_rows = []
    ratios = LAYOUTS[args.layout].ratios
    for num, den, limit in ratios:
        if num not in by or den not in by:
            continue
        ga, gb = by[num].guest(), by[den].guest()
        r = ratio(ga.median if ga else None, gb.median if gb else None)
        size = ratio(by[num].size, by[den].size)
        goal = NA if limit is None else f"≤ {limit:g}×"
        ratio_rows.append([f"{num} / {den}", fmt_ratio(r), goal, fmt_ratio(size)])
    ratio_table = render_table(["ratio", "boot to root", "goal", "image size"], ratio_rows,
                               markdown=markdown)
    parts = [("Boot to the real root's init", main_table), ("Ratios", ratio_table),
             ("Targets", render_targets(targets(by, ratios), markdown=markdown))]
    staged = [img for img in images if img.stages]
    if staged:
        stage_rows = [[img.name, *(fmt_seconds(img.stages.get(s)) for s in STAGES),
                       longest_step(img.stages)] for img in staged]
        parts.append(("Stages, guest uptime in s (one extra boot per image without `quiet`)",
                      render_table(["image", *STAGES, "longest step"], stage_rows,
                                   markdown=markdown)))
    boots = [b for img in images for b in img.boots]
    contended = sum(b.contended for b in boots)
    head = (f"command: {command_line()}\n"
            f"{args.runs} boot(s) per image, interleaved, one QEMU at a time; "
            f"timeout {args.timeout:.0f} s per boot; other QEMUs running just before or after "
            f"{contended} of the {len(boots)} timed boots")
    facts_text = render_facts(facts, markdown=markdown)
    if markdown:
        body = "\n\n".join(f"**{title}**\n\n{table}" for title, table in parts)
        return f"`{command_line()}`\n\n{head.splitlines()[1]}.\n\n{facts_text}\n\n{body}"
    body = "\n\n".join(f"== {title}\n{table}" for title, table in parts)
    return f"{head}\n\n{facts_text}\n\n{body}"


if __name__ == "__main__":
    sys.exit(main())
