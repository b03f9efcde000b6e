"""Unified kernel images: our PE writer checked with independent readers (objdump, pefile,
sbverify, systemd-measure), reproducibility, signing, `bootgen ls`, and the errors."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen.cli import main
from bootgen.description import loads
from bootgen.errors import BuildError, DescriptionError
from bootgen.image import uki
from bootgen.image.build import build
from bootgen.report import inspect

from .conftest import EXAMPLES, needs_kernel, needs_tool

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
needs_stub = pytest.mark.skipif(not STUB.is_file(), reason="systemd-boot-efi is not installed")
MEASURE = Path("/usr/lib/systemd/systemd-measure")
MINIMAL = (EXAMPLES / "minimal.toml").read_text()
SECTIONS = [(".osrel", b'NAME="Test"\nPRETTY_NAME="Test OS"\n'), (".cmdline", b"console=ttyS0"),
            (".uname", b"6.1.0-test"), (".initrd", os.urandom(5000)),
            (".linux", b"MZ" + os.urandom(70000))]


@pytest.fixture(scope="module")
def stub() -> bytes:
    if not STUB.is_file():
        pytest.skip("systemd-boot-efi is not installed")
    return STUB.read_bytes()


def objdump_sections(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, file offset) as GNU objdump reads them."""
    out = subprocess.run(["objdump", "-h", "-w", str(path)], capture_output=True, text=True,
                         check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m:
            found[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16))
    return found


@needs_tool("objdump")
def test_sections_as_objdump_reads_them(stub: bytes, tmp_path: Path) -> None:
    data = uki.build(stub, SECTIONS)
    path = tmp_path / "u.efi"
    path.write_bytes(data)
    seen = objdump_sections(path)
    for name, payload in SECTIONS:
        size, offset = seen[name]
        assert size == len(payload) or size == -(-len(payload) // 512) * 512
        assert data[offset:offset + len(payload)] == payload
    assert list(seen)[-5:] == [n for n, _ in SECTIONS]  # appended after the stub's own
    assert seen[".text"] == objdump_sections(STUB)[".text"]
    # the read-back gives the exact payloads (VirtualSize, not the padded raw size)
    parts = uki.read(data)
    assert all(parts.payloads[n] == p for n, p in SECTIONS)


def test_reproducible_and_timestamp(stub: bytes) -> None:
    a, b = uki.build(stub, SECTIONS), uki.build(stub, SECTIONS)
    assert a == b
    pe = uki.parse(a)
    assert struct.unpack_from("<I", a, pe.coff + 4)[0] == 0
    c = uki.build(stub, SECTIONS, stamp=1700000000)
    assert struct.unpack_from("<I", c, pe.coff + 4)[0] == 1700000000
    # no COFF symbol table left behind: the file ends with the last section's raw data
    last = uki.parse(a).sections[-1]
    assert len(a) == last.raw_pointer + last.raw_size
    assert struct.unpack_from("<II", a, pe.coff + 8) == (0, 0)


def test_checksum_matches_pefile(stub: bytes) -> None:
    pefile = pytest.importorskip("pefile")
    data = uki.build(stub, SECTIONS)
    p = pefile.PE(data=data)
    assert p.OPTIONAL_HEADER.CheckSum == p.generate_checksum() != 0
    assert p.OPTIONAL_HEADER.SizeOfImage % p.OPTIONAL_HEADER.SectionAlignment == 0
    assert p.OPTIONAL_HEADER.SizeOfImage >= max(s.VirtualAddress + s.Misc_VirtualSize
                                                for s in p.sections)
    # our checksum agrees with the stub's own, computed by its linker
    pe = uki.parse(stub)
    assert uki.pe_checksum(stub, pe.checksum_offset) == pe.checksum or pe.checksum == 0


@pytest.mark.skipif(not MEASURE.is_file(), reason="systemd-measure is not installed")
def test_pcr11_agrees_with_systemd_measure(tmp_path: Path) -> None:
    args = []
    for name, payload in SECTIONS:
        if name == ".uname":
            continue  # systemd-stub 252 neither knows nor measures .uname
        f = tmp_path / name[1:]
        f.write_bytes(payload)
        args.append(f"--{name[1:]}={f}")
    out = subprocess.run([str(MEASURE), "calculate", *args, "--bank=sha256", "--phase="],
                         capture_output=True, text=True, check=True).stdout
    expected = re.search(r"sha256=([0-9a-f]{64})", out)
    assert expected is not None, out
    assert uki.pcr11(dict(SECTIONS)) == expected.group(1).upper()


def test_refusals(stub: bytes) -> None:
    with pytest.raises(BuildError, match="cannot add a PE section named '.text'"):
        uki.build(stub, [(".text", b"x")])
    with pytest.raises(BuildError, match="toolongname") as e:
        uki.build(stub, [(".toolongname", b"x")])
    assert "at most 8 ASCII" in e.value.hint
    with pytest.raises(BuildError, match="room for 7 more section headers, not 8"):
        uki.build(stub, [(f".s{i}", b"x") for i in range(8)])
    with pytest.raises(BuildError, match="not a PE32\\+ EFI image: no MZ header"):
        uki.build(b"\x7fELF" + bytes(100), SECTIONS)
    signed = bytearray(stub)
    pe = uki.parse(stub)
    struct.pack_into("<II", signed, pe.optional + 112 + 8 * 4, len(stub), 8)
    with pytest.raises(BuildError, match="stub is signed already"):
        uki.build(bytes(signed), SECTIONS)


@needs_kernel
def test_kernel_release_from_the_bzimage() -> None:
    from .conftest import KVER

    path = Path(f"/boot/vmlinuz-{KVER}")
    if not os.access(path, os.R_OK):
        pytest.skip(f"{path} is not readable")
    assert uki.kernel_release(path.read_bytes()) == KVER
    assert uki.kernel_release(b"MZ" + bytes(1000)) is None


def fake_kernel(tmp_path: Path) -> Path:
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"MZ" + bytes(4094))
    return k


