"""How a setting is declared, and the value checks settings share.

A setting is a dataclass field whose metadata carries its documentation, allowed values and
check. The same declaration drives loading (bootgen.config.loader), the reference
(docs/config.md) and the defaults users get. Every check returns None when the value is fine,
else (message, hint).

Values that end up in generated files (unit files, crypttab, fstab, shell, networkd) are checked
here for what those files can carry; patterns anchor with \\Z, never $ (which lets a trailing
newline through).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any

Check = Callable[[Any], "tuple[str, str] | None"]

DEVICE_PREFIXES = ("LABEL=", "UUID=", "PARTUUID=", "PARTLABEL=")


def setting(
    doc: str,
    default: Any = None,
    *,
    choices: tuple[str, ...] = (),
    check: Check | None = None,
    example: str = "",
    factory: Callable[[], Any] | None = None,
    multiline: bool = False,
) -> Any:
    """Declare one setting: its documentation, default, allowed values and extra check.
    Strings are one line (no control characters) unless `multiline` (newlines and tabs)."""
    meta = {"doc": doc, "choices": choices, "check": check, "example": example,
            "multiline": multiline}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- value checks -------------------------------------------------------------------------


def matching(pattern: str, what: str, hint: str) -> Check:
    """A check that the whole value matches `pattern` (anchored at both ends)."""
    compiled = re.compile(pattern)

    def check(value: str) -> tuple[str, str] | None:
        if not compiled.fullmatch(value):
            return (f"'{value}' is not {what}", hint)
        return None

    check.__doc__ = f"{what}: {pattern}"
    return check


_UUID_RE = re.compile(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)*\Z")
# Characters a path may have where it reaches a unit file, a crypttab or fstab field or a
# shell word unquoted: no whitespace, quotes, backslash, '%' (a systemd specifier), '$' or '`'.
PLAIN = "A-Za-z0-9_.:+@=~/-"
# udev's own escapes (/dev/disk/by-label/my\x2fdata) are fine in a device path
_PLAIN_DEV = re.compile(rf"/dev/(?:[{PLAIN}]|\\x[0-9a-fA-F]{{2}})+\Z")
# A LABEL= or PARTLABEL= value: udev escapes what it needs (spaces become \x20), so anything
# printable but quotes and backslashes, which no file stage one writes could carry safely.
_LABEL_BAD = re.compile(r"[\"'\\`$]")


def check_device(value: str) -> tuple[str, str] | None:
    """A block device reference: /dev/... or LABEL=, UUID=, PARTUUID=, PARTLABEL=."""
    if value.startswith("/dev/") and len(value) > 5:
        if not _PLAIN_DEV.match(value) or check_abs_path(value):
            return (f"'{value}' is not a plain device path",
                    f"a normalized /dev/ path of the characters {PLAIN} (and udev's \\xNN)")
        return None
    for prefix in DEVICE_PREFIXES:
        if value.startswith(prefix):
            rest = value[len(prefix) :]
            if not rest:
                return (f"'{value}' has nothing after '{prefix}'", f"write {prefix}<value>")
            if prefix in ("UUID=", "PARTUUID=") and not _UUID_RE.match(rest):
                return (f"'{rest}' is not a UUID", "use the value blkid prints")
            if _LABEL_BAD.search(rest):
                return (f"'{rest}' holds a quote, a backslash, '$' or '`'",
                        "rename the filesystem or refer to it by UUID=")
            return None
    return (
        f"'{value}' is not a device reference",
        "use /dev/..., LABEL=, UUID=, PARTUUID= or PARTLABEL=",
    )


def check_device_word(value: str) -> tuple[str, str] | None:
    """A device reference that is one whitespace-separated field (crypttab has no quoting)."""
    if any(c.isspace() for c in value):
        return (f"'{value}' holds whitespace, which crypttab cannot carry",
                "refer to the device by UUID= or PARTUUID=")
    return check_device(value)


def check_abs_path(value: str) -> tuple[str, str] | None:
    if not value.startswith("/"):
        return (f"'{value}' is not an absolute path", f"write '/{value}'")
    if posixpath.normpath(value) != value or value.startswith("//"):
        return (f"'{value}' is not a normalized path",
                "remove duplicate or trailing slashes, '.' and '..'")
    return None


def check_plain_path(value: str) -> tuple[str, str] | None:
    """An absolute path that generated files can carry as it is (mountpoints, image paths)."""
    bad = check_abs_path(value)
    if bad is None and not re.fullmatch(rf"[{PLAIN}]+", value):
        return (f"'{value}' holds characters other than {PLAIN}",
                "rename it: spaces, quotes, '%', '$' and '`' would need escaping in unit files, "
                "fstab and the init script")
    return bad


def check_mount_option(value: str) -> tuple[str, str] | None:
    """One mount option: a word that fstab, a unit's Options= and `mount -o` all carry."""
    if "," in value:
        return (f"'{value}' holds a comma", "give each option as its own array element")
    if not re.fullmatch(r"[A-Za-z0-9_.:/=+@~^-]+", value):
        return (f"'{value}' is not a mount option",
                "letters, digits and _.:/=+@~^- only, e.g. 'noatime' or 'subvol=@root'")
    return None


