"""Both stage ones, checked without booting: shell passes sh -n and shellcheck, units pass
systemd-analyze verify on the unpacked image, the image holds what the units run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bootgen.config.schema import Host
from bootgen.description import loads
from bootgen.image.build import build

from .conftest import EXAMPLES, needs_kernel, needs_tool, unpack_image

pytestmark = needs_kernel

TWO_MOUNTS = (EXAMPLES / "minimal.toml").read_text() + """
[[filesystems]]
mountpoint = "/var"
device = "PARTUUID=6a0f4a34-5d5e-4b57-9d44-2a1e0c3c7f10"
fstype = "ext4"
needed_for_boot = true
"""


def unpack(host: Host, flavor: str, tmp_path: Path) -> Path:
    img = tmp_path / f"{flavor}.img"
    build(host, output=img, flavor=flavor)
    return unpack_image(img, tmp_path / flavor)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(loads(TWO_MOUNTS), "scripted", tmp_path_factory.mktemp("s"))


@pytest.fixture(scope="module")
def systemd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(loads(TWO_MOUNTS), "systemd", tmp_path_factory.mktemp("d"))


def test_scripted_init_parses(scripted: Path) -> None:
    subprocess.run(["sh", "-n", scripted / "init"], check=True)
    subprocess.run(["busybox", "sh", "-n", scripted / "init"], check=True)


@needs_tool("shellcheck")
def test_scripted_init_shellcheck(scripted: Path) -> None:
    res = subprocess.run(["shellcheck", "-s", "sh", scripted / "init"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout


def test_scripted_init_mounts_the_second_filesystem(scripted: Path) -> None:
    text = (scripted / "init").read_text()
    assert "fs_dev=PARTUUID=6a0f4a34-5d5e-4b57-9d44-2a1e0c3c7f10\nfs_mnt=/var\n" in text
    assert 'wait_device "$fs_dev" "$fs_mnt"' in text
    assert 'mkdir -p "/sysroot$fs_mnt"' in text


def test_scripted_contains_only_what_it_uses(scripted: Path) -> None:
    assert not (scripted / "usr/lib/systemd").exists()
    assert (scripted / "usr/bin/busybox").is_file()
    assert (scripted / "usr/sbin/switch_root").is_symlink()
    assert (scripted / "usr/sbin/fsck.ext4").is_file()


@needs_tool("shellcheck")
@pytest.mark.parametrize("script", ["usr/lib/systemd/system-generators/bootgen-generator",
                                    "usr/lib/bootgen/stop", "usr/lib/bootgen/init-check"])
def test_systemd_scripts_shellcheck(systemd: Path, script: str) -> None:
    res = subprocess.run(["shellcheck", "-s", "sh", systemd / script], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout


def test_systemd_generator_writes_the_root_mount(systemd: Path, tmp_path: Path) -> None:
    gen = systemd / "usr/lib/systemd/system-generators/bootgen-generator"
    text = gen.read_text().replace("/proc/cmdline", str(tmp_path / "cmdline"))
    (tmp_path / "gen").write_text(text)
    for cmdline, expect in [("console=ttyS0 ro rootflags=noatime", "Options=rw,noatime,ro"),
                            ("console=ttyS0", "Options=rw")]:
        (tmp_path / "cmdline").write_text(cmdline + "\n")
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        subprocess.run(["sh", tmp_path / "gen", out], check=True)
        unit = (out / "sysroot.mount").read_text()
        assert "What=/dev/disk/by-label/root" in unit
        assert expect in unit
        assert "Requires=systemd-fsck@dev-disk-by\\x2dlabel-root.service" in unit
        assert (out / "initrd-root-fs.target.requires/sysroot.mount").is_symlink()
    (tmp_path / "cmdline").write_text("root=/dev/vdb rd.break=pre-mount\n")
    out = tmp_path / "out2"
    out.mkdir()
    subprocess.run(["sh", tmp_path / "gen", out], check=True)
    assert not (out / "sysroot.mount").exists()  # systemd-fstab-generator's job now
    assert (out / "initrd.target.wants/bootgen-break@pre-mount.service").is_symlink()
    assert "Before=sysroot.mount" in (out / "bootgen-break@pre-mount.service.d/order.conf"
                                      ).read_text()


@needs_tool("systemd-analyze")
def test_systemd_units_verify(systemd: Path) -> None:
    units = sorted(p.name for p in (systemd / "usr/lib/systemd/system").iterdir()
                   if p.is_file() and "@." not in p.name)
    units += ["bootgen-break@pre-mount.service",
              "systemd-fsck@dev-disk-by\\x2dlabel-root.service"]
    res = subprocess.run(["systemd-analyze", "verify", f"--root={systemd}", *units],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "not executable" not in res.stderr
    assert "Unknown key" not in res.stderr


def test_systemd_layout(systemd: Path) -> None:
    assert Path(systemd / "init").readlink() == Path("usr/lib/systemd/systemd")
    for d in ("bin", "sbin", "lib", "lib64"):
        assert (systemd / d).is_symlink()
    assert (systemd / "etc/initrd-release").is_file()
    mount = (systemd / "usr/lib/systemd/system/sysroot-var.mount").read_text()
    assert "What=/dev/disk/by-partuuid/6a0f4a34-5d5e-4b57-9d44-2a1e0c3c7f10" in mount
    assert "Where=/sysroot/var" in mount
    assert (systemd / "usr/lib/systemd/system/initrd-fs.target.requires/sysroot-var.mount"
            ).is_symlink()
    assert "virtio_blk" in (systemd / "etc/modules-load.d/bootgen.conf").read_text().split()
    assert (systemd / "usr/lib/udev/rules.d/99-systemd.rules").is_file()


def test_systemd_link_is_configured_without_waiting_for_ipv6_dad() -> None:
    """networkd counts a link configured only once its IPv6 link-local address passed duplicate
    address detection (a second or more); stage one's .network files skip it, for DHCP and
    static addresses alike, so rd.neednet=1 waits for the lease, not for DAD."""
    from bootgen.image.plan import plan
    from bootgen.image.render import render

    network_toml = (EXAMPLES / "network.toml").read_text()
    static = network_toml.replace("dhcp = true", 'address = "10.0.2.20/24"')
    for text in (network_toml, static):
        spec = plan(loads(text), flavor="systemd", kver="6.1.0-test")
        units = [(g.content or b"").decode() for g in render(spec)
                 if g.path.startswith("/etc/systemd/network/95-bootgen-")]
        assert len(units) == 1
        network = units[0].split("[Network]\n", 1)[1]
        assert "IPv6DuplicateAddressDetection=0\n" in network