def uki_host(tmp_path: Path, extra: str = "") -> str:
    return MINIMAL + f'\n[uki]\nkernel = "{fake_kernel(tmp_path)}"\n' + extra


@needs_kernel
@needs_stub
def test_build_writes_initrd_and_uki(tmp_path: Path) -> None:
    h = loads(uki_host(tmp_path, 'cmdline = ["console=ttyS0", "quiet"]\n'))
    r = build(h, output=tmp_path / "i.img", uki_output=tmp_path / "u.efi", flavor="scripted")
    assert r.uki is not None and (tmp_path / "u.efi").read_bytes() == r.uki
    parts = uki.read(r.uki)
    assert parts.payloads[".initrd"] == (tmp_path / "i.img").read_bytes() == r.packed.data
    assert parts.text(".cmdline") == "console=ttyS0 quiet"
    assert parts.text(".uname") == r.image.spec.kver
    assert parts.payloads[".osrel"] == Path("/etc/os-release").read_bytes()
    assert not parts.signed
    again = build(h, output=None, uki_output=tmp_path / "u2.efi", flavor="scripted")
    assert again.uki == r.uki  # reproducible


@needs_kernel
@needs_stub
def test_boot_output_uki_and_secrets(tmp_path: Path) -> None:
    key = tmp_path / "root.key"
    key.write_bytes(b"k" * 64)
    luks = (EXAMPLES / "luks.toml").read_text().replace("tries = 3", f'key_file = "{key}"')
    text = luks.replace("[boot]", "[boot]\noutput = \"uki\"") + \
        f'\n[uki]\nkernel = "{fake_kernel(tmp_path)}"\n'
    with pytest.raises(BuildError, match="the image has secrets") as e:
        build(loads(text), output=tmp_path / "u.efi", flavor="scripted")
    assert "uki.secrets: the image has secrets" in e.value.format()
    assert "--secrets-out" in e.value.hint
    assert not (tmp_path / "u.efi").exists()
    r = build(loads(text), output=tmp_path / "u.efi", secrets_out=tmp_path / "s.cpio",
              flavor="scripted")
    inner = uki.read((tmp_path / "u.efi").read_bytes()).payloads[".initrd"]
    assert inner == r.packed.public and b"k" * 64 not in inner
    assert (tmp_path / "s.cpio").read_bytes() == r.packed.secrets
    r = build(loads(text + "secrets = true\n"), output=tmp_path / "u.efi", flavor="scripted")
    assert uki.read((tmp_path / "u.efi").read_bytes()).payloads[".initrd"] == r.packed.data
    assert (tmp_path / "u.efi").stat().st_mode & 0o777 == 0o600  # it holds a key now


