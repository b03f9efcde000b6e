"""The interface of the default route, for a [network] suggestion (SSH unlock of LUKS): its
name, MAC, gateway and the module of its driver, from /proc/net/route and sysfs."""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from .sysfs import inside, read


@dataclass(frozen=True)
class Uplink:
    name: str
    mac: str | None
    gateway: str | None
    module: str | None  # the NIC driver's module (None: built in or unknown)


def _hex_ip(value: str) -> str | None:
    try:
        return socket.inet_ntoa(struct.pack("<L", int(value, 16)))
    except (ValueError, struct.error):
        return None


def uplink(root: Path) -> Uplink | None:
    """The interface of the IPv4 default route, or None."""
    for line in (read(root, "proc/net/route") or "").splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or f[1] != "00000000" or f[7] != "00000000":
            continue
        name = f[0]
        mac = (read(root, f"sys/class/net/{name}/address") or "").strip() or None
        module = None
        driver = inside(root, f"sys/class/net/{name}/device/driver")
        if driver is not None:
            try:
                module = os.path.basename(os.readlink(driver / "module"))
            except OSError:
                module = None
        gateway = _hex_ip(f[2])
        return Uplink(name, mac, gateway if gateway != "0.0.0.0" else None, module)
    return None
