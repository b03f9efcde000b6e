"""Console keymaps: an XKB layout compiled to busybox's binary keymap, and read back.

`compile_keymap("de")` runs `ckbcomp de` (console-setup: XKB → kbd text keymap) and
`loadkeys -u -b` (kbd: text → the "bkeymap" binary that busybox `loadkmap` loads; -u because
XKB maps name Unicode keysyms that an 8-bit table cannot hold). Neither needs a console. The
result is cached by what it depends on (the layout, the tools, the XKB data) and checked when
read back.

`keys_for` goes the other way for tests: which key presses (QEMU key names) type a text on a
console that uses a binary keymap.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from pathlib import Path

from ..errors import BuildError
from ..paths import cache_dir, write_atomic
from ..run import run, which

XKB = "/usr/share/X11/xkb"
MAGIC = b"bkeymap"
NR_KEYS = 128  # entries per map in the binary format
MAX_MAPS = 256
KT_LATIN, KT_LETTER = 0, 11

# Linux key codes (input-event-codes.h) of the main block → QEMU `sendkey` names.
QEMU_KEYS: dict[int, str] = {
    **{code: str((code - 1) % 10) for code in range(2, 12)},
    12: "minus", 13: "equal", 26: "bracket_left", 27: "bracket_right", 39: "semicolon",
    40: "apostrophe", 41: "grave_accent", 43: "backslash", 51: "comma", 52: "dot",
    53: "slash", 57: "spc", 86: "less",
    **dict(zip(range(16, 26), "qwertyuiop", strict=True)),
    **dict(zip(range(30, 39), "asdfghjkl", strict=True)),
    **dict(zip(range(44, 51), "zxcvbnm", strict=True)),
}


def _depends(layout: str, variant: str | None) -> str:
    """What the compiled map depends on: layout, variant, the tools and the XKB files."""
    h = hashlib.sha256(f"bootgen-keymap-1\0{layout}\0{variant or ''}\0".encode())
    for tool in ("ckbcomp", "loadkeys"):
        path = which(tool)
        if path is None:
            raise BuildError(f"{tool} is missing (it compiles the console keymap)",
                             hint="install the Debian package "
                             + ("console-setup" if tool == "ckbcomp" else "kbd"))
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for sub in ("symbols", "keycodes"):
        for folder, dirs, files in sorted(os.walk(f"{XKB}/{sub}")):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(folder, name))
                h.update(f"{folder}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def check_bmap(data: bytes, what: str) -> bytes:
    """`data` if it is a well-formed binary keymap, else BuildError."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + MAX_MAPS:
        raise BuildError(f"{what} is not a binary keymap")
    maps = sum(1 for flag in data[len(MAGIC):len(MAGIC) + MAX_MAPS] if flag)
    if not maps or len(data) != len(MAGIC) + MAX_MAPS + maps * NR_KEYS * 2:
        raise BuildError(f"{what} is not a binary keymap ({len(data)} bytes, {maps} maps)")
    return data


def compile_keymap(layout: str, variant: str | None = None, *, cache: Path | None = None
                   ) -> bytes:
    """The busybox `loadkmap` binary keymap of an XKB layout (cached)."""
    if not Path(XKB, "symbols", layout).is_file():
        raise BuildError(f"no XKB layout '{layout}' in {XKB}/symbols",
                         hint="a layout name such as 'de', 'fr' or 'us' (install xkb-data)")
    key = _depends(layout, variant)
    folder = cache or cache_dir("keymaps")
    cached = folder / f"{key[:32]}.bmap"
    if cached.is_file():
        try:
            return check_bmap(cached.read_bytes(), str(cached))
        except BuildError:
            cached.unlink(missing_ok=True)  # damaged: make it again
    args = ["ckbcomp", layout] + (["-variant", variant] if variant else [])
    text = run(args).stdout
    with tempfile.TemporaryDirectory(prefix="bootgen-keymap-") as tmp:
        source = Path(tmp, "keymap")  # loadkeys wants an absolute path (else: its search path)
        source.write_bytes(text)
        data = run(["loadkeys", "-u", "-b", str(source.absolute())], input=b"").stdout
    data = check_bmap(data, f"loadkeys -b output for '{layout}'")
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, data)
    return data


def maps(data: bytes) -> dict[int, tuple[int, ...]]:
    """Map index (0 plain, 1 shift, 2 AltGr, ...) → the 128 key values of a binary keymap."""
    check_bmap(data, "the keymap")
    out: dict[int, tuple[int, ...]] = {}
    offset = len(MAGIC) + MAX_MAPS
    for index, flag in enumerate(data[len(MAGIC):len(MAGIC) + MAX_MAPS]):
        if flag:
            out[index] = struct.unpack_from(f"<{NR_KEYS}H", data, offset)
            offset += NR_KEYS * 2
    return out


def _char(value: int) -> str | None:
    if value >= 0x1000:
        return chr(value ^ 0xF000)
    kind, code = value >> 8, value & 0xFF
    return chr(code) if kind in (KT_LATIN, KT_LETTER) else None


def keys_for(text: str, data: bytes | None) -> list[str]:
    """QEMU key names that type `text` on a console with binary keymap `data` (None: the
    kernel's default US map)."""
    table = maps(data) if data is not None else None
    presses: list[str] = []
    for ch in text:
        found = None
        for index, prefix in ((0, ""), (1, "shift-")):
            if table is None:
                found = _us(ch)
                break
            for code, name in sorted(QEMU_KEYS.items()):
                if index in table and _char(table[index][code]) == ch:
                    found = prefix + name
                    break
            if found:
                break
        if found is None:
            raise BuildError(f"cannot type {ch!r} with this keymap (plain or shift keys)")
        presses.append(found)
    return presses


_US = {"-": "minus", "=": "equal", "[": "bracket_left", "]": "bracket_right", ";": "semicolon",
       "'": "apostrophe", "`": "grave_accent", "\\": "backslash", ",": "comma", ".": "dot",
       "/": "slash", " ": "spc"}
_US_SHIFT = dict(zip('!@#$%^&*()_+{}:"~|<>?', [*"1234567890", "minus", "equal", "bracket_left",
                                                 "bracket_right", "semicolon", "apostrophe",
                                                 "grave_accent", "backslash", "comma", "dot",
                                                 "slash"], strict=True))


def _us(ch: str) -> str | None:
    """The key for `ch` on the kernel's default (US) keymap."""
    if ch.isascii() and (ch.islower() or ch.isdigit()):
        return ch
    if ch.isascii() and ch.isalpha():
        return f"shift-{ch.lower()}"
    if ch in _US:
        return _US[ch]
    return f"shift-{_US_SHIFT[ch]}" if ch in _US_SHIFT else None