@needs_tool("sbsign")
@needs_kernel
@needs_stub
def test_signed_uki_verifies_and_reads_back(tmp_path: Path) -> None:
    keys = EXAMPLES / "keys"
    shutil.copy(keys / "db.key", tmp_path / "db.key")
    shutil.copy(keys / "db.crt", tmp_path / "db.crt")
    desc = tmp_path / "host.toml"
    desc.write_text(uki_host(tmp_path, 'sign_key = "db.key"\nsign_cert = "db.crt"\n'))
    from bootgen.description import load

    h = load(desc)
    r = build(h, output=None, uki_output=tmp_path / "u.efi", flavor="scripted")
    assert r.uki is not None
    out = subprocess.run(["sbverify", "--cert", str(keys / "db.crt"), str(tmp_path / "u.efi")],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Signature verification OK" in out.stdout + out.stderr
    parts = uki.read(r.uki)
    assert parts.signed and parts.payloads[".initrd"] == r.packed.data
    unsigned = build(loads(uki_host(tmp_path)), output=None, uki_output=tmp_path / "n.efi",
                     flavor="scripted")
    assert unsigned.uki is not None
    assert uki.pcr11(uki.read(unsigned.uki).payloads) == uki.pcr11(parts.payloads)
    # sbsign stamps the signing time, but the signed image is the reproducible unsigned one
    # plus a signature: removing it gives back exactly the unsigned build's bytes
    subprocess.run(["sbattach", "--remove", str(tmp_path / "u.efi")], check=True,
                   capture_output=True)
    assert (tmp_path / "u.efi").read_bytes() == unsigned.uki
    # tampering breaks the signature
    bad = bytearray(r.uki)
    bad[uki.parse(r.uki).sections[-2].raw_pointer + 100] ^= 1
    (tmp_path / "bad.efi").write_bytes(bytes(bad))
    assert subprocess.run(["sbverify", "--cert", str(keys / "db.crt"),
                           str(tmp_path / "bad.efi")], capture_output=True).returncode != 0


def test_sign_key_needs_a_cert() -> None:
    with pytest.raises(DescriptionError) as e:
        loads(MINIMAL + '\n[uki]\nsign_key = "/k.pem"\ncmdline = ["bad param"]\n')
    text = e.value.format()
    assert "uki.sign_cert: sign_key and sign_cert go together" in text
    assert "uki.cmdline[0]: 'bad param' is not a kernel parameter" in text


@needs_kernel
@needs_stub
def test_kernel_of_another_release_is_refused(tmp_path: Path) -> None:
    from .conftest import KVER

    path = Path(f"/boot/vmlinuz-{KVER}")
    if not os.access(path, os.R_OK):
        pytest.skip(f"{path} is not readable")
    h = loads(MINIMAL + f'\n[uki]\nkernel = "{path}"\n')
    with pytest.raises(BuildError, match=f"is kernel {KVER}, the initrd is for 9.9-other"):
        uki.make(h, b"", "9.9-other")


@needs_kernel
@needs_stub
def test_ls_and_diff_read_a_uki(tmp_path: Path) -> None:
    h = loads(uki_host(tmp_path, 'cmdline = ["console=ttyS0"]\n'))
    build(h, output=tmp_path / "i.img", uki_output=tmp_path / "u.efi", flavor="scripted")
    res = CliRunner().invoke(main, ["ls", str(tmp_path / "u.efi")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "== unified kernel image: 13 sections, unsigned"
    assert any(re.fullmatch(r"  \.initrd +\d+ bytes at 0x[0-9a-f]{8}", ln) for ln in lines)
    assert "  cmdline   console=ttyS0" in lines
    digest = uki.pcr11(uki.read((tmp_path / "u.efi").read_bytes()).payloads)
    assert f"  pcr11     sha256 {digest} (systemd-stub 252)" in lines
    initrd_listing = CliRunner().invoke(main, ["ls", str(tmp_path / "i.img")]).output
    assert res.output.endswith(initrd_listing)
    assert inspect.diff_lines(tmp_path / "u.efi", tmp_path / "i.img") == []
    (tmp_path / "bad.efi").write_bytes(b"MZ" + bytes(10))
    res = CliRunner().invoke(main, ["ls", str(tmp_path / "bad.efi")])
    assert res.exit_code == 2
    assert "is not a PE32+ EFI image: truncated headers" in res.output
