"""Unified kernel images booted by UEFI firmware (OVMF) from an ESP, Secure Boot enforced when
the description signs: the signed image boots, an unsigned or tampered one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootgen.description import load, loads
from bootgen.vm.verify import BootResult, UkiBoot, boot, prepare

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]
FLAVORS = ("scripted", "systemd")


def signed_host(tmp_path: Path) -> Path:
    """examples/uki.toml without `quiet`, so that the EFI stub says what it sees."""
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    for name in ("db.key", "db.crt"):
        (keys / name).write_bytes((EXAMPLES / "keys" / name).read_bytes())
    desc = tmp_path / "uki.toml"
    desc.write_text((EXAMPLES / "uki.toml").read_text().replace(', "quiet"', ""))
    return desc


def console(r: BootResult) -> str:
    return r.log.read_text(errors="replace")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_signed_uki_boots_with_secure_boot_enforced(flavor: str, tmp_path: Path) -> None:
    h = load(signed_host(tmp_path))
    r = boot(h, prepare(h, flavor, tmp_path), tmp_path, uki=UkiBoot())
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    text = console(r)
    assert "BdsDxe: starting Boot" in text  # the firmware loaded it from the ESP
    assert "EFI stub: UEFI Secure Boot is enabled." in text


@pytest.mark.parametrize("how", [UkiBoot(sign=False), UkiBoot(tamper=True)],
                         ids=["unsigned", "tampered"])
def test_unsigned_or_tampered_uki_is_refused(how: UkiBoot, tmp_path: Path) -> None:
    h = load(signed_host(tmp_path))
    r = boot(h, prepare(h, "scripted", tmp_path), tmp_path, uki=how)
    assert not r.passed
    assert r.reason.startswith("the firmware refused the image: BdsDxe: failed to load Boot")
    assert "Access Denied" in r.reason
    assert "Run /init" not in console(r) and "EFI stub" not in console(r)
    assert r.wall_seconds < 60  # stopped at the refusal, not at the boot timeout


def test_unsigned_uki_boots_without_secure_boot(tmp_path: Path) -> None:
    h = loads((EXAMPLES / "minimal.toml").read_text() + '\n[uki]\ncmdline = ["console=ttyS0"]\n')
    r = boot(h, prepare(h, "scripted", tmp_path), tmp_path, uki=UkiBoot())
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    assert "EFI stub: UEFI Secure Boot is enabled." not in console(r)
    assert "BdsDxe: starting Boot" in console(r)
