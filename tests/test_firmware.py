"""UEFI test machines without booting: OVMF discovery, the ESP image (read back with mtools),
Secure Boot variable stores (read back with virt-firmware) and the QEMU arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bootgen.errors import BuildError
from bootgen.vm import firmware
from bootgen.vm.qemu import Drive, Firmware, QemuConfig, qemu_argv

from .conftest import EXAMPLES, needs_tool

needs_ovmf = pytest.mark.skipif(not Path("/usr/share/OVMF/OVMF_VARS_4M.fd").is_file() and
                                not firmware.DESCRIPTORS.is_dir(), reason="no OVMF")


@needs_ovmf
def test_ovmf_with_and_without_secure_boot() -> None:
    plain, secure = firmware.ovmf(False), firmware.ovmf(True)
    assert plain.code.is_file() and secure.code.is_file() and plain.code != secure.code
    assert "secboot" in secure.code.name or "secure" in secure.code.name.lower()
    assert plain.vars_template.stat().st_size == secure.vars_template.stat().st_size


@needs_tool("mcopy")
def test_esp_image_holds_the_loader_and_is_reproducible(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    loader = b"MZ" + bytes(range(256)) * 4000
    a = firmware.esp_image(tmp_path / "a.img", loader)
    b = firmware.esp_image(tmp_path / "b.img", loader)
    assert a.read_bytes() == b.read_bytes()
    out = subprocess.run(["mtype", "-i", str(a), "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True,
                         check=True).stdout
    assert out == loader
    listing = subprocess.run(["mdir", "-i", str(a), "::/EFI/BOOT"], capture_output=True,
                             text=True, check=True).stdout
    assert "BOOTX64  EFI" in listing
    assert a.stat().st_size >= 32 << 20


@needs_ovmf
def test_secure_vars_enroll_the_certificate(tmp_path: Path) -> None:
    pytest.importorskip("virt.firmware")
    from virt.firmware.varstore.edk2 import Edk2VarStore

    cert = EXAMPLES / "keys" / "db.crt"
    store = firmware.secure_vars(cert, cache=tmp_path)
    assert firmware.secure_vars(cert, cache=tmp_path) == store  # cached
    varlist = Edk2VarStore(str(store)).get_varlist()
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    for name in ("PK", "KEK", "db"):
        assert der in bytes(varlist[name].data), name
    assert bytes(varlist["SecureBootEnable"].data) == b"\x01"
    with pytest.raises(BuildError, match="cannot enroll"):
        bad = tmp_path / "bad.pem"
        bad.write_text("not a certificate\n")
        firmware.secure_vars(bad, cache=tmp_path)


def test_uefi_tpm_and_monitor_arguments() -> None:
    cfg = QemuConfig(kernel=None, initrd=None, append="", machine="q35",
                     firmware=Firmware("/c.fd", "/v,1.fd", secure=True), tpm_socket="/t/s",
                     monitor_socket="/m/s", drives=(Drive("/esp", interface="ide"),))
    argv = qemu_argv(cfg, kvm=False)
    assert "-kernel" not in argv and "-append" not in argv and "-initrd" not in argv
    assert argv[argv.index("-machine") + 1] == "q35,smm=on"
    assert "driver=cfi.pflash01,property=secure,value=on" in argv
    assert "if=pflash,format=raw,unit=0,file=/c.fd,readonly=on" in argv
    assert "if=pflash,format=raw,unit=1,file=/v,,1.fd" in argv
    assert argv[argv.index("-monitor") + 1] == "unix:/m/s,server=on,wait=off"
    assert "socket,id=chrtpm,path=/t/s" in argv
    assert "tpm-tis,tpmdev=tpm0" in argv
    plain = qemu_argv(QemuConfig(kernel="/k", initrd=None, append="x",
                                 firmware=Firmware("/c", "/v")), kvm=False)
    assert plain[plain.index("-machine") + 1] == "q35"
    assert "-global" not in plain and plain[plain.index("-kernel") + 1] == "/k"
