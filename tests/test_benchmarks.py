"""The benchmark scripts (benchmarks/): fast checks only — no peer builds, no boots."""

from __future__ import annotations

import importlib.util
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bootgen.archive import compress, cpio

from .conftest import KVER, REPO, alias_providers, needs_kernel

BENCH = REPO / "benchmarks"


def _load(name: str) -> ModuleType:
    """Import benchmarks/<name>.py; the scripts import their helpers as `common`."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


common = _load("common")


@pytest.mark.parametrize("script", ["build.py", "boot.py", "ablate.py"])
def test_scripts_help(script: str) -> None:
    res = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for option in ("--runs", "--json", "--markdown"):
        assert option in res.stdout


def test_ablate_rejects_unknown_variant() -> None:
    res = subprocess.run([sys.executable, str(BENCH / "ablate.py"), "--only", "no-kernel"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown variant 'no-kernel'" in res.stderr


def test_ablate_variants_are_valid_descriptions(tmp_path: Path) -> None:
    from bootgen import description

    ablate = _load("ablate")
    assert ablate.VARIANTS[0].name == "base" and len(set(ablate.NAMES)) == len(ablate.NAMES)
    for v in ablate.VARIANTS:
        if not v.description:
            continue
        path = tmp_path / "v.toml"
        path.write_text(common.MINIMAL.read_text() + v.description)
        host = description.load(path)  # the fragment is TOML and its unit names pass the checks
        units = dict(host.systemd.units)
        assert units and all("[Service]" in text for text in units.values()), v.name


def test_boot_rejects_unknown_image() -> None:
    res = subprocess.run([sys.executable, str(BENCH / "boot.py"), "--only", "grub"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "unknown image 'grub'" in res.stderr


def test_median_stats_ratio() -> None:
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        common.median([])
    s = common.stats([2.0, 1.0, 5.0])
    assert (s.n, s.median, s.min, s.max) == (3, 2.0, 1.0, 5.0)
    assert common.stats([]) is None
    assert common.ratio(1.0, 4.0) == 0.25
    assert common.ratio(None, 4.0) is None
    assert common.ratio(1.0, 0) is None


def test_formatting() -> None:
    assert common.fmt_stats(common.stats([1.0, 2.0, 4.0])) == "2.00 (1.00–4.00)"
    assert common.fmt_stats(common.stats([1.5])) == "1.50"
    assert common.fmt_stats(None) == common.NA
    assert common.fmt_mb(3_791_043) == "3.79"
    assert common.fmt_ratio(0.1234) == "0.12×"
    assert common.fmt_ratio(0.01343) == "0.013×"
    assert common.fmt_ratio(None) == common.NA


def test_render_table_markdown_and_plain() -> None:
    rows = [["bootgen", "0.73 (0.70–0.80)"], ["dracut", "6.60"], ["mkinitramfs", common.NA]]
    md = common.render_table(["tool", "s"], rows, markdown=True).splitlines()
    assert md[0] == "| tool | s |"
    assert md[1] == "|---|---:|"  # numbers are right-aligned
    assert md[2] == "| bootgen | 0.73 (0.70–0.80) |"
    assert len(md) == 5
    plain = common.render_table(["tool", "s"], rows).splitlines()
    assert plain[0].startswith("tool ")
    assert plain[3].endswith(" 6.60")
    assert len({len(line) for line in plain[:3]}) == 1  # aligned columns
    assert "\\|" in common.render_table(["a"], [["x|y"]], markdown=True)
    with pytest.raises(ValueError):
        common.render_table(["a", "b"], [["only one"]])


def test_targets() -> None:
    met = common.Target("x ≤ 1", 0.5, 1.0, "0.5")
    missed = common.Target("x ≤ 1", 1.5, 1.0, "1.5")
    unknown = common.Target("x ≤ 1", None, 1.0, common.NA)
    assert (met.verdict, missed.verdict, unknown.verdict) == ("met", "NOT MET", "not measured")
    table = common.render_targets([met, missed], markdown=True)
    assert "| met |" in table and "| NOT MET |" in table


def test_build_targets_from_rows() -> None:
    build = _load("build")

    def row(name: str, seconds: list[float], size: int | None) -> Any:
        r = build.Row(next(x for x in build.recipes(True) if x.name == name), len(seconds),
                      seconds)
        if size is not None:
            r.image = common.ImageStats(size, size * 2, 10, 5, "zstd")
        return r

    by = {r.name: r for r in [row("bootgen-systemd", [0.8, 0.7, 0.9], 7_000_000),
                              row("bootgen-scripted", [0.4, 0.45, 0.6], 3_500_000),
                              row("dracut-systemd", [6.0], 11_000_000)]}
    verdicts = {t.goal: t.verdict for t in build.targets(by)}
    assert verdicts == {
        "systemd build ≤ 1/20 of dracut-systemd": "NOT MET",  # 0.8 / 6.0
        "systemd build ≤ 1/20 of dracut-default": "not measured",
        "scripted build ≤ 0.5 s wall": "met",  # median 0.45
        "scripted image ≤ 3 MB": "NOT MET",
        "systemd image ≤ 8 MB": "met",
        "systemd image ≤ 1/3 of dracut's default": "not measured",
        "systemd build ≤ 1/20 of dracut-systemd (no segment cache)": "not measured",
        "systemd build ≤ 1/20 of dracut-default (no segment cache)": "not measured",
        "scripted build ≤ 0.5 s wall (no segment cache)": "not measured",
        "systemd build ≤ 0.6 s wall (issue 15)": "NOT MET",  # median 0.8
        "systemd first build ≤ 0.5× dracut-systemd (issue 15)": "not measured",
    }
    by["bootgen-systemd-cold"] = row("bootgen-systemd-cold", [2.9], 7_000_000)
    by["bootgen-systemd"] = row("bootgen-systemd", [0.5, 0.55, 0.9], 7_000_000)
    verdicts = {t.goal: t.verdict for t in build.targets(by)}
    assert verdicts["systemd first build ≤ 0.5× dracut-systemd (issue 15)"] == "met"  # 2.9 / 6
    assert verdicts["systemd build ≤ 0.6 s wall (issue 15)"] == "met"  # median 0.55


def test_bootgen_reported_seconds() -> None:
    out = "built x.img  (scripted stage one, kernel 6.1)\n  size      9.46 MB raw\n" \
          "  time      0.43 s\n"
    assert common.bootgen_reported_seconds(out) == 0.43
    assert common.bootgen_reported_seconds("no summary") is None


def test_peer_command_lines() -> None:
    out = Path("/tmp/x.img")
    sd = common.dracut_argv("systemd", "6.1.0-1-amd64", out)
    assert sd[sd.index("-m") + 1] == common.DRACUT_SYSTEMD_MODULES
    assert sd[sd.index("--kver") + 1] == "6.1.0-1-amd64" and sd[-1] == str(out)
    assert "-o" not in sd and "--no-hostonly" in sd
    sc = common.dracut_argv("scripted", "6.1.0-1-amd64", out)
    assert sc[sc.index("-o") + 1] == "systemd"
    assert "systemd" not in sc[sc.index("-m") + 1].split()
    default = common.dracut_argv("default", "6.1.0-1-amd64", out)
    assert "-m" not in default and "--no-hostonly" in default
    with pytest.raises(ValueError):
        common.dracut_argv("tiny", "k", out)
    assert common.mkinitramfs_argv("k", out)[1:] == ["-o", str(out), "k"]
    # every dracut image is built from dracut's defaults, whatever the host configured
    for argv in (sd, sc, default):
        confdir = Path(argv[argv.index("--confdir") + 1])
        assert argv[argv.index("--conf") + 1] == "/dev/null"
        assert confdir.is_dir() and not list(confdir.glob("*.conf"))


def test_parse_show_depends() -> None:
    text = ("insmod /lib/modules/k/kernel/drivers/virtio/virtio_ring.ko \n"
            "insmod /lib/modules/k/kernel/drivers/virtio/virtio.ko \n"
            "builtin crc32c\n"
            "insmod /lib/modules/k/kernel/arch/x86/crypto/crc32c-intel.ko \n"
            "insmod /lib/modules/k/kernel/drivers/virtio/virtio_ring.ko \n"
            "insmod /lib/modules/k/kernel/fs/ext4/ext4.ko opt=1\n")
    files = common.parse_show_depends(text, frozenset({"crc32c_intel"}))
    assert [Path(f).name for f in files] == ["virtio_ring.ko", "virtio.ko", "ext4.ko"]


def test_handmade_archive() -> None:
    init = common.HANDMADE_INIT.read_bytes()
    members = common.handmade_members(init, b"\x7fELF busybox", ["bin/sh", "sbin/insmod"],
                                      [("virtio", b"ko1"), ("virtio_pci", b"ko2")])
    data = compress.compress(cpio.write_newc(members), "zstd")
    (seg,) = compress.read_image(data)
    assert seg.compression == "zstd"
    got = {m.name: m for m in seg.members}
    assert got["init"].data == init and got["init"].mode == stat.S_IFREG | 0o755
    assert got["bin/sh"].is_symlink and got["bin/sh"].data == b"/bin/busybox"
    assert got["dev/console"].is_device and got["dev/console"].rdev == (5, 1)
    assert all(got[d].is_dir for d in ("proc", "sys", "dev", "newroot"))
    mods = sorted(n for n in got if n.startswith("lib/modules/") and n.endswith(".ko"))
    assert mods == ["lib/modules/01-virtio.ko", "lib/modules/02-virtio_pci.ko"]  # load order
    st = common.image_stats(data)
    assert st.compressed == len(data) and st.raw > len(data) - 64
    assert st.files == 4 and st.entries == len(seg.members)


def test_handmade_init_is_valid_shell() -> None:
    subprocess.run(["sh", "-n", str(common.HANDMADE_INIT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(common.HANDMADE_INIT)], check=True)


@needs_kernel
@pytest.mark.skipif(shutil.which("busybox") is None or shutil.which("modprobe") is None
                    and not Path("/usr/sbin/modprobe").exists(),
                    reason="needs busybox-static and modprobe")
def test_handmade_build_from_host(tmp_path: Path) -> None:
    assert KVER is not None
    out = tmp_path / "handmade.img"
    try:
        mods = common.build_handmade(KVER, out)
    except Exception as e:  # a dynamic busybox, modules missing...
        pytest.skip(f"cannot build the hand-made initrd here: {e}")
    assert mods[-1] == "ext4" and "crc32c_intel" not in mods
    # the generic crc32c is loaded when this kernel has it as a module (not built in)
    assert ("crc32c_generic" in mods) == ("crc32c_generic" in alias_providers("crc32c"))
    assert mods.index("virtio") < mods.index("virtio_pci") < mods.index("virtio_blk")
    names = {m.name for seg in compress.read_image(out.read_bytes()) for m in seg.members}
    assert {"init", "bin/busybox", "bin/sh", "sbin/switch_root"} <= names


def test_log_stages() -> None:
    boot = _load("boot")
    log = ("\x1b[0m[    0.000000] Linux version 6.1.0\r\n"
           "[    3.115483] Run /init as init process\r\n"
           "[    3.663168] virtio_blk virtio0: [vda] 131072 512-byte logical blocks\r\n"
           "[    4.141545] EXT4-fs (vda): mounted filesystem with ordered data mode.\r\n"
           "[    4.2] systemd[1]: Switching root.\r\n"
           "BOOTGEN-UPTIME 4.45\r\n")
    stages = boot.log_stages(log)
    assert stages == {"/init": 3.115483, "disk probed": 3.663168, "root mounted": 4.141545,
                      "switch root": 4.2, "real init": 4.45}
    assert boot.longest_step(stages) == "kernel → /init 3.12 s"
    del stages["/init"]
    assert boot.longest_step(stages) == "kernel → disk probed 3.66 s"
    assert boot.longest_step({}) == common.NA


def test_other_qemus(tmp_path: Path) -> None:
    for pid, comm in (("1", "systemd"), ("42", "qemu-system-x86"), ("43", "qemu-system-aar")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "comm").write_text(comm + "\n")
    (tmp_path / "self").mkdir()  # not a pid
    assert common.other_qemus(tmp_path) == 2


@needs_kernel
def test_bootgen_images_are_measured_from_their_manifest(tmp_path: Path) -> None:
    """A bootgen image's sizes come from its manifest; they agree with reading it back."""
    recipe = common.bootgen_recipe(REPO / "examples" / "luks.toml", "scripted")
    out = tmp_path / "i.img"
    assert KVER is not None
    subprocess.run(recipe.argv(KVER, out), check=True, capture_output=True)
    read_back = common.image_stats(out.read_bytes())
    from_manifest, why = common.try_image_stats(out)
    assert from_manifest is not None, why
    assert not common.manifest_path(out).exists()
    assert from_manifest.compressed == read_back.compressed
    assert from_manifest.raw == read_back.raw
    assert from_manifest.files == read_back.files
    assert from_manifest.compression == read_back.compression


