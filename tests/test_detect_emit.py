"""The TOML writer of `bootgen detect`: any string from a system comes back from a TOML parser
exactly as it went in, and nothing in it can start a line, a key or a table."""

from __future__ import annotations

import tomllib

import pytest

from bootgen.detect.emit import Document, NotExpressible, comment_text, string

HOSTILE = [
    'a"b',
    "back\\slash",
    "new\nline",
    'x"\n[boot]\nflavor = "scripted',
    "tab\there",
    "cr\rlf",
    "\x00nul\x1f\x7f",
    "del\x7f and \x85 next-line",
    "é ü ß 日本",
    "trailing\\",
    "''' and \"\"\"",
    "\u2028line separator",
    "",
]


@pytest.mark.parametrize("s", HOSTILE)
def test_a_string_comes_back_exactly(s: str) -> None:
    text = f"k = {string(s)}\n"
    assert tomllib.loads(text) == {"k": s}
    assert "\n" not in string(s) and "\r" not in string(s)


def test_a_name_that_is_not_utf8_is_refused_not_mangled() -> None:
    bad = b"caf\xe9".decode("utf-8", errors="surrogateescape")
    with pytest.raises(NotExpressible):
        string(bad)
    assert "\n" not in comment_text(bad)


def test_a_document_with_hostile_values_and_notes_has_only_its_own_keys() -> None:
    d = Document()
    d.comment("header\n[injected]\nkey = 1")
    d.table("boot", note='note "with"\nnewline')
    d.set("kernel_params", HOSTILE, "after\nthe value\r")
    d.table("filesystems", array=True)
    d.set("mountpoint", HOSTILE[3])
    d.set("needed_for_boot", True)
    d.set("count", 3)
    assert d.lines[0] == "# header\\n[injected]\\nkey = 1"
    data = tomllib.loads(d.text())
    assert data == {"boot": {"kernel_params": HOSTILE},
                    "filesystems": [{"mountpoint": HOSTILE[3], "needed_for_boot": True,
                                     "count": 3}]}
    for line in d.text().splitlines():
        assert line == "" or line.startswith(("#", "[", "kernel_params =", "mountpoint =",
                                              "needed_for_boot =", "count ="))


def test_keys_must_be_bare() -> None:
    d = Document()
    with pytest.raises(ValueError):
        d.set("a = 1\nb", "x")
    with pytest.raises(ValueError):
        d.table("x]\n[y")
