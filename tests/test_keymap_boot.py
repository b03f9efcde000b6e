"""The console keymap booted for real: the LUKS passphrase is typed as key presses on the
emulated PS/2 keyboard (QEMU monitor `sendkey`) on the VT, the verdict comes on the serial line.

The first attempt presses the keys a US keyboard has '-' on ("minus"): with the German map
loaded they type 'ß', so the volume must stay locked; the second presses the German '-' key
("slash", which types '/' on a US map) and must open it. Without the keymap the first attempt
would succeed and the second fail: both prompts prove the map is in force."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootgen.description import load
from bootgen.image import keymap
from bootgen.vm.luksdisk import TEST_PASSPHRASE
from bootgen.vm.verify import boot, prepare, typing_keymap

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]
US_HABIT = TEST_PASSPHRASE.replace("-", "ß")  # what the US '-' key types on a German map


@pytest.mark.parametrize("flavor", ["scripted", "systemd"])
def test_passphrase_typed_through_the_german_keymap(flavor: str, tmp_path: Path) -> None:
    h = load(EXAMPLES / "keymap.toml")
    prep = prepare(h, flavor, tmp_path)
    bmap = typing_keymap(prep)
    assert bmap is not None
    assert "minus" in keymap.keys_for(US_HABIT, bmap)
    assert "slash" in keymap.keys_for(TEST_PASSPHRASE, bmap)
    r = boot(h, prep, tmp_path, passphrases=(US_HABIT, TEST_PASSPHRASE))
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    assert r.prompts == 2
    log = r.log.read_text(errors="replace")
    assert "bootgen: keymap de loaded" in log
    assert "bootgen: console font Lat2-Terminus16 loaded" in log
