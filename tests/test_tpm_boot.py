"""TPM2 unlock booted for real: an emulated TPM (swtpm), test volumes enrolled against it in a
helper VM (cached), both stage ones. The TPM unlocks without a prompt; enrolled against
another PCR 7 value it refuses and the typed passphrase opens the volume; without any TPM
stage one asks after a bounded wait instead of hanging."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootgen.description import loads
from bootgen.vm.verify import boot, prepare

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]
FLAVORS = ("scripted", "systemd")
TPM2 = (EXAMPLES / "tpm2.toml").read_text()


CASES = [(f, m) for f in FLAVORS for m in ("unlock", "changed")] + [("systemd", "absent")]


# no TPM at all: the systemd flavour is where a hang was possible (systemd-cryptsetup waits for
# a TPM device); the scripted hook's bounded wait is checked without booting (test_tpm2.py)
@pytest.mark.parametrize(("flavor", "mode"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_tpm2(flavor: str, mode: str, tmp_path: Path) -> None:
    h = loads(TPM2)
    prep = prepare(h, flavor, tmp_path)
    assert prep.tpm is not None and prep.tpm.changed is not None
    r = boot(h, prep, tmp_path, tpm_mode=mode, passphrases=("wrong", "bootgen-test-passphrase"))
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    log = r.log.read_text(errors="replace")
    if mode == "unlock":
        assert r.prompts == 0
        if flavor == "scripted":
            assert "bootgen: the TPM did not unlock" not in log
    else:
        assert r.prompts == 2  # a wrong passphrase first: the prompt really checks it
    if flavor == "scripted" and mode == "changed":
        assert "bootgen: the TPM did not unlock cryptroot; asking for the passphrase" in log