def check_module_name(value: str) -> tuple[str, str] | None:
    """A kernel module name or alias (one line of modules-load.d)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.:*-]{0,63}", value):
        return (f"'{value}' is not a kernel module name", "e.g. 'virtio_blk' or 'ext4'")
    return None


def check_mode(value: int) -> tuple[str, str] | None:
    """Permission bits of a file: 0..0o7777, never setuid or setgid and writable by all."""
    if not 0 <= value <= 0o7777:
        return (f"{value:#o} is not a permission mode" if value >= 0 else
                f"{value} is not a permission mode", "use 0o0 to 0o7777, e.g. 0o644")
    if value & 0o6000 and value & 0o002:
        return (f"{value:#o} is setuid or setgid and writable by everyone",
                "drop the write bit for others (e.g. 0o4755)")
    return None


def bounded(lo: int, hi: int, unit: str = "") -> Check:
    """A check that an integer lies in lo..hi."""
    def check(value: int) -> tuple[str, str] | None:
        if not lo <= value <= hi:
            return (f"{value}{unit} is out of range", f"use {lo}-{hi}{unit}")
        return None

    check.__doc__ = f"{lo}..{hi}"
    return check


def check_kernel_version(value: str) -> tuple[str, str] | None:
    """A kernel release as `uname -r` prints it: a directory name under /lib/modules."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}", value):
        return (f"'{value}' is not a kernel release", "as uname -r prints it, e.g. 6.1.0-57-amd64")
    return None


def check_port(value: int) -> tuple[str, str] | None:
    if not 1 <= value <= 65535:
        return (f"port {value} is out of range", "use 1-65535")
    return None


def check_positive(value: int) -> tuple[str, str] | None:
    if value < 0:
        return (f"{value} is negative", "use 0 or more")
    return None


def check_cidr(value: str) -> tuple[str, str] | None:
    m = re.match(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})/(\d{1,2})\Z", value)
    if not m or any(int(x) > 255 for x in m.groups()[:4]) or int(m.group(5)) > 32:
        return (f"'{value}' is not an IPv4 address with prefix", "e.g. '10.0.2.15/24'")
    return None


def check_ipv4(value: str) -> tuple[str, str] | None:
    m = re.match(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\Z", value)
    if not m or any(int(x) > 255 for x in m.groups()):
        return (f"'{value}' is not an IPv4 address", "e.g. '10.0.2.2'")
    return None


def check_mac(value: str) -> tuple[str, str] | None:
    if not re.match(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}\Z", value):
        return (f"'{value}' is not a MAC address", "e.g. '52:54:00:12:34:56'")
    return None
