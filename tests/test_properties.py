"""Property-based tests (hypothesis): whatever bytes or TOML they are given, the description
loader and the cpio/initrd readers answer with a value or a BootgenError (one line when printed),
never another exception."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from bootgen.archive import compress, cpio
from bootgen.description import load, loads
from bootgen.errors import BootgenError, DescriptionError, printable
from bootgen.report import inspect
from bootgen.run import run, which

from .conftest import EXAMPLES, PUBLIC_KEY

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
REG = stat.S_IFREG | 0o644

# --- the description loader ---------------------------------------------------------------

# Keys of the real schema, so that generated descriptions reach the checks, not only
# "unknown setting".
SECTIONS = {
    "boot": ["flavor", "compression", "compression_level", "kernel_params", "device_timeout",
             "init"],
    "kernel": ["version", "modules", "available_modules"],
    "rescue": ["shell_on_fail", "root_password_hash", "allow_passwordless"],
    "network": ["enable", "timeout", "flush_before_switch"],
    "extra": ["binaries", "libraries"],
    "systemd": ["wants"],
}
TABLES = {
    "filesystems": ["mountpoint", "device", "fstype", "options", "needed_for_boot", "fsck"],
    "luks": ["name", "device", "key_file", "key_file_device", "key_file_path", "key_file_size",
             "tries", "timeout", "options", "header"],
    "network.interfaces": ["name", "mac", "dhcp", "address", "gateway", "dns", "mtu"],
    "extra.files": ["source", "target", "mode"],
}
NASTY = st.sampled_from(["/", "..", "/dev/vda", "LABEL=root", "UUID=", "a\nb", "%i", "$(x)",
                         "\u00e9", "\x00", "\x1b[2J", " ", "ext4", "rw,ro", PUBLIC_KEY,
                         "-----BEGIN OPENSSH PRIVATE KEY-----", "/etc/../x", "\\", "'\""])
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    NASTY,
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=12)


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON strings are TOML basic strings
    assert isinstance(v, list)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


@st.composite
def descriptions(draw: st.DrawFn) -> str:
    out = []
    for section, keys in SECTIONS.items():
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
        if chosen:
            out.append(f"[{section}]")
            out += [f"{k} = {toml_value(draw(VALUES))}" for k in chosen]
    for table, keys in TABLES.items():
        for _ in range(draw(st.integers(0, 2))):
            out.append(f"[[{table}]]")
            chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
            out += [f"{k} = {toml_value(draw(VALUES))}" for k in chosen]
    return "\n".join(out) + "\n"


def loads_or_error(text: str) -> None:
    try:
        loads(text, "h.toml")
    except DescriptionError as e:
        lines = e.format().splitlines()
        assert lines and all(line.startswith("error: h.toml") for line in lines)
        assert all(printable(line) == line for line in lines)


@SETTINGS
@given(descriptions())
def test_loader_never_raises_anything_else(text: str) -> None:
    loads_or_error(text)


@SETTINGS
@given(st.text(max_size=400))
@example("x = " + "[" * 3000 + "]" * 3000)
@example('[boot]\nflavor = "\\u0000"\n')
def test_loader_on_any_text(text: str) -> None:
    loads_or_error(text)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
@example(b"\xff\xfe[boot]")
@example('[boot]\nflavor = "caf\u00e9"\n'.encode("latin-1"))
def test_load_of_any_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "h.toml"
    path.write_bytes(data)
    try:
        load(path)
    except DescriptionError as e:
        assert all(line.startswith(f"error: {path}") for line in e.format().splitlines())


@SETTINGS
@given(st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_example_with_bytes_spliced_in(at: int, junk: bytes) -> None:
    """Real descriptions with a few bytes replaced anywhere."""
    text = (EXAMPLES / "luks.toml").read_bytes()
    at %= len(text)
    mutated = text[:at] + junk + text[at + len(junk):]
    try:
        decoded = mutated.decode()
    except UnicodeDecodeError:
        assume(False)
        return
    loads_or_error(decoded)


# --- the cpio and initrd readers ---------------------------------------------------------------

NAMES = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00/"),
                min_size=1, max_size=12)
MEMBERS = st.lists(st.builds(lambda n, d: cpio.Member(n, REG, d), NAMES,
                             st.binary(max_size=64)), max_size=5, unique_by=lambda m: m.name)


def read_or_error(data: bytes) -> None:
    try:
        segments = compress.read_image(data, limit=1 << 20)
    except BootgenError as e:
        assert "\n" not in e.format()
        return
    for line in inspect.ls_lines(segments):  # whatever was read can be listed safely
        assert printable(line) == line


@SETTINGS
@given(st.binary(max_size=600))
def test_initrd_reader_on_any_bytes(data: bytes) -> None:
    read_or_error(data)


@SETTINGS
@given(st.binary(max_size=600))
def test_cpio_reader_on_any_bytes(data: bytes) -> None:
    try:
        cpio.read_newc(data)
    except BootgenError:
        pass


@SETTINGS
@given(MEMBERS, st.sampled_from(compress.METHODS), st.data())
def test_initrd_reader_on_damaged_images(members: list[cpio.Member], method: str,
                                         data: st.DataObject) -> None:
    """A real archive, compressed, then cut short, grown or with bytes flipped."""
    try:
        raw = cpio.write_newc(members)
    except BootgenError:
        assume(False)
        return
    image = compress.compress(raw, method)
    assert {m.name for m in compress.read_image(image)[0].members} >= {
        cpio.normalize_name(m.name) for m in members}
    damage = data.draw(st.sampled_from(["cut", "flip", "append", "splice"]))
    at = data.draw(st.integers(0, len(image) - 1))
    if damage == "cut":
        bad = image[:at]
    elif damage == "flip":
        bad = image[:at] + bytes([image[at] ^ (1 << data.draw(st.integers(0, 7)))]) \
            + image[at + 1:]
    elif damage == "append":
        bad = image + data.draw(st.binary(min_size=1, max_size=40))
    else:
        junk = data.draw(st.binary(min_size=1, max_size=16))
        bad = image[:at] + junk + image[at + len(junk):]
    read_or_error(bad)


@SETTINGS
@given(st.lists(st.tuples(st.text(max_size=20), st.sampled_from(
    [stat.S_IFREG, stat.S_IFLNK, stat.S_IFDIR, stat.S_IFCHR])), max_size=6))
def test_names_are_shown_safely(entries: list[tuple[str, int]]) -> None:
    """Any name an archive can carry (absolute, '..', escapes, undecodable bytes) is listed on
    one line, without control characters, and never silently moved ("../x" is not "/x")."""
    for name, kind in entries:
        m = cpio.Member(name, kind | 0o644, b"target\x1b[2J" if kind == stat.S_IFLNK else b"")
        line = inspect._line(m)
        assert printable(line) == line and "\n" not in line
        path = cpio.member_path(name)
        if path is None:
            assert inspect.SUSPICIOUS in line
        else:
            assert ".." not in path.split("/")


# --- archives we write, read by GNU cpio (an independent reader) -------------------------------

COMPONENT = st.text(st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/"),
                    min_size=1, max_size=8).filter(lambda c: c not in (".", ".."))
TREE = st.lists(st.tuples(st.lists(COMPONENT, min_size=1, max_size=3).map("/".join),
                          st.sampled_from(["file", "dir", "symlink"]),
                          st.one_of(st.sampled_from([b"same", b"x"]),  # hardlinked files
                                    st.binary(min_size=1, max_size=32))),
                max_size=8, unique_by=lambda t: t[0])
KINDS = {"file": stat.S_IFREG | 0o644, "dir": stat.S_IFDIR | 0o755,
         "symlink": stat.S_IFLNK | 0o777}


@pytest.mark.skipif(which("cpio") is None, reason="GNU cpio not installed")
@settings(SETTINGS, max_examples=60)
@given(TREE)
def test_gnu_cpio_unpacks_what_we_wrote(tmp_path_factory: pytest.TempPathFactory,
                                        tree: list[tuple[str, str, bytes]]) -> None:
    """Any tree write_newc accepts (nested names, any printable characters, hardlinked
    duplicates) is unpacked by GNU cpio to exactly the files, directories and links given."""
    members = [cpio.Member(name, KINDS[kind], b"" if kind == "dir" else
                           (data.replace(b"\0", b"x") if kind == "symlink" else data))
               for name, kind, data in tree]
    try:
        archive = cpio.write_newc(members)
    except BootgenError:
        assume(False)
        return
    dest = tmp_path_factory.mktemp("unpacked")
    run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames", "-D", str(dest)],
        input=archive)
    for m in members:
        path = dest / m.name
        assert stat.S_IFMT(os.lstat(path).st_mode) == stat.S_IFMT(m.mode), m.name
        if stat.S_ISLNK(m.mode):
            assert os.fsencode(os.readlink(path)) == m.data
        elif stat.S_ISREG(m.mode):
            assert path.read_bytes() == m.data
    read = {m.name for m in cpio.read_newc(archive)[0]}
    on_disk = {str(p.relative_to(dest)) for p in dest.rglob("*")}
    assert read == on_disk
