"""LUKS in both stage ones, without booting: crypttab, the scripted hook, secrets kept apart."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from bootgen.archive.compress import read_image
from bootgen.description import loads
from bootgen.features.luks import crypttab_line
from bootgen.image.build import build

from .conftest import EXAMPLES, needs_kernel, needs_tool

pytestmark = needs_kernel

LUKS = (EXAMPLES / "luks.toml").read_text()


def host_with_key(tmp_path: Path, extra: str = "") -> str:
    key = tmp_path / "root.key"
    key.write_bytes(b"s3cret-key-material")
    header = tmp_path / "root.header"
    header.write_bytes(b"HEADER" * 10)
    return LUKS.replace('tries = 3', f'tries = 3\nkey_file = "{key}"\nheader = "{header}"'
                        f'\nallow_discards = true\nfallback_to_password = true{extra}')


def test_crypttab_options(tmp_path: Path) -> None:
    h = loads(host_with_key(tmp_path, '\noptions = ["no-read-workqueue"]'))
    assert crypttab_line(h.luks[0]) == (
        "cryptroot PARTLABEL=cryptroot /etc/bootgen/luks/cryptroot.key "
        "luks,tries=3,discard,header=/etc/bootgen/luks/cryptroot.header,no-read-workqueue")
    h = loads(LUKS.replace('tries = 3', 'tries = 5\ntimeout = 60\nkey_file_device = "LABEL=usb"\n'
                           'key_file_path = "/keys/root.key"\nkey_file_size = 64\n'
                           'fallback_to_password = true'))
    assert crypttab_line(h.luks[0]) == (
        "cryptroot PARTLABEL=cryptroot /keys/root.key:LABEL=usb "
        "luks,tries=5,timeout=60s,keyfile-size=64,keyfile-timeout=10s")
    h = loads(LUKS.replace('tries = 3', 'key_file_device = "LABEL=usb"\n'
                           'key_file_path = "/keys/root.key"'))
    assert crypttab_line(h.luks[0]) == (
        "cryptroot PARTLABEL=cryptroot /keys/root.key:LABEL=usb luks,tries=3,headless=yes")


@pytest.mark.parametrize("flavor", ["systemd", "scripted"])
def test_secrets_stay_out_of_the_main_archive(tmp_path: Path, flavor: str) -> None:
    h = loads(host_with_key(tmp_path))
    out = tmp_path / "i.img"
    r = build(h, output=out, flavor=flavor, manifest_path=tmp_path / "m.json")
    data = out.read_bytes()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert b"s3cret-key-material" not in r.packed.public
    segments = read_image(data)
    secret = {m.name: m.data for m in segments[-1].members}
    assert secret["etc/bootgen/luks/cryptroot.key"] == b"s3cret-key-material"
    assert secret["etc/bootgen/luks/cryptroot.header"] == b"HEADER" * 10
    rows = {e["path"]: e for e in json.loads((tmp_path / "m.json").read_text())["entries"]}
    assert rows["/etc/bootgen/luks/cryptroot.key"]["secret"] is True
    assert "sha256" not in rows["/etc/bootgen/luks/cryptroot.key"]
    # the public part is the same as without secrets: reproducible, key or no key
    (tmp_path / "other.key").write_bytes(b"another key")
    h2 = loads(host_with_key(tmp_path).replace(str(tmp_path / "root.key"),
                                               str(tmp_path / "other.key")))
    r2 = build(h2, output=tmp_path / "j.img", flavor=flavor)
    assert r2.packed.public == r.packed.public


def test_secrets_out_writes_a_separate_file(tmp_path: Path) -> None:
    h = loads(host_with_key(tmp_path))
    build(h, output=tmp_path / "i.img", secrets_out=tmp_path / "s.img")
    assert b"s3cret-key-material" not in (tmp_path / "i.img").read_bytes()
    assert b"s3cret-key-material" in (tmp_path / "s.img").read_bytes()
    assert stat.S_IMODE(os.stat(tmp_path / "i.img").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "s.img").st_mode) == 0o600


@pytest.mark.parametrize("flavor", ["systemd", "scripted"])
def test_modules_and_programs(tmp_path: Path, flavor: str) -> None:
    r = build(loads(LUKS), output=tmp_path / "i.img", flavor=flavor)
    assert {"dm_crypt", "dm_mod", "xts", "algif_skcipher"} <= set(r.image.modules)
    paths = {e.path for e in r.image.entries}
    if flavor == "systemd":
        assert "/usr/lib/systemd/systemd-cryptsetup" in paths
        assert "/usr/lib/udev/rules.d/55-dm.rules" in paths
        assert "/etc/crypttab" in paths
    else:
        assert "/usr/sbin/cryptsetup" in paths
        assert "/etc/crypttab" not in paths


@needs_tool("shellcheck")
def test_scripted_luks_hook_shellcheck(tmp_path: Path) -> None:
    h = loads(host_with_key(tmp_path))
    build(h, output=tmp_path / "i.img", flavor="scripted")
    raw = subprocess.run(["zstd", "-dc", tmp_path / "i.img"], capture_output=True).stdout
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet", "-D", dest, "init"], input=raw, check=True)
    text = (dest / "init").read_text()
    assert "luks_open cryptroot PARTLABEL=cryptroot /etc/bootgen/luks/cryptroot.key" in text
    res = subprocess.run(["shellcheck", "-s", "sh", dest / "init"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout


def test_second_passphrase_volume_waits_for_the_first(tmp_path: Path) -> None:
    """systemd: the second passphrase volume is opened after the first, so the cached
    passphrase is tried before anyone is asked again (one prompt, every time)."""
    from bootgen.image.plan import plan

    text = LUKS + """
[[luks]]
name = "crypt-var"
device = "PARTLABEL=cryptvar"

[[luks]]
name = "keyed"
device = "PARTLABEL=keyed"
key_file_device = "LABEL=keys"
key_file_path = "/k"
"""
    spec = plan(loads(text), flavor="systemd", kver="k")
    dropins = {g.path: g.content for g in spec.generated if "bootgen-ask-once" in g.path}
    assert dropins == {
        "/usr/lib/systemd/system/systemd-cryptsetup@crypt\\x2dvar.service.d/"
        "bootgen-ask-once.conf":
        b"# bootgen: ask once: try cryptroot's passphrase first\n"
        b"[Unit]\nAfter=systemd-cryptsetup@cryptroot.service\n"}
    assert not [g for g in plan(loads(LUKS), flavor="systemd", kver="k").generated
                if "ask-once" in g.path]
