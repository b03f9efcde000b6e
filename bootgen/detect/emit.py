"""A small TOML writer for descriptions made from what a system reports.

Names from the system (mount points, volume names, labels, paths) can hold quotes, backslashes,
newlines or other control characters; every string goes out as a TOML basic string with each of
them escaped, and every comment is one line with the same characters shown escaped, so nothing
read from a system can add a key, a table or a line to the file a machine boots from.
"""

from __future__ import annotations

import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_SHORT = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"',
          "\\": "\\\\"}

Value = str | bool | int | list[str] | tuple[str, ...]


class NotExpressible(ValueError):
    """A string that is not valid Unicode (bytes that are not UTF-8): TOML cannot hold it."""


def _char(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F or code in (0x2028, 0x2029):
        return f"\\u{code:04X}"
    if 0xD800 <= code <= 0xDFFF:
        raise NotExpressible(f"{ch!r} is not a Unicode character (a name that is not UTF-8)")
    return ch


def string(s: str) -> str:
    """A TOML basic string holding exactly `s`."""
    return '"' + "".join(_char(c) for c in s) + '"'


def value(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return string(v)
    return "[" + ", ".join(string(s) for s in v) + "]"


def key(k: str) -> str:
    if not _BARE_KEY.match(k):
        raise ValueError(f"{k!r} is not a bare TOML key")
    return k


def comment_text(text: str) -> str:
    """One line of comment: control characters shown as escapes (never a line break)."""
    out = []
    for ch in text:
        if ch in "\"\\":
            out.append(ch)
            continue
        try:
            out.append(_char(ch))
        except NotExpressible:
            out.append("\\uFFFD")
    return "".join(out)


class Document:
    """Lines of a TOML file: tables, keys with an optional comment after them, comments."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str = "") -> None:
        """One comment line; a line break in `text` shows as \\n."""
        self.lines.append(("# " + comment_text(text)).rstrip())

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def table(self, name: str, *, array: bool = False, note: str = "") -> None:
        self.blank()
        if note:
            self.comment(note)
        dotted = ".".join(key(p) for p in name.split("."))
        self.lines.append(f"[[{dotted}]]" if array else f"[{dotted}]")

    def set(self, k: str, v: Value, note: str = "") -> None:
        line = f"{key(k)} = {value(v)}"
        self.lines.append(f"{line}  # {comment_text(note)}" if note else line)

    def text(self) -> str:
        return "\n".join(self.lines).strip("\n") + "\n"
