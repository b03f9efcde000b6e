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
) -> Any:
    """Declare one setting: its documentation, default, allowed values and extra check."""
    meta = {"doc": doc, "choices": choices, "check": check, "example": example}
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


def check_device(value: str) -> tuple[str, str] | None:
    """A block device reference: /dev/... or LABEL=, UUID=, PARTUUID=, PARTLABEL=."""
    if value.startswith("/dev/") and len(value) > 5:
        return None
    for prefix in DEVICE_PREFIXES:
        if value.startswith(prefix):
            rest = value[len(prefix) :]
            if not rest:
                return (f"'{value}' has nothing after '{prefix}'", f"write {prefix}<value>")
            if prefix in ("UUID=", "PARTUUID=") and not _UUID_RE.match(rest):
                return (f"'{rest}' is not a UUID", "use the value blkid prints")
            return None
    return (
        f"'{value}' is not a device reference",
        "use /dev/..., LABEL=, UUID=, PARTUUID= or PARTLABEL=",
    )


def check_abs_path(value: str) -> tuple[str, str] | None:
    if not value.startswith("/"):
        return (f"'{value}' is not an absolute path", f"write '/{value}'")
    if "//" in value or (value != "/" and value.endswith("/")) or "/../" in value + "/":
        return (f"'{value}' is not a normalized path", "remove duplicate or trailing slashes")
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
