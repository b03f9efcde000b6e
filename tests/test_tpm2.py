"""TPM2 unlock without booting: the settings and their checks, crypttab, the scripted hook
(shellcheck), and the dlopen'ed libraries the resolver must bring (token plugin, tss2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bootgen.archive.compress import read_image
from bootgen.description import loads
from bootgen.errors import DescriptionError
from bootgen.features.luks import TOKEN_PLUGIN, crypttab_line
from bootgen.image.build import assemble, build
from bootgen.vm import tpm

from .conftest import EXAMPLES, needs_kernel, needs_tool

TPM2 = (EXAMPLES / "tpm2.toml").read_text()
needs_tss2 = pytest.mark.skipif(not Path(TOKEN_PLUGIN).is_file(),
                                reason="systemd's TPM2 token plugin is not installed")


def test_crypttab_line_and_defaults() -> None:
    h = loads(TPM2)
    assert crypttab_line(h.luks[0]) == (
        "cryptroot PARTLABEL=cryptroot none "
        "luks,tries=3,tpm2-device=auto,token-timeout=10s,tpm2-pcrs=7")
    h = loads(TPM2.replace("tpm2_pcrs = [7]", "tpm2_pcrs = [16, 7, 7]"))
    assert crypttab_line(h.luks[0]).endswith(",tpm2-pcrs=7+16")
    h = loads(TPM2.replace("tpm2_pcrs = [7]", "tpm2_pcrs = []"))
    assert crypttab_line(h.luks[0]).endswith("tpm2-device=auto,token-timeout=10s")
    assert loads(TPM2.replace("tpm2_pcrs = [7]\n", "")).luks[0].tpm2_pcrs == (7,)


def test_checks() -> None:
    with pytest.raises(DescriptionError) as e:
        loads(TPM2.replace("tpm2_pcrs = [7]", "tpm2_pcrs = [24]"))
    assert "luks[0].tpm2_pcrs[0]: PCR 24 does not exist" in e.value.format()
    with pytest.raises(DescriptionError) as e:
        loads(TPM2.replace("tpm2_pcrs = [7]", 'key_file = "/k"'))
    assert "luks[0].tpm2: tpm2 and a keyfile exclude each other" in e.value.format()
    with pytest.raises(DescriptionError) as e:
        loads(TPM2.replace("tpm2 = true", "tpm2_pin = true"))
    assert "luks[0].tpm2_pin: has no effect without tpm2 = true" in e.value.format()


@needs_kernel
@needs_tss2
@pytest.mark.parametrize("flavor", ["systemd", "scripted"])
def test_dlopen_libraries_are_resolved(flavor: str) -> None:
    """Nothing NEEDs these: only the declared dlopen edges bring them, with their closure."""
    image = assemble(loads(TPM2), flavor=flavor)
    paths = {e.path: e for e in image.entries}
    plugin = paths[TOKEN_PLUGIN]
    assert plugin.feature == "luks" and plugin.chain[0] == "luks.tpm2"
    for so in ("libtss2-esys.so.0", "libtss2-rc.so.0", "libtss2-mu.so.0",
               "libtss2-tcti-device.so.0", "libtss2-sys.so.1"):
        assert f"/usr/lib/x86_64-linux-gnu/{so}" in paths, so
    # the plugin NEEDs libsystemd-shared, found through its RUNPATH: the scripted image gets it
    # only through this chain
    shared = [p for p in paths if p.endswith("/systemd/libsystemd-shared-252.so")
              or "libsystemd-shared-" in p]
    assert shared
    without = {e.path for e in assemble(loads((EXAMPLES / "luks.toml").read_text()),
                                        flavor=flavor).entries}
    assert TOKEN_PLUGIN not in without
    assert not any("libtss2" in p for p in without)


@needs_kernel
@needs_tss2
@needs_tool("shellcheck")
def test_scripted_hook_tries_the_tpm_first(tmp_path: Path) -> None:
    r = build(loads(TPM2), output=tmp_path / "i.img", flavor="scripted")
    init = next(m.data for s in read_image(r.packed.public) for m in s.members
                if m.name == "init").decode()
    call = next(line.strip() for line in init.splitlines() if "luks_tpm2 cryptroot" in line)
    assert call == "luks_tpm2 cryptroot PARTLABEL=cryptroot '' 0 0 ||"
    assert "--token-only --token-type systemd-tpm2" in init
    assert "while [ ! -c /dev/tpmrm0 ]" in init  # no TPM: bounded wait, then the prompt
    script = tmp_path / "init"
    script.write_text(init)
    subprocess.run(["shellcheck", "-s", "sh", str(script)], check=True)
    # without tpm2 the hook is what it was: nothing about the TPM
    plain = build(loads((EXAMPLES / "luks.toml").read_text()), output=None, flavor="scripted")
    text = next(m.data for s in read_image(plain.packed.public) for m in s.members
                if m.name == "init")
    assert b"tpm" not in text.lower()


def test_enroll_script() -> None:
    s = tpm.enroll_script((7, 16), False, ["/dev/vda1"], ["/dev/vdb1"])
    lines = s.splitlines()
    assert "systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=7+16 /dev/vda1 || exit 11" in lines
    extend = lines.index(f"tpm2_pcrextend 7:sha256={tpm.CHANGED_DIGEST} || exit 12")
    assert lines.index("systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=7+16 /dev/vdb1 "
                       "|| exit 13") > extend > 2
    assert "--tpm2-with-pin=yes" in tpm.enroll_script((7,), True, ["/dev/vda"], [])
    assert "tpm2_pcrextend" not in tpm.enroll_script((), False, ["/dev/vda"], [])


@needs_tool("swtpm")
def test_swtpm_starts_and_stops(tmp_path: Path) -> None:
    with tpm.Swtpm(None, tmp_path / "swtpm.log") as t:
        assert Path(t.socket).is_socket()
        assert len(t.socket) < 100
        folder = Path(t.socket).parent
    assert not folder.exists()


def test_boot_checks_how_the_volumes_were_enrolled(tmp_path: Path) -> None:
    """A fixture enrolled for -kernel boots cannot serve a UKI boot (PCR 7 differs), and
    Secure Boot can be turned off only for a signed UKI: refused before anything starts."""
    from bootgen.errors import UsageError
    from bootgen.vm import disks
    from bootgen.vm.verify import Prepared, UkiBoot, boot

    enrolled = tpm.Enrolled(tmp_path, (), None, uefi=False)
    prep = Prepared("scripted", tmp_path / "i.img", 0, 0.0, (), disks.TestRoot("x", ()),
                    "/k", None, enrolled)
    with pytest.raises(UsageError, match="enrolled for -kernel boots, this boot is not one"):
        boot(loads(TPM2), prep, tmp_path, uki=UkiBoot())
    with pytest.raises(UsageError, match="Secure Boot can be turned off only in UKI boots"):
        boot(loads(TPM2), prep, tmp_path, tpm_mode="secure-boot-off")
    assert list(tmp_path.iterdir()) == []  # nothing started
