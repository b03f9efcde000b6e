"""The text tables detect reads: /proc/self/mountinfo, /etc/fstab, /etc/crypttab, /proc/cmdline,
/proc/swaps, and the udev database's records. Pure parsers of strings; nothing here touches the
disk."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """The kernel's and fstab's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 \\)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    devno: str  # "254:2"; btrfs and other virtual numbers are "0:NN"
    root: str  # the path inside the filesystem mounted (a btrfs subvolume: "/@root")
    mountpoint: str
    options: tuple[str, ...]  # per-mount options
    fstype: str
    source: str  # "/dev/vda2"
    super_options: tuple[str, ...]


def mountinfo(text: str) -> list[Mount]:
    """proc(5) mountinfo lines; the last mount at a mountpoint wins (it hides the others)."""
    found: dict[str, Mount] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        a, b = left.split(), right.split()
        if not sep or len(a) < 6 or len(b) < 2:
            continue
        m = Mount(a[2], unescape(a[3]), unescape(a[4]), tuple(a[5].split(",")), b[0],
                  unescape(b[1]), tuple(b[2].split(",")) if len(b) > 2 else ())
        found.pop(m.mountpoint, None)
        found[m.mountpoint] = m
    return list(found.values())


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    file: str
    vfstype: str
    options: tuple[str, ...]
    passno: int


def fstab(text: str) -> list[FstabEntry]:
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#") or len(words) < 3:
            continue
        opts = tuple(unescape(words[3]).split(",")) if len(words) > 3 else ("defaults",)
        passno = int(words[5]) if len(words) > 5 and words[5].isdigit() else 0
        out.append(FstabEntry(unescape(words[0]), unescape(words[1]), words[2], opts, passno))
    return out


@dataclass(frozen=True)
class CrypttabEntry:
    name: str
    device: str
    key: str  # "none", "-", a path, or path:device
    options: tuple[str, ...]


def crypttab(text: str) -> list[CrypttabEntry]:
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#") or len(words) < 2:
            continue
        key = unescape(words[2]) if len(words) > 2 else "none"
        opts = tuple(o for o in words[3].split(",") if o) if len(words) > 3 else ()
        out.append(CrypttabEntry(unescape(words[0]), unescape(words[1]), key, opts))
    return out


def cmdline(text: str) -> list[tuple[str, str | None]]:
    """(key, value) of each kernel parameter, in order; quotes as the kernel parses them."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    out: list[tuple[str, str | None]] = []
    for w in words:
        k, sep, v = w.partition("=")
        out.append((k, v if sep else None))
    return out


def param(params: list[tuple[str, str | None]], key: str) -> str | None:
    """The last value of `key=` (the kernel and systemd take the last one)."""
    found = None
    for k, v in params:
        if k == key and v is not None:
            found = v
    return found


def swaps(text: str) -> list[str]:
    """The active swap areas (/proc/swaps), by path."""
    return [unescape(line.split()[0]) for line in text.splitlines()[1:] if line.split()]


@dataclass(frozen=True)
class UdevRecord:
    properties: dict[str, str]  # E: lines
    links: tuple[str, ...]  # S: lines, relative to /dev


def udev_record(text: str) -> UdevRecord:
    props: dict[str, str] = {}
    links: list[str] = []
    for line in text.splitlines():
        kind, sep, value = line.partition(":")
        if not sep:
            continue
        if kind == "E":
            k, _, v = value.partition("=")
            props[k] = v
        elif kind == "S":
            links.append(value)
    return UdevRecord(props, tuple(links))
