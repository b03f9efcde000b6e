"""What each feature adds to the image: compressed and raw bytes, both flavours.

For each feature, two descriptions that differ only in it: a plain ext4 root on a partition
(the base), and the same host with its root (or its swap) on that feature. Both are built with
`bootgen build` (the library, the default compression); the difference of the image sizes is
what the feature costs. Sizes do not depend on the machine's speed: one build of each suffices
(they are reproducible, SOURCE_DATE_EPOCH aside).

    .venv/bin/python benchmarks/features.py [--markdown] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    Target,
    command_line,
    fmt_mb,
    kernel_release,
    machine_facts,
    progress,
    render_facts,
    render_table,
    render_targets,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bootgen.description import loads  # noqa: E402
from bootgen.image.build import build  # noqa: E402

HEAD = """
[boot]
kernel_params = ["console=ttyS0"]
{boot}
[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]

[rescue]
allow_passwordless = true
"""
ROOT = """
[[filesystems]]
mountpoint = "/"
device = "{device}"
fstype = "{fstype}"
options = ["rw"]
"""
BASE = ROOT.format(device="PARTLABEL=root", fstype="ext4")

# feature -> (what is described instead of the base root, [boot] lines)
VARIANTS: dict[str, tuple[str, str]] = {
    "luks": ('[[luks]]\nname = "root"\ndevice = "PARTLABEL=root"\n'
             + ROOT.format(device="/dev/mapper/root", fstype="ext4"), ""),
    "lvm": ('[[lvm]]\nname = "vg0"\ndevices = ["PARTLABEL=pv0"]\n'
            + ROOT.format(device="/dev/vg0/root", fstype="ext4"), ""),
    "mdraid": ('[[raid]]\nname = "root"\nuuid = "3f2c2a5e:8a4b1c9d:0e6f7a8b:9c0d1e2f"\n'
               'devices = ["PARTLABEL=raid-a", "PARTLABEL=raid-b"]\n'
               + ROOT.format(device="/dev/md/root", fstype="ext4"), ""),
    "btrfs": (ROOT.format(device="PARTLABEL=root", fstype="btrfs"), ""),
    "xfs": (ROOT.format(device="PARTLABEL=root", fstype="xfs"), ""),
    "resume": (BASE, 'resume_device = "PARTLABEL=swap"'),
}
GOALS = {"lvm": 1.5e6, "mdraid": 0.5e6}  # compressed bytes (issue 12)


@dataclass(frozen=True)
class Size:
    compressed: int
    raw: int


def measure(text: str, flavor: str, kver: str, out: Path) -> Size:
    host = loads(text, f"<{flavor}>")
    r = build(host, output=out, flavor=flavor, kver=kver)
    return Size(len(r.packed.data), r.packed.raw_size)


def description(body: str, boot: str) -> str:
    return HEAD.format(boot=boot) + body


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--kernel-version")
    ap.add_argument("features", nargs="*", default=list(VARIANTS))
    args = ap.parse_args(argv)
    kver = kernel_release(args.kernel_version)
    rows, targets, data = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bootgen-features-") as tmp:
        out = Path(tmp) / "image"
        for flavor in ("systemd", "scripted"):
            progress(f"{flavor}: base")
            base = measure(description(BASE, ""), flavor, kver, out)
            data[f"{flavor}/base"] = vars(base)
            rows.append([flavor, "(base: ext4 root)", fmt_mb(base.compressed), fmt_mb(base.raw),
                         "", ""])
            for name in args.features:
                progress(f"{flavor}: {name}")
                size = measure(description(*VARIANTS[name]), flavor, kver, out)
                data[f"{flavor}/{name}"] = vars(size)
                added = size.compressed - base.compressed
                rows.append([flavor, name, fmt_mb(size.compressed), fmt_mb(size.raw),
                             fmt_mb(added), fmt_mb(size.raw - base.raw)])
                if name in GOALS:
                    goal = GOALS[name]
                    targets.append(Target(f"{name} adds ≤ {goal / 1e6:.1f} MB ({flavor})",
                                          added, goal, fmt_mb(added),
                                          "compressed image size minus the base's"))
    facts = machine_facts(kver)
    md = args.markdown
    print(render_facts(facts, markdown=md))
    print(render_table(["flavour", "feature", "image MB", "raw MB", "added MB", "added raw MB"],
                       rows, markdown=md))
    print()
    print(render_targets(targets, markdown=md))
    print(f"\ncommand: {command_line()}")
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "sizes": data}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
