"""LUKS boots in both stage ones: passphrases typed at the console, keyfiles, fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootgen.config.schema import Host
from bootgen.description import loads
from bootgen.image.build import build
from bootgen.vm import qemu
from bootgen.vm.diskbuild import build_disks
from bootgen.vm.luksdisk import TEST_PASSPHRASE
from bootgen.vm.verify import BootResult, Prepared, boot, prepare

from .conftest import EXAMPLES, KVER, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]
FLAVORS = ("scripted", "systemd")
LUKS = (EXAMPLES / "luks.toml").read_text()


def passed(r: BootResult) -> BootResult:
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    return r


def no_loaded_module_called_failed(r: BootResult) -> None:
    """A module that does not fit this CPU (aes: padlock-aes, aesni without AES-NI) does not
    make the scripted init call the modules that loaded failed."""
    for line in r.log.read_text(errors="replace").splitlines():
        if "bootgen:" in line and "module" in line and "loading modules" not in line:
            assert not {"virtio_blk", "ext4", "dm_mod", "dm_crypt"} & set(line.split()), line


@pytest.mark.parametrize("flavor", FLAVORS)
def test_wrong_passphrase_then_the_right_one(flavor: str, tmp_path: Path) -> None:
    h = loads(LUKS)
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path,
                    passphrases=("not-the-passphrase", TEST_PASSPHRASE)))
    assert r.prompts == 2


@pytest.mark.parametrize("flavor", FLAVORS)
def test_embedded_keyfile_needs_no_prompt(flavor: str, tmp_path: Path) -> None:
    key = tmp_path / "root.key"
    key.write_bytes(bytes(range(64)))
    h = loads(LUKS.replace("tries = 3", f'tries = 3\nkey_file = "{key}"'))
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path, passphrases=("wrong",)))
    assert r.prompts == 0
    no_loaded_module_called_failed(r)


SECOND = LUKS + """
[[luks]]
name = "cryptvar"
device = "PARTLABEL=cryptvar"

[[filesystems]]
mountpoint = "/var"
device = "/dev/mapper/cryptvar"
fstype = "ext4"
needed_for_boot = true
"""


@pytest.mark.parametrize("flavor", FLAVORS)
def test_second_encrypted_volume_needed_for_boot(flavor: str, tmp_path: Path) -> None:
    h = loads(SECOND)
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path))
    # one passphrase, asked once: systemd-cryptsetup tries the first one (kept in the kernel
    # keyring) on the second volume, the scripted init tries the last one that worked
    assert r.prompts == 1
    assert r.result["mounts"] == "ok"


KEYDEV = LUKS.replace("tries = 3", 'tries = 3\nkey_file_device = "LABEL=keys"\n'
                      'key_file_path = "{path}"{fallback}') + """
[[filesystems]]
mountpoint = "/keys"
device = "LABEL=keys"
fstype = "ext4"
"""


def keydev_host(path: str, fallback: bool) -> Host:
    return loads(KEYDEV.format(path=path, fallback="\nfallback_to_password = true"
                               if fallback else ""))


@pytest.mark.parametrize("flavor", FLAVORS)
def test_keyfile_on_another_device(flavor: str, tmp_path: Path) -> None:
    h = keydev_host("/root.key", False)
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path, passphrases=("wrong",)))
    assert r.prompts == 0
    no_loaded_module_called_failed(r)


def prepared_with_missing_key(flavor: str, tmp_path: Path, fallback: bool) -> tuple[Host,
                                                                                      Prepared]:
    """Disks with the keyfile at /root.key; an image that looks for /missing.key."""
    built, testroot = build_disks(keydev_host("/root.key", fallback), tmp_path)
    h = keydev_host("/missing.key", fallback)
    img = tmp_path / f"{flavor}.img"
    r = build(h, output=img, flavor=flavor)
    drives = tuple(qemu.Drive(str(d.path), serial=d.spec.serial, snapshot=True) for d in built)
    assert KVER is not None
    return h, Prepared(flavor, img, len(r.packed.data), r.seconds, drives, testroot,
                       qemu.default_kernel(KVER), r)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_missing_keyfile_falls_back_to_the_passphrase(flavor: str, tmp_path: Path) -> None:
    h, prep = prepared_with_missing_key(flavor, tmp_path, fallback=True)
    r = passed(boot(h, prep, tmp_path))
    assert r.prompts == 1


@pytest.mark.parametrize("flavor", FLAVORS)
def test_missing_keyfile_without_fallback_fails_clearly(flavor: str, tmp_path: Path) -> None:
    h, prep = prepared_with_missing_key(flavor, tmp_path, fallback=False)
    r = boot(h, prep, tmp_path)
    assert not r.passed
    assert r.prompts == 0
    text = "\n".join(r.tail)
    if flavor == "scripted":
        assert "bootgen: FAILED: could not unlock cryptroot with its keyfile" in text
        assert "s) rescue shell" in text
    else:
        assert "bootgen: stage one failed; failed units:" in text
        assert "systemd-cryptsetup@cryptroot.service" in text
        assert r.reason.endswith("failed units: systemd-cryptsetup@cryptroot.service"), r.reason