def test_trusted_unlock_interval_from_the_console() -> None:
    trusted = _load("trusted")
    scripted = ("[   12.500000] bootgen: unlocking cryptroot (/dev/vda1) with the TPM\n"
                "bootgen: something else\n"
                "[   14.000000] bootgen: cryptroot unlocked with the TPM\n")
    assert trusted.unlock_seconds("scripted", scripted) == 1.5
    systemd = ("[   19.000000] systemd[1]: Reached target x\n"
               "\x1b[K[   20.100000] systemd[1]: Found device dev-disk-by\\x2dpartlabel-cryptroot"
               ".device - x\n"
               "[   21.000000] systemd[1]: Starting systemd-cryptsetup@cryptroot.service - x\n"
               "\x1b[K[   23.350000] systemd[1]: Finished systemd-cryptsetup@cryptroot.service"
               " - x\n")
    assert trusted.unlock_seconds("systemd", systemd) == 3.25
    assert trusted.unlock_seconds("systemd", scripted) is None
    assert trusted.unlock_seconds("scripted", scripted.splitlines()[0]) is None


def test_verdict_needs_spreads_clear_of_the_goal() -> None:
    a, b = common.stats([5.0, 5.2, 5.4]), common.stats([10.0, 10.5, 11.0])
    spread = common.ratio_spread(a, b)
    assert spread == pytest.approx((5.0 / 11.0, 5.4 / 10.0))
    assert common.Target("x ≤ 0.6", 0.5, 0.6, "0.5", spread=spread).verdict == "met"
    wide = common.ratio_spread(common.stats([5.0, 7.0]), b)
    assert wide is not None and wide[0] < 0.6 < wide[1]
    assert common.Target("x ≤ 0.6", 0.55, 0.6, "", spread=wide).verdict.startswith("undecided")
    assert common.ratio_spread(common.stats([5.0]), b) is None  # one run: no spread to judge


