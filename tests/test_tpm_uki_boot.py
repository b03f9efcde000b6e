"""TPM2 and a signed UKI under OVMF with Secure Boot: the realistic PCR 7 case. The volume is
enrolled in a helper VM that boots the same way (OVMF, the same Secure Boot keys, a UKI signed
with the same key), so PCR 7 matches and the TPM unlocks; booted with Secure Boot turned off,
PCR 7 differs, the TPM refuses and the typed passphrase opens the volume."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootgen.description import load
from bootgen.vm.verify import UkiBoot, boot, prepare

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]
CASES = [("systemd", "unlock"), ("scripted", "secure-boot-off")]


def signed_tpm2_host(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    for name in ("db.key", "db.crt"):
        (keys / name).write_bytes((EXAMPLES / "keys" / name).read_bytes())
    desc = tmp_path / "tpm2-uki.toml"
    desc.write_text((EXAMPLES / "tpm2.toml").read_text() + '\n[uki]\ncmdline = ["console=ttyS0"]'
                    '\nsign_key = "keys/db.key"\nsign_cert = "keys/db.crt"\n')
    return desc


@pytest.mark.parametrize(("flavor", "mode"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_pcr7_under_secure_boot(flavor: str, mode: str, tmp_path: Path) -> None:
    h = load(signed_tpm2_host(tmp_path))
    prep = prepare(h, flavor, tmp_path, uki=True)
    assert prep.tpm is not None and prep.tpm.uefi
    r = boot(h, prep, tmp_path, uki=UkiBoot(), tpm_mode=mode)
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    log = r.log.read_text(errors="replace")
    if mode == "unlock":
        assert r.prompts == 0
        assert "EFI stub: UEFI Secure Boot is enabled." in log
    else:
        assert r.prompts == 1
        assert "EFI stub: UEFI Secure Boot is enabled." not in log
        assert "bootgen: the TPM did not unlock cryptroot; asking for the passphrase" in log
