"""`bootgen verify --disk` boots: the "real" disks are image files (the test-disk builder's,
plain ext4 and LUKS, shared through the session cache), booted read-only behind overlays in
verification mode. Every test takes their sha256 before and after and asserts it unchanged, and
asserts that the test root's init (which prints BOOTGEN-RESULT when it runs) never ran."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bootgen.config.schema import Host
from bootgen.description import loads
from bootgen.image.build import build
from bootgen.vm import hostverify
from bootgen.vm.diskbuild import build_disks
from bootgen.vm.luksdisk import TEST_PASSPHRASE
from bootgen.vm.verify import BootResult

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]

FLAVORS = ("scripted", "systemd")
ROOT_UUID = "5b0e7a2c-3d4f-4e5a-8b6c-7d8e9f0a1b2c"
PLAIN = f"""
[boot]
kernel_params = ["console=ttyS0"]
device_timeout = 120

[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]

[[filesystems]]
mountpoint = "/"
device = "UUID={ROOT_UUID}"
fstype = "ext4"
options = ["rw"]

[rescue]
shell_on_fail = true
allow_passwordless = true
"""
LUKS = (EXAMPLES / "luks.toml").read_text()
TESTROOT_INIT_RAN = "BOOTGEN-RESULT"  # qemu/testroot-init.sh prints it whenever it runs


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def disks(host: Host, tmp: Path) -> list[Path]:
    built, _ = build_disks(host, tmp)  # the session cache: built once, shared
    return [d.path for d in built]


def booted(host: Host, flavor: str, images: list[Path], tmp: Path,
           answers: list[str] | None = None, image: Path | None = None) -> BootResult:
    """Boot in verification mode; the images must be byte for byte what they were."""
    before = [sha256(p) for p in images]
    asked: list[tuple[str, bool]] = []

    def ask(prompt: str, again: bool) -> str | None:
        asked.append((prompt, again))
        return (answers or [])[len(asked) - 1] if len(asked) <= len(answers or []) else None

    [r] = hostverify.host_verify(host, [flavor], disks=[str(p) for p in images],
                                 workdir=tmp / "work", ask=ask, image=image)
    assert [sha256(p) for p in images] == before
    log = r.log.read_text(errors="replace")
    assert TESTROOT_INIT_RAN not in log, "the real root's init ran"
    assert r.prompts == len(asked)
    return r


@pytest.mark.parametrize("flavor", FLAVORS)
def test_plain_disk_read_only(flavor: str, tmp_path: Path) -> None:
    host = loads(PLAIN)
    images = disks(host, tmp_path)
    built = None
    if flavor == "scripted":  # `bootgen build`, then verify that very file (--image)
        built = tmp_path / "initrd.img"
        build(host, output=built, flavor=flavor)
    r = booted(host, flavor, images, tmp_path, image=built)
    assert r.image == (built or tmp_path / "work" / f"host-{flavor}.img")
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    assert r.result["verdict"] == "PASS"
    assert (r.result["root"], r.result["fstype"], r.result["init"]) == \
        ("/dev/vda", "ext4", "/sbin/init")
    assert r.result["os"] == "bootgen test root"  # PRETTY_NAME is absent: NAME
    assert r.result["mounts"] == "/:ext4:ro"
    # mounted without replaying the journal
    assert "EXT4-fs (vda): mounted filesystem without journal" in r.log.read_text()
    assert {"init", "verdict"} <= set(r.stages)
    assert r.stages["verdict"].guest > r.stages["init"].guest


@pytest.mark.parametrize("flavor", FLAVORS)
def test_luks_disk_after_a_wrong_passphrase(flavor: str, tmp_path: Path) -> None:
    host = loads(LUKS)
    images = disks(host, tmp_path)
    r = booted(host, flavor, images, tmp_path, answers=["not-the-passphrase", TEST_PASSPHRASE])
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    assert r.prompts == 2
    assert r.result["root"].startswith("/dev/mapper/cryptroot") or \
        r.result["root"].startswith("/dev/dm-"), r.result
    assert r.result["mounts"] == "/:ext4:ro"


def test_a_uuid_not_on_the_disks_fails_naming_it(tmp_path: Path) -> None:
    """The description names another UUID than the disk's: stage one stops, the report names
    the missing UUID and lists the devices that did appear (the disk with its real UUID)."""
    images = disks(loads(PLAIN), tmp_path)
    other = "deadbeef-0000-4000-8000-000000000000"
    host = loads(PLAIN.replace(ROOT_UUID, other).replace("device_timeout = 120",
                                                         "device_timeout = 5"))
    r = booted(host, "scripted", images, tmp_path)
    assert not r.passed
    assert r.result.get("verdict") == "FAIL"
    assert r.reason.startswith(f"stage one stopped at devices: never appeared: UUID={other} "
                               "(filesystems[0].device); the devices that did: vda (ext4, ")
    assert f"UUID={ROOT_UUID}" in r.reason