def test_layouts_tell_dracut_the_root(tmp_path: Path) -> None:
    boot = _load("boot")
    for name in ("lvm", "raid", "luks-keyfile", "network"):
        layout = boot.LAYOUTS[name].at(tmp_path)
        host = __import__("bootgen.description", fromlist=["load"]).load(layout.description)
        root = next(fs for fs in host.filesystems if fs.mountpoint == "/")
        assert f"root={root.device}" in layout.peer_params
        r = boot.recipe("dracut-systemd", layout)
        argv = r.argv("6.1.0-1-amd64", Path("/tmp/x.img"))
        assert argv[-1] == "/tmp/x.img"
        assert argv[argv.index("--add") + 1] == " ".join(layout.dracut_modules)
        assert boot.recipe("bootgen-systemd", layout).name == "bootgen-systemd"


def test_luks_keyfile_layout_gives_both_tools_the_same_key(tmp_path: Path) -> None:
    """The keyfile layout: bootgen's description embeds the key, dracut gets it with a crypttab
    that opens the same volume under the same name."""
    boot = _load("boot")
    from bootgen import description
    layout = boot.LAYOUTS["luks-keyfile"].at(tmp_path)
    assert layout.description.parent == tmp_path
    host = description.load(layout.description)
    (lk,) = host.luks
    assert lk.key_file is not None and Path(lk.key_file).read_bytes()
    name, device, key, kind = (tmp_path / "crypttab").read_text().split()
    assert (name, device, key, kind) == (lk.name, lk.device, lk.key_file, "luks")
    argv = boot.recipe("dracut-systemd", layout).argv("6.1.0-1-amd64", Path("/tmp/x.img"))
    assert argv[argv.index("--install") + 1] == lk.key_file
    assert argv[argv.index("--include") + 1:argv.index("--include") + 3] == [
        str(tmp_path / "crypttab"), "/etc/crypttab"]
    assert f"root=/dev/mapper/{lk.name}" in layout.peer_params
    # the same layout written again gives the same key (benchmark runs are comparable)
    again = tmp_path / "again"
    again.mkdir()
    boot.LAYOUTS["luks-keyfile"].at(again)
    assert (again / "cryptroot.key").read_bytes() == Path(lk.key_file).read_bytes()


def test_network_layout_waits_for_the_lease_in_no_image() -> None:
    """dracut's systemd-networkd module cannot wait for the network before its switch root;
    bootgen's would with rd.neednet=1: nobody is told to, so all do the same work."""
    boot = _load("boot")
    layout = boot.LAYOUTS["network"]
    assert not any(p.startswith("rd.neednet") for p in layout.bootgen_params + layout.peer_params)
    assert "ip=dhcp" in layout.peer_params and "virtio_net" in layout.dracut_drivers
