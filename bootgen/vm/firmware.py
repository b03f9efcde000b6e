"""UEFI test machines: OVMF, an ESP image made without root, and Secure Boot variable stores.

- `ovmf(secure)` finds the firmware through QEMU's firmware descriptors
  (/usr/share/qemu/firmware/*.json), falling back to Debian's paths: the code image and the
  empty variable-store template. Every boot gets its own copy of the variable store (OVMF
  writes Boot#### entries into it).
- `esp_image` makes a FAT ESP with mkfs.vfat and mtools (no loop mount, no root), with the
  UKI as the removable-media loader \\EFI\\BOOT\\BOOTX64.EFI, which a fresh variable store boots
  without any Boot#### entry. Reproducible with SOURCE_DATE_EPOCH.
- `secure_vars` enrolls a certificate as PK, KEK and db into a copy of the empty store and
  turns Secure Boot on (virt-firmware, offline): images signed by its key boot, every other
  one is refused ("Access Denied"). Cached by content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import Host
from ..errors import BuildError
from ..features.uki import UKI, key_path
from ..image import uki
from ..paths import cache_dir
from ..run import run
from .qemu import Drive, Firmware

DESCRIPTORS = Path("/usr/share/qemu/firmware")
DEBIAN = {False: ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
          True: ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd")}
# The firmware gave up on the image: lines to stop waiting at.
REFUSED = (r"BdsDxe: failed to load [^\n]*: (?:Access Denied|Security Violation)[^\n]*",
           r"BdsDxe: No bootable option or device was found\.[^\n]*")
LOADER = "/EFI/BOOT/BOOTX64.EFI"
# A fixed owner GUID for the certificates enrolled in test variable stores.
OWNER = "a8b6f7a2-4c5d-4e6f-9a0b-1c2d3e4f5a6b"
ESP_EPOCH = 1704067200  # 2024-01-01: FAT timestamps when SOURCE_DATE_EPOCH is unset


@dataclass(frozen=True)
class Ovmf:
    code: Path
    vars_template: Path
    secure: bool


def _descriptors() -> list[dict[str, Any]]:
    found = []
    for path in sorted(DESCRIPTORS.glob("*.json")) if DESCRIPTORS.is_dir() else []:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def ovmf(secure: bool) -> Ovmf:
    """The x86_64 OVMF build with (secure=True: SMM, Secure Boot capable, no keys enrolled) or
    without Secure Boot, and its empty variable store."""
    for d in _descriptors():
        mapping = d.get("mapping")
        features = d.get("features")
        if not isinstance(mapping, dict) or not isinstance(features, list):
            continue
        if "uefi" not in (d.get("interface-types") or []) or mapping.get("device") != "flash":
            continue
        targets = d.get("targets") or []
        if not any(isinstance(t, dict) and t.get("architecture") == "x86_64" and
                   any("q35" in str(m) for m in t.get("machines", [])) for t in targets):
            continue
        if ("secure-boot" in features) != secure or "enrolled-keys" in features:
            continue
        try:
            code = Path(mapping["executable"]["filename"])
            template = Path(mapping["nvram-template"]["filename"])
        except (KeyError, TypeError):
            continue
        if code.is_file() and template.is_file() and mapping["executable"].get("format",
                                                                                "raw") == "raw":
            return Ovmf(code, template, secure)
    code, template = (Path(p) for p in DEBIAN[secure])
    if code.is_file() and template.is_file():
        return Ovmf(code, template, secure)
    raise BuildError("no OVMF (UEFI firmware for QEMU)" + (" with Secure Boot" if secure else ""),
                     hint="install the Debian package ovmf")


def machine_firmware(fw: Ovmf, vars_store: Path, workdir: Path, name: str) -> Firmware:
    """A per-boot copy of `vars_store` in `workdir`, and the QEMU firmware that uses it."""
    copy = workdir / f"{name}-vars.fd"
    shutil.copyfile(vars_store, copy)
    copy.chmod(0o644)
    return Firmware(str(fw.code), str(copy), secure=fw.secure)


def esp_image(path: Path, loader: bytes) -> Path:
    """A FAT ESP image at `path` holding `loader` as \\EFI\\BOOT\\BOOTX64.EFI (no root)."""
    size_kib = max(32 << 10, (len(loader) * 5 // 4 >> 10) + (4 << 10))
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or str(ESP_EPOCH)
    env = dict(os.environ, SOURCE_DATE_EPOCH=epoch, MTOOLS_SKIP_CHECK="1")
    path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="bootgen-esp-", dir=path.parent) as tmp:
        efi = Path(tmp, "BOOTX64.EFI")
        efi.write_bytes(loader)
        run(["mkfs.vfat", "-C", "-n", "ESP", "-i", "b0076e11", "--invariant", path,
             str(size_kib)], env=env)
        run(["mmd", "-i", path, "::/EFI", "::/EFI/BOOT"], env=env)
        run(["mcopy", "-i", path, efi, "::" + LOADER], env=env)
    return path


def secure_vars(cert: Path, *, cache: Path | None = None) -> Path:
    """An OVMF variable store with `cert` enrolled as PK, KEK and db and Secure Boot on
    (a cached, read-only file: copy it per boot)."""
    fw = ovmf(secure=True)
    try:
        cert_data = cert.read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read the certificate {cert}: {e.strerror}") from None
    template = fw.vars_template.read_bytes()
    key = hashlib.sha256(b"bootgen-sb-vars-1\0" + hashlib.sha256(template).digest()
                         + cert_data).hexdigest()
    folder = cache or cache_dir("firmware")
    final = folder / f"{key[:32]}.vars.fd"
    if final.is_file() and final.stat().st_size == len(template):
        return final
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from virt.firmware.varstore.edk2 import Edk2VarStore  # type: ignore[import-untyped]
    except ImportError:
        raise BuildError("virt-firmware is missing (it enrolls Secure Boot keys into OVMF's "
                         "variable store)", hint="pip install virt-firmware") from None
    fd, tmp = tempfile.mkstemp(prefix=".vars-", dir=folder)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="bootgen-cert-") as scratch:
            pem = Path(scratch, "cert.pem")
            pem.write_bytes(cert_data)
            store = Edk2VarStore(str(fw.vars_template))
            varlist = store.get_varlist()
            for name in ("PK", "KEK", "db"):
                varlist.add_cert(name, OWNER, str(pem), True)
            varlist.enable_secureboot()
            store.write_varstore(tmp, varlist)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
    except Exception as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, BuildError):
            raise
        raise BuildError(f"cannot enroll {cert} into an OVMF variable store: {e}",
                         hint="is it a PEM X.509 certificate?") from e
    return final


def uki_machine(host: Host, initrd: bytes, kver: str, cmdline: Sequence[str], workdir: Path,
                name: str, *, sign: bool = True, tamper: bool = False, secure_boot: bool = True
                ) -> tuple[Firmware, Drive]:
    """A UKI of `host` around `initrd` on an ESP, and the firmware that boots it: with Secure
    Boot enforced and the description's certificate enrolled when the description signs
    (unless `secure_boot` is False: the same firmware in setup mode), plain OVMF otherwise.
    `sign=False` leaves it unsigned anyway, `tamper` flips a byte of its .initrd after signing
    (both must then be refused)."""
    u = UKI.of(host)
    signing = u.sign_key is not None and u.sign_cert is not None
    made = host if sign or not signing else host.with_section(
        "uki", dataclasses.replace(u, sign_key=None, sign_cert=None))
    efi = uki.make(made, initrd, kver, cmdline=cmdline)
    if tamper:
        section = next(s for s in uki.parse(efi).sections if s.name == ".initrd")
        data = bytearray(efi)
        data[section.raw_pointer + section.virtual_size // 2] ^= 0x01
        efi = bytes(data)
    esp = esp_image(workdir / f"{name}-esp.img", efi)
    if signing:
        assert u.sign_cert is not None
        fw = ovmf(secure=True)
        store = secure_vars(key_path(host, u.sign_cert)) if secure_boot else fw.vars_template
    else:
        fw = ovmf(secure=False)
        store = fw.vars_template
    return (machine_firmware(fw, store, workdir, name),
            Drive(str(esp), interface="ide", snapshot=True))


def uefi_identity(host: Host) -> str:
    """What PCR 7 of a UKI boot of `host` depends on (for caches of TPM enrollments): the
    firmware, and the certificate that verifies the UKI when the description signs."""
    u = UKI.of(host)
    signing = u.sign_key is not None and u.sign_cert is not None
    fw = ovmf(secure=signing)
    h = hashlib.sha256(b"bootgen-uefi-1\0")
    for path in (fw.code, fw.vars_template):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    if signing:
        assert u.sign_cert is not None
        h.update(key_path(host, u.sign_cert).read_bytes())
    return h.hexdigest()
