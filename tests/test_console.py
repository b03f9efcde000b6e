"""The console keymap and font without booting: the compiled map (checked against the
kernel's US layout and known German keys), its cache, the settings, both flavours' files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bootgen.archive.compress import read_image
from bootgen.description import loads
from bootgen.errors import BuildError, DescriptionError
from bootgen.image import keymap
from bootgen.image.build import build

from .conftest import EXAMPLES, needs_kernel, needs_tool

KEYMAP = (EXAMPLES / "keymap.toml").read_text()
needs_kbd = pytest.mark.skipif(
    any(__import__("shutil").which(t) is None for t in ("ckbcomp", "loadkeys")) or
    not Path(keymap.XKB, "symbols", "de").is_file(), reason="console-setup or kbd missing")


@needs_kbd
def test_compiled_maps(tmp_path: Path) -> None:
    de = keymap.compile_keymap("de", cache=tmp_path)
    assert de.startswith(b"bkeymap") and len(de) == 33031 or keymap.check_bmap(de, "de")
    us = keymap.compile_keymap("us", cache=tmp_path)
    text = "bootgen-test-passphrase zy/=[]"
    # the compiled US map types like the kernel's built-in one
    assert keymap.keys_for(text, us) == keymap.keys_for(text, None)
    # German keys (console-setup's layout): y/z swapped, '-' right of '.', '/' and '=' shifted
    assert keymap.keys_for("zy-/=ß", de) == ["y", "z", "slash", "shift-7", "shift-0", "minus"]
    with pytest.raises(BuildError, match="cannot type '€'"):
        keymap.keys_for("€", us)


@needs_kbd
def test_cache_is_used_and_checked(tmp_path: Path) -> None:
    first = keymap.compile_keymap("de", cache=tmp_path)
    (entry,) = tmp_path.glob("*.bmap")
    assert keymap.compile_keymap("de", cache=tmp_path) == first
    entry.write_bytes(b"bkeymap-damaged")
    assert keymap.compile_keymap("de", cache=tmp_path) == first  # made again, not trusted
    assert entry.read_bytes() == first
    nodead = keymap.compile_keymap("de", "nodeadkeys", cache=tmp_path)
    assert nodead != first and len(list(tmp_path.glob("*.bmap"))) == 2
    with pytest.raises(BuildError, match="no XKB layout 'xx'"):
        keymap.compile_keymap("xx", cache=tmp_path)


def test_settings() -> None:
    with pytest.raises(DescriptionError) as e:
        loads(KEYMAP.replace('keymap = "de"', 'keymap = "De Utsch"'))
    assert "console.keymap: 'De Utsch' is not an XKB layout name" in e.value.format()
    with pytest.raises(DescriptionError) as e:
        loads(KEYMAP.replace('keymap = "de"', 'keymap_variant = "nodeadkeys"'))
    assert "console.keymap_variant: a variant needs a keymap" in e.value.format()


def files(r: object) -> dict[str, bytes]:
    return {m.name: m.data for s in read_image(r.packed.public)  # type: ignore[attr-defined]
            for m in s.members}


@needs_kernel
@needs_kbd
@needs_tool("shellcheck")
@pytest.mark.parametrize("flavor", ["scripted", "systemd"])
def test_image_loads_the_map_before_any_prompt(flavor: str, tmp_path: Path) -> None:
    r = build(loads(KEYMAP), output=None, flavor=flavor)
    got = files(r)
    assert got["etc/bootgen/keymap.bmap"] == keymap.compile_keymap("de")
    assert got["etc/bootgen/font.psf"][:2] in (b"\x36\x04", b"\x72\xb5")  # PSF1 / PSF2 magic
    assert got["usr/bin/loadkmap"] == b"busybox" and got["usr/bin/loadfont"] == b"busybox"
    if flavor == "systemd":
        unit = got["usr/lib/systemd/system/bootgen-console.service"].decode()
        assert "Before=sysinit.target cryptsetup-pre.target systemd-ask-password-console" \
               ".service" in unit
        assert "ExecStart=/bin/sh -c 'loadkmap < /etc/bootgen/keymap.bmap" in unit
        assert got["usr/lib/systemd/system/sysinit.target.wants/bootgen-console.service"] == \
            b"../bootgen-console.service"
        return
    init = got["init"].decode()
    assert init.index("loadkmap < /etc/bootgen/keymap.bmap") < init.index("askpass()")
    assert "for ap_con in ${ap_consoles:-console}" in init  # asked on every console
    script = tmp_path / "init"
    script.write_text(init)
    subprocess.run(["shellcheck", "-s", "sh", str(script)], check=True)
