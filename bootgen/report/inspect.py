"""Reading images: list any newc initrd (ours, dracut's, Debian's) or unified kernel image
(its sections, then the initrd inside), and diff two of them.

An image is read only when it is a regular file, and unpacks to BOOTGEN_MAX_UNPACKED bytes at
most (default 2 GiB): a FIFO, /dev/zero or a compression bomb fail at once with one line. Names
are shown as the kernel would place them ("./etc/x" is /etc/x); a name the kernel would not
place below / (absolute, or with "..") is shown as it is, marked; control characters in names
and link targets are escaped, never sent to the terminal.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass
from pathlib import Path

from ..archive import compress
from ..archive.cpio import Member, member_path
from ..errors import BootgenError, UsageError, printable
from ..image import uki
from ..paths import env_size, read_regular

SUSPICIOUS = "   (!) outside /: unpacks elsewhere or not at all"


def max_unpacked() -> int:
    return env_size(compress.MAX_UNPACKED_ENV, compress.MAX_UNPACKED)


def _bytes(path: Path) -> bytes:
    data = read_regular(path, limit=max_unpacked(), error=UsageError)
    if not data:
        raise UsageError("empty file, not an initrd", location=str(path))
    return data


def _segments(data: bytes, path: Path) -> list[compress.Segment]:
    try:
        return compress.read_image(data, max_unpacked())
    except BootgenError as e:
        where = f"{e.location}" if e.location and e.location != "initrd" else ""
        raise UsageError(f"{where + ': ' if where else ''}{e.message}", location=str(path),
                         hint=e.hint) from None


def _uki(data: bytes, path: Path) -> uki.Uki:
    try:
        return uki.read(data, str(path))
    except BootgenError as e:
        raise UsageError(e.message, location=str(path)) from None


def read(path: Path) -> list[compress.Segment]:
    """The segments of an initrd, or of the initrd inside a unified kernel image; UsageError
    naming the file when it cannot be read."""
    data = _bytes(path)
    if uki.is_pe(data):
        parts = _uki(data, path)
        if ".initrd" not in parts.payloads:
            raise UsageError("this EFI image has no .initrd section", location=str(path))
        data = parts.payloads[".initrd"]
    return _segments(data, path)


def uki_lines(parts: uki.Uki) -> list[str]:
    """What a UKI holds: its sections, the text ones shown, signature and PCR 11."""
    pe = parts.pe
    lines = [f"== unified kernel image: {len(pe.sections)} sections, "
             + (f"signed ({pe.security[1]} bytes of signatures)" if pe.signed else "unsigned")]
    for s in pe.sections:
        lines.append(f"  {s.name:<9} {s.virtual_size:>10} bytes at 0x{s.virtual_address:08x}")
    for name, label in ((".uname", "uname"), (".cmdline", "cmdline")):
        if name in parts.payloads:
            lines.append(f"  {label:<9} {parts.text(name)}")
    osrel = dict(line.split("=", 1) for line in parts.text(".osrel").splitlines()
                 if "=" in line)
    if osrel:
        name = osrel.get("PRETTY_NAME", osrel.get("NAME", "?")).strip('"')
        lines.append(f"  {'os':<9} {name}")
    lines.append(f"  {'pcr11':<9} sha256 {uki.pcr11(parts.payloads)} (systemd-stub 252)")
    return lines


def ls_any(path: Path) -> list[str]:
    """`bootgen ls`: an initrd's segments, or a UKI's sections and then its initrd."""
    data = _bytes(path)
    if not uki.is_pe(data):
        return ls_lines(_segments(data, path))
    parts = _uki(data, path)
    lines = uki_lines(parts)
    if ".initrd" in parts.payloads:
        lines += ls_lines(_segments(parts.payloads[".initrd"], path))
    return lines


def mode_string(mode: int) -> str:
    return stat.filemode(mode)


def shown(name: str) -> str:
    """How a member's name is printed: its path in /, or the raw name marked as suspicious."""
    path = member_path(name)
    return printable(path) if path is not None else printable(name) + SUSPICIOUS


def ls_lines(segments: list[compress.Segment]) -> list[str]:
    lines = []
    for i, seg in enumerate(segments, 1):
        size = sum(len(m.data) for m in seg.members if stat.S_ISREG(m.mode))
        lines.append(f"== segment {i}: offset {seg.offset}, {seg.end - seg.offset} bytes, "
                     f"{seg.compression}, {len(seg.members)} entries, {size} bytes of files")
        for m in seg.members:
            lines.append(_line(m))
    return lines


def _target(m: Member) -> str:
    return printable(m.data.decode("utf-8", "surrogateescape"))


def _line(m: Member) -> str:
    name = shown(m.name)
    if stat.S_ISLNK(m.mode):
        return f"{mode_string(m.mode)} {0:>9} {name} -> {_target(m)}"
    if stat.S_ISCHR(m.mode) or stat.S_ISBLK(m.mode):
        return f"{mode_string(m.mode)} {m.rdev[0]:>5},{m.rdev[1]:<3} {name}"
    return f"{mode_string(m.mode)} {len(m.data):>9} {name}"


@dataclass(frozen=True)
class Item:
    mode: int
    size: int
    digest: str
    target: str


def _items(segments: list[compress.Segment]) -> dict[str, Item]:
    out = {}
    for seg in segments:
        for m in seg.members:
            target = _target(m) if stat.S_ISLNK(m.mode) else ""
            out[shown(m.name)] = Item(m.mode, len(m.data), hashlib.sha256(m.data).hexdigest(),
                                      target)
    return out


def manifest_for(image: Path) -> dict[str, str]:
    """path -> reason from the manifest written beside an image (IMAGE.json or STEM.json)."""
    for cand in (image.with_name(image.name + ".json"), image.with_suffix(".json")):
        if cand.is_file():
            try:
                data = json.loads(read_regular(cand, limit=256 << 20))
                return {e["path"]: e.get("reason", "") for e in data.get("entries", [])}
            except (ValueError, KeyError, TypeError, AttributeError, BootgenError):
                return {}
    return {}


def diff_lines(a: Path, b: Path) -> list[str]:
    ia, ib = _items(read(a)), _items(read(b))
    why_a, why_b = manifest_for(a), manifest_for(b)

    def why(reasons: dict[str, str], path: str) -> str:
        return f"   [{printable(str(reasons[path]))}]" if path in reasons else ""

    lines = []
    for path in sorted(set(ia) | set(ib)):
        x, y = ia.get(path), ib.get(path)
        if x == y:
            continue
        if y is None:
            lines.append(f"- {path}" + why(why_a, path))
        elif x is None:
            lines.append(f"+ {path}" + why(why_b, path))
        else:
            what = []
            if x.mode != y.mode:
                what.append(f"mode {mode_string(x.mode)} → {mode_string(y.mode)}")
            if x.target != y.target:
                what.append(f"target {x.target} → {y.target}")
            elif x.digest != y.digest:
                what.append(f"content ({x.size} → {y.size} bytes)")
            lines.append(f"~ {path}: {', '.join(what)}")
    return lines
