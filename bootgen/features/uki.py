"""uki: the [uki] section — how `bootgen build --uki` (or `[boot] output = "uki"`) wraps the
image into a unified kernel image on systemd-stub, and how it is signed for Secure Boot.

The UKI itself is made by bootgen.image.uki after the initrd is packed; this feature adds
nothing to the initrd. It owns the settings and their checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .api import Feature, Host, Report, Table, check_abs_path, matching, setting

STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

# one kernel parameter: no whitespace, quotes or control characters
check_param = matching(r"[^\s\"'\\\x00-\x1f\x7f]+", "a kernel parameter",
                       "one parameter per array item, e.g. 'console=ttyS0'")


def check_key_path(value: str) -> tuple[str, str] | None:
    """A file path: absolute, or relative to the description's directory."""
    if not value or "\n" in value or "\0" in value:
        return (f"{value!r} is not a file path", "e.g. 'keys/db.key' or '/etc/bootgen/db.key'")
    return check_abs_path(value) if value.startswith("/") else None


@dataclass(frozen=True)
class Uki:
    """The unified kernel image: kernel, initrd, command line and os-release in one EFI
    binary on systemd-stub (Debian: systemd-boot-efi), optionally signed for Secure Boot."""

    cmdline: tuple[str, ...] = setting(
        "Kernel command line embedded in the UKI (`.cmdline`). Under Secure Boot it cannot be "
        "changed from the boot loader; without Secure Boot a boot loader's command line "
        "replaces it. Empty: no `.cmdline` section.", factory=tuple, check=check_param,
        example='["console=ttyS0", "quiet"]')
    kernel: str | None = setting("Kernel image; default: /boot/vmlinuz-<kernel version>.",
                                 None, check=check_abs_path)
    stub: str = setting("The EFI stub the UKI is built on.", STUB, check=check_abs_path)
    os_release: str = setting("os-release embedded as `.osrel` (what boot menus show).",
                              "/etc/os-release", check=check_abs_path)
    secrets: bool = setting(
        "Put the secrets archive (keyfiles, host keys) into the UKI's initrd. Anyone who can "
        "read the ESP can read them; by default they stay out (`--secrets-out`).", False)
    sign_key: str | None = setting(
        "Private key (PEM) that signs the UKI for Secure Boot (sbsigntool); a relative path "
        "is relative to the description's directory.", None, check=check_key_path)
    sign_cert: str | None = setting(
        "Certificate (PEM) of `sign_key`: the one enrolled in the firmware's db.", None,
        check=check_key_path)


UKI = Table("uki", Uki)


def key_path(host: Host, value: str) -> Path:
    """A key or certificate path of [uki], relative ones against the description's folder."""
    if os.path.isabs(value):
        return Path(value)
    base = Path(host.source).parent if host.source and not host.source.startswith("<") \
        else Path.cwd()
    return (base / value).absolute()


def check(host: Host, report: Report) -> None:
    u = UKI.of(host)
    if (u.sign_key is None) != (u.sign_cert is None):
        report.add("uki.sign_key" if u.sign_key is None else "uki.sign_cert",
                   "sign_key and sign_cert go together", "set both to sign the UKI, or neither")


FEATURE = Feature(
    name="uki",
    doc="[uki]: unified kernel image on systemd-stub, optionally signed (no files in the "
        "initrd)",
    sections=(UKI,),
    check=check,
)
