"""`bootgen compare`: aggregation, table, SVG and feature difference on synthetic boots; one real
comparison of both flavours in QEMU (marked vm)."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen.archive.compress import read_image
from bootgen.cli import main
from bootgen.description import load
from bootgen.image.build import BuildResult
from bootgen.image.check import Checked
from bootgen.image.pack import pack
from bootgen.image.spec import Entry, Image, ImageSpec
from bootgen.report import compare as cmp
from bootgen.report import svg
from bootgen.vm import timeline
from bootgen.vm.verify import BootResult

from .conftest import EXAMPLES, needs_kernel

KVER = "6.1.0-test"
NS = {"s": "http://www.w3.org/2000/svg"}
STATS = cmp.ImageStats(build_seconds=0.84, size=11_380_803, raw_size=27_926_072, files=146,
                       programs=22, modules=12)


def result(flavor: str, times: dict[str, float], *, passed: bool = True, reason: str = "",
           log: str = "/tmp/x.log") -> BootResult:
    stages = {s: timeline.Mark(s, t, t + 0.5, f"line for {s}") for s, t in times.items()}
    return BootResult(flavor, passed, reason, Path(log), Path(f"/tmp/{flavor}.img"), 1000, 0.5,
                      5.0, stages)


FULL = {"kernel": 0.0, "init": 1.0, "root device": 1.5, "root mounted": 1.8,
        "switch root": 2.0, "real init": 2.4}


def shifted(delta: float, times: dict[str, float] = FULL) -> dict[str, float]:
    return {s: round(t + delta, 3) if s != "kernel" else t for s, t in times.items()}


def comparison(systemd: list[BootResult], scripted: list[BootResult],
               features: tuple[cmp.FeatureNote, ...] = ()) -> cmp.Comparison:
    return cmp.Comparison("minimal", len(systemd), KVER,
                          (cmp.FlavorReport("systemd", STATS, tuple(systemd)),
                           cmp.FlavorReport("scripted", STATS, tuple(scripted))), features)


def test_spread_odd_and_even() -> None:
    assert cmp.spread([]) is None
    assert cmp.spread([3.0, 1.0, 2.0]) == cmp.Spread(2.0, 1.0, 3.0, 3)
    even = cmp.spread([1.0, 4.0, 2.0, 3.0])
    assert even == cmp.Spread(2.5, 1.0, 4.0, 4)  # median of an even N: mean of the middle two


def test_stage_spreads_missing_stage_and_failed_run() -> None:
    runs = [result("systemd", shifted(0.0)),
            result("systemd", {s: t for s, t in shifted(0.2).items() if s != "root device"}),
            result("systemd", {"kernel": 0.0, "init": 1.4}, passed=False, reason="timed out")]
    spreads = cmp.stage_spreads(runs)
    assert list(spreads) == list(timeline.STAGES)
    init = spreads["init"]
    assert init is not None and init.n == 3 and init.median == 1.2
    assert (init.low, init.high) == (1.0, 1.4)
    dev = spreads["root device"]
    assert dev is not None and dev.n == 1 and dev.median == 1.5
    real = spreads["real init"]
    assert real is not None and real.n == 2 and real.median == pytest.approx(2.5)
    assert cmp.spread_text(real, 3) == "2.50 s (2.40–2.60) [2/3]"
    assert cmp.spread_text(dev, 3) == "1.50 s [1/3]"
    assert cmp.spread_text(None, 3) == "—"


def test_table_both_flavours_medians_and_spreads() -> None:
    c = comparison([result("systemd", shifted(d)) for d in (0.0, 0.1, 0.3, 0.4)],
                   [result("scripted", shifted(d - 0.5)) for d in (0.0, 0.1, 0.2, 0.3)])
    text = cmp.table(c)
    lines = text.splitlines()
    assert "4 boots each" in lines[0] and KVER in lines[0]
    header = next(line for line in lines if line.split() == ["systemd", "scripted"])
    assert header.index("systemd") < header.index("scripted")
    row = next(line for line in lines if line.startswith("to real init"))
    assert "2.60 s (2.40–2.80)" in row  # even N: median 2.6 between 2.5 and 2.7
    assert "2.05 s (1.90–2.20)" in row
    for label in ("build time", "image size", "raw size", "files", "ELF programs",
                  "kernel modules", "to /init", "to root found", "to root mounted",
                  "to switch_root"):
        assert any(line.startswith(label) for line in lines), label
    assert next(line for line in lines if line.startswith("boots")).split()[1:] == \
        ["4/4", "passed", "4/4", "passed"]
    assert "11.38 MB" in text and "27.93 MB" in text
    assert "FAILED" not in text and c.passed
    assert "instruction clock" not in text and cmp.to_json(c)["clock"] == "real"
    counted = dataclasses.replace(c, clock="instructions")
    assert "guest uptime (instruction clock" in cmp.table(counted)
    assert cmp.to_json(counted)["clock"] == "instructions"


def test_table_failed_run_names_reason_and_log() -> None:
    c = comparison([result("systemd", shifted(0.0)), result("systemd", shifted(0.1))],
                   [result("scripted", shifted(0.0)),
                    result("scripted", {"kernel": 0.0, "init": 0.9}, passed=False,
                           reason="stage one failed: bootgen: root not found",
                           log="/work/boot-2/scripted.log")])
    assert not c.passed
    text = cmp.table(c)
    assert "FAILED 1 of 2" in text
    assert ("FAILED scripted boot 2/2: stage one failed: bootgen: root not found "
            "(console log: /work/boot-2/scripted.log)") in text
    row = next(line for line in text.splitlines() if line.startswith("to real init"))
    assert "[1/2]" in row
    data = cmp.to_json(c)
    assert data["passed"] is False and data["flavors"]["scripted"]["passed"] is False
    assert data["flavors"]["scripted"]["runs"][1]["reason"].endswith("root not found")
    assert data["flavors"]["scripted"]["stages"]["real init"]["n"] == 1
    json.dumps(data)  # serialisable


def test_svg_well_formed_rows_labels_and_deterministic() -> None:
    c = comparison([result("systemd", shifted(d)) for d in (0.0, 0.2, 0.4)],
                   [result("scripted", shifted(d - 0.6)) for d in (0.0, 0.1, 0.2)])
    text = cmp.timeline_svg(c)
    root = ET.fromstring(text.encode())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    rows = root.findall("s:g[@class='row']", NS)
    assert [r.get("data-flavor") for r in rows] == ["systemd", "scripted"]
    for r in rows:
        assert len(r.findall("s:rect[@class='segment']", NS)) == len(timeline.STAGES) - 1
        assert len(r.findall("s:line[@class='marker']", NS)) == 1
    words = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for stage in timeline.STAGES:
        assert stage in words  # in the legend at least
    assert "minimal" in words and "3 boots" in words
    assert "guest uptime (seconds)" in words
    assert text == cmp.timeline_svg(c)
    again = comparison([result("systemd", shifted(d)) for d in (0.0, 0.2, 0.4)],
                       [result("scripted", shifted(d - 0.6)) for d in (0.0, 0.1, 0.2)])
    assert cmp.timeline_svg(again).encode() == text.encode()


def test_svg_missing_stages_and_no_marks() -> None:
    c = comparison([result("systemd", {"kernel": 0.0, "init": 1.0, "real init": 3.0})],
                   [result("scripted", {}, passed=False, reason="no console")])
    root = ET.fromstring(cmp.timeline_svg(c))
    rows = root.findall("s:g[@class='row']", NS)
    assert len(rows[0].findall("s:rect[@class='segment']", NS)) == 2
    assert rows[1].findall("s:rect[@class='segment']", NS) == []
    assert "1 of 1 boots FAILED" in "".join(rows[1].itertext())


def test_axis_ticks() -> None:
    ticks, decimals = svg.axis_ticks(2.4)
    assert ticks[0] == 0 and ticks[-1] >= 2.4 and len(ticks) <= 10 and decimals == 1
    assert svg.axis_ticks(37.0) == ([0, 5, 10, 15, 20, 25, 30, 35, 40], 0)
    assert svg.segments({"a": 1.0, "c": 2.0}, ("a", "b", "c")) == [("a", 1.0, 2.0)]


def test_image_stats_counts_elf_programs_not_libraries() -> None:
    elf = b"\x7fELF" + b"\0" * 60
    entries = (Entry("/usr", "dir", 0o755), Entry("/usr/bin/prog", "file", 0o755, data=elf),
               Entry("/usr/lib/libc.so.6", "file", 0o755, data=elf),
               Entry("/init", "file", 0o755, data=b"#!/bin/sh\n"),
               Entry("/etc/data", "file", 0o644, data=elf))
    spec = ImageSpec(flavor="scripted", kver="k", compression="none", compression_level=None,
                     features=(), init="/init", programs=(), libraries=(), files=(),
                     generated=(), hooks=(), symlinks=(), dirs=(), devnodes=(), modules=())
    image = Image(spec, tuple(sorted(entries, key=lambda e: e.path)), ("ext4",), ())
    packed = pack(image, early_microcode=False)
    checked = Checked(members=5, elf_files=0)
    stats = cmp.image_stats(BuildResult(None, image, packed, "", 1.5, checked, ()))
    data = packed.data
    assert stats == cmp.ImageStats(1.5, len(data), len(data), 4, 1, 1)
    assert read_image(data)[0].end == len(data)  # uncompressed: raw size is the archive


def test_feature_difference_minimal() -> None:
    notes = {n.name: n for n in cmp.feature_difference(load(EXAMPLES / "minimal.toml"), KVER)}
    assert notes["systemd"].flavors == ("systemd",) and notes["udev"].flavors == ("systemd",)
    assert notes["scripted"].flavors == ("scripted",)
    assert notes["scripted"].doc.startswith("busybox")
    assert "luks" not in notes and "base" not in notes and "rescue" not in notes
    assert notes["fsck"].only_in == {"systemd": (("program", "/usr/sbin/fsck"),)}


def test_feature_difference_luks_and_text() -> None:
    notes = cmp.feature_difference(load(EXAMPLES / "luks.toml"), KVER)
    luks = next(n for n in notes if n.name == "luks")
    assert luks.flavors == ("systemd", "scripted")
    sysd, scr = set(luks.only_in["systemd"]), set(luks.only_in["scripted"])
    assert ("program", "/usr/lib/systemd/system-generators/systemd-cryptsetup-generator") in sysd
    assert ("file", "/etc/crypttab") in sysd
    assert ("program", "/usr/sbin/cryptsetup") in scr
    assert any(kind == "hook" and "luks" in item for kind, item in scr)
    text = "\n".join(cmp.feature_lines(notes, ["systemd", "scripted"]))
    assert "only systemd: udev" in text and "only scripted: scripted" in text
    assert "systemd-cryptsetup-generator" in text and "hook pre-mount luks.sh" in text
    assert all(len(line) <= 100 for line in text.splitlines())


@pytest.mark.vm
@needs_kernel
def test_compare_cli_real_boots(tmp_path: Path) -> None:
    out = tmp_path / "t.svg"
    res = CliRunner().invoke(main, ["compare", str(EXAMPLES / "minimal.toml"), "--runs", "1",
                                    "--svg", str(out), "--workdir", str(tmp_path / "w"),
                                    "--clock", "instructions"])
    assert res.exit_code == 0, res.output
    assert "guest uptime (instruction clock" in res.output
    # the table's header names both flavours, systemd first
    assert any(line.split() == ["systemd", "scripted"] for line in res.output.splitlines())
    assert "1/1 passed" in res.output and "to real init" in res.output
    assert out.is_file()
    rows = ET.parse(out).getroot().findall("s:g[@class='row']", NS)
    assert [r.get("data-flavor") for r in rows] == ["systemd", "scripted"]


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["compare", str(EXAMPLES / "minimal.toml"), "--runs", "0"])
    assert res.exit_code == 2
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2 and res.output.startswith("error:")
