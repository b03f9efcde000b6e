"""newc writer/reader: round trips, exact header bytes, GNU cpio cross-checks, errors."""

from __future__ import annotations

import os
import random
import re
import stat
from pathlib import Path

import pytest

from bootgen.archive.cpio import Member, read_newc, write_newc
from bootgen.errors import BuildError
from bootgen.run import run, which

REG = stat.S_IFREG
DIR = stat.S_IFDIR
LNK = stat.S_IFLNK
CHR = stat.S_IFCHR
BLK = stat.S_IFBLK

needs_cpio = pytest.mark.skipif(which("cpio") is None, reason="GNU cpio not installed")


def raw_headers(archive: bytes) -> list[dict[str, int | str]]:
    """An independent, minimal newc header walker for checking what was written."""
    names = "ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor"
    fields = names.split() + ["namesize", "check"]
    out: list[dict[str, int | str]] = []
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701", pos
        entry: dict[str, int | str] = {
            f: int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i, f in enumerate(fields)
        }
        namesize = int(entry["namesize"])
        name = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        entry["name"] = name
        out.append(entry)
        pos += 110 + namesize
        pos += -pos % 4
        pos += int(entry["filesize"])
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(archive)
            return out


def sample() -> list[Member]:
    busybox = b"\x7fELF busybox" * 100
    return [
        Member("etc/secret", DIR | 0o700),
        Member("etc/secret/key", REG | 0o600, b"k3y"),
        Member("etc/hostname", REG | 0o644, b"host\n"),
        Member("usr/bin/busybox", REG | 0o755, busybox),
        Member("usr/bin/sh", REG | 0o755, busybox),
        Member("sbin/init", REG | 0o755, busybox),
        Member("usr/bin/not-exec", REG | 0o644, busybox),  # same content, other mode: no link
        Member("usr/lib/empty1", REG | 0o644),
        Member("usr/lib/empty2", REG | 0o644),
        Member("bin", LNK | 0o777, b"usr/bin"),
        Member("dev/console", CHR | 0o600, rdev=(5, 1)),
        Member("dev/null", CHR | 0o666, rdev=(1, 3)),
        Member("dev/kmsg", CHR | 0o644, rdev=(1, 11)),
        Member("dev/sda", BLK | 0o660, rdev=(8, 0)),
        Member("root/a/b/c/deep", REG | 0o644, b"deep"),
    ]


EXPECTED_NAMES = [
    "bin",
    "dev",
    "dev/console",
    "dev/kmsg",
    "dev/null",
    "dev/sda",
    "etc",
    "etc/hostname",
    "etc/secret",
    "etc/secret/key",
    "root",
    "root/a",
    "root/a/b",
    "root/a/b/c",
    "root/a/b/c/deep",
    "sbin",
    "sbin/init",
    "usr",
    "usr/bin",
    "usr/bin/busybox",
    "usr/bin/not-exec",
    "usr/bin/sh",
    "usr/lib",
    "usr/lib/empty1",
    "usr/lib/empty2",
]


def test_round_trip() -> None:
    archive = write_newc(sample(), mtime=1700000000)
    members, end = read_newc(archive)
    assert end == len(archive)
    assert [m.name for m in members] == EXPECTED_NAMES
    by_name = {m.name: m for m in members}
    for m in sample():
        got = by_name[m.name]
        assert got.mode == m.mode, m.name
        assert got.data == m.data, m.name
        assert got.rdev == m.rdev, m.name
    for implied in ("dev", "etc", "root", "root/a", "root/a/b", "root/a/b/c", "sbin", "usr"):
        assert by_name[implied].mode == DIR | 0o755
    assert by_name["etc/secret"].mode == DIR | 0o700  # a passed directory keeps its mode
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 1700000000 for m in members)
    group = [by_name[n] for n in ("sbin/init", "usr/bin/busybox", "usr/bin/sh")]
    assert {m.ino for m in group} == {group[0].ino}
    assert all(m.nlink == 3 for m in group)
    others = [m for m in members if m not in group]
    assert all(m.nlink == 1 for m in others)
    assert len({m.ino for m in others} | {group[0].ino}) == len(others) + 1
    assert by_name["usr/lib/empty1"].ino != by_name["usr/lib/empty2"].ino


def test_inodes_and_hardlink_layout() -> None:
    heads = raw_headers(write_newc(sample(), mtime=7))
    entries, trailer = heads[:-1], heads[-1]
    # inodes numbered from 1 in output order (a hardlink group takes its first position's)
    seen: list[int] = []
    for h in entries:
        if h["ino"] not in seen:
            seen.append(int(h["ino"]))
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) == len(entries) - 2  # three members share one inode
    group = [h for h in entries if h["nlink"] == 3]
    assert [h["name"] for h in group] == ["sbin/init", "usr/bin/busybox", "usr/bin/sh"]
    assert [h["filesize"] for h in group] == [0, 0, 1200]  # data on the last one only
    for h in entries:
        assert (h["uid"], h["gid"], h["mtime"], h["check"]) == (0, 0, 7, 0)
        assert (h["devmajor"], h["devminor"]) == (0, 0)
    dev = {str(h["name"]): (h["rdevmajor"], h["rdevminor"]) for h in entries}
    assert dev["dev/console"] == (5, 1) and dev["dev/kmsg"] == (1, 11) and dev["dev/sda"] == (8, 0)
    assert trailer == {
        "ino": 0,
        "mode": 0,
        "uid": 0,
        "gid": 0,
        "nlink": 1,
        "mtime": 0,
        "filesize": 0,
        "devmajor": 0,
        "devminor": 0,
        "rdevmajor": 0,
        "rdevminor": 0,
        "namesize": 11,
        "check": 0,
        "name": "TRAILER!!!",
    }


def test_exact_bytes() -> None:
    archive = write_newc([Member("ab", REG | 0o644, b"hello")], mtime=0x6553F100)
    expected = (
        b"070701" + b"00000001000081A4000000000000000000000001" + b"6553F100"
        b"00000005" + b"0" * 32 + b"00000003" + b"00000000" + b"ab\0" + b"\0\0\0"  # 113 -> 116
        b"hello\0\0\0"
        b"070701" + b"00000000" * 4 + b"00000001" + b"00000000" * 6 + b"0000000B00000000"
        b"TRAILER!!!\0" + b"\0\0\0"
    )
    assert archive == expected
    assert len(archive) % 4 == 0


def test_deterministic_regardless_of_order() -> None:
    ref = write_newc(sample())
    rng = random.Random(1234)
    for _ in range(5):
        shuffled = sample()
        rng.shuffle(shuffled)
        assert write_newc(shuffled) == ref
    # mtime is the only time input
    assert write_newc(sample(), mtime=5) != ref


def test_names_normalized_and_dot_skipped() -> None:
    members, _ = read_newc(
        write_newc([Member(".", DIR | 0o755), Member("/etc/x", REG | 0o644, b"x")])
    )
    assert [m.name for m in members] == ["etc", "etc/x"]


def test_byte_order_sorting_keeps_parents_first() -> None:
    members, _ = read_newc(
        write_newc(
            [Member("a/b/c", REG | 0o644, b"1"), Member("a-b", REG | 0o644, b"2")]
            + [Member("A", REG | 0o644, b"3"), Member("\u00e9t\u00e9", REG | 0o644, b"4")]
        )
    )
    assert [m.name for m in members] == ["A", "a", "a-b", "a/b", "a/b/c", "\u00e9t\u00e9"]


def test_duplicates_merge_or_conflict() -> None:
    same = [Member("etc/a", REG | 0o644, b"x"), Member("etc/a", REG | 0o644, b"x")]
    assert [m.name for m in read_newc(write_newc(same))[0]] == ["etc", "etc/a"]
    # a passed directory identical to an implied one is fine too
    write_newc([Member("etc", DIR | 0o755), Member("etc/a", REG | 0o644, b"x")])
    with pytest.raises(BuildError) as exc:
        write_newc([Member("etc/a", REG | 0o644, b"x"), Member("etc/a", REG | 0o644, b"y")])
    assert exc.value.message == "conflicting entries for etc/a"
    with pytest.raises(BuildError) as exc:
        write_newc([Member("etc/a", REG | 0o644, b"x"), Member("/etc/a", REG | 0o755, b"x")])
    assert exc.value.message == "conflicting entries for etc/a"


def test_parent_must_be_a_directory() -> None:
    with pytest.raises(BuildError) as exc:
        write_newc([Member("lib", LNK | 0o777, b"usr/lib"), Member("lib/x/y", REG | 0o644, b"")])
    assert exc.value.message == "lib/x/y: parent lib is a symlink, not a directory"


@pytest.mark.parametrize("name", ["", "a/../b", "a//b", "a/./b", "..", "a/", "x\0y"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(BuildError) as exc:
        write_newc([Member(name, REG | 0o644, b"")])
    assert exc.value.message == f"invalid archive path {name!r}"


@pytest.mark.parametrize("name", ["TRAILER!!!", "/TRAILER!!!", "./TRAILER!!!"])
def test_a_member_named_like_the_end_marker_is_refused(name: str) -> None:
    """The kernel stops unpacking at TRAILER!!!: every entry after it would be lost."""
    with pytest.raises(BuildError) as exc:
        write_newc([Member(name, REG | 0o644, b""), Member("init", REG | 0o755, b"x")])
    assert exc.value.message == (
        f"invalid archive path {name!r}: TRAILER!!! marks the end of a cpio archive")
    # one level down it is an ordinary name
    members, _ = read_newc(write_newc([Member("etc/TRAILER!!!", REG | 0o644, b"x")]))
    assert [m.name for m in members] == ["etc", "etc/TRAILER!!!"]


def test_invalid_members() -> None:
    with pytest.raises(BuildError) as exc:
        write_newc([Member("x", 0o644, b"")])
    assert exc.value.message == "x: mode 0o644 has no valid file type bits"
    with pytest.raises(BuildError) as exc:
        write_newc([Member("d", DIR | 0o755, b"data")])
    assert exc.value.message == "d: a directory cannot carry data"
    with pytest.raises(BuildError) as exc:
        write_newc([Member("l", LNK | 0o777, b"")])
    assert exc.value.message == "l: symlink with an empty target"


def test_what_the_kernel_would_skip_is_refused() -> None:
    """init/initramfs.c skips names and symlink targets over PATH_MAX without a word, and cannot
    create a component over NAME_MAX: such an image would boot without those files."""
    longest = "/".join(["d" * 255] * 16)  # 4095 bytes + NUL = PATH_MAX
    assert len(longest) == 4095
    assert len(read_newc(write_newc([Member(longest, REG | 0o644, b"x")]))[0]) == 16
    write_newc([Member("l", LNK | 0o777, b"t" * 4096)])
    for member in (Member(longest + "e", REG | 0o644, b"x"),
                   Member("a/" + "n" * 256, REG | 0o644, b"x"),
                   Member("\udcff" * 256, REG | 0o644, b"x")):
        with pytest.raises(BuildError, match="the kernel would not unpack it"):
            write_newc([member])
    for target in (b"t" * 4097, b"a\0b"):
        with pytest.raises(BuildError) as exc:
            write_newc([Member("l", LNK | 0o777, target)])
        assert exc.value.message == ("l: symlink target longer than 4096 bytes or with a NUL "
                                     "(the kernel would skip or cut it)")


# ---- reader errors -------------------------------------------------------------------------


def small_archive() -> bytes:
    return write_newc([Member("a", REG | 0o644, b"0123456789"), Member("b", REG | 0o644, b"z")])


def test_read_truncated_in_data() -> None:
    archive = small_archive()
    cut = archive[:120]  # inside the data of "a" (header 110 + name 2 + pad 0 -> data at 112)
    with pytest.raises(BuildError) as exc:
        read_newc(cut)
    assert exc.value.message == (
        "truncated cpio archive: entry at offset 0 runs past the end of the data (120 bytes)"
    )


def test_read_truncated_in_header() -> None:
    archive = small_archive()
    with pytest.raises(BuildError) as exc:
        read_newc(archive[:150])  # second header starts at 124
    assert exc.value.message == (
        "truncated cpio archive: entry at offset 124 runs past the end of the data (150 bytes)"
    )


def test_read_missing_trailer() -> None:
    archive = small_archive()
    without_trailer = archive[: archive.index(b"070701", 200)]
    with pytest.raises(BuildError) as exc:
        read_newc(without_trailer)
    assert exc.value.message == (
        f"truncated cpio archive: no TRAILER!!! before the end of the data "
        f"at offset {len(without_trailer)}"
    )


def test_read_garbage() -> None:
    with pytest.raises(BuildError) as exc:
        read_newc(b"this is not a cpio archive at all" * 10)
    assert exc.value.message == "bad cpio header at offset 0"
    archive = small_archive()
    broken = archive[:124] + b"07070X" + archive[130:]
    with pytest.raises(BuildError) as exc:
        read_newc(broken)
    assert exc.value.message == "bad cpio header at offset 124"
    # non-hex digits that int() would accept ("+", "_", spaces) are rejected too
    broken = archive[:6] + b"+0000001" + archive[14:]
    with pytest.raises(BuildError) as exc:
        read_newc(broken)
    assert exc.value.message == "bad cpio header at offset 0"


def test_read_at_offset() -> None:
    archive = small_archive()
    members, end = read_newc(b"JUNKJUNK" + archive + b"\0" * 100, 8)
    assert [m.name for m in members] == ["a", "b"]
    assert end == 8 + len(archive)


def test_read_crc_checksum() -> None:
    archive = bytearray(small_archive())
    # turn it into a "070702" archive with correct checksums by hand
    pos = 0
    while True:
        archive[pos : pos + 6] = b"070702"
        size = int(archive[pos + 54 : pos + 62], 16)
        namesize = int(archive[pos + 94 : pos + 102], 16)
        start = pos + 110 + namesize
        start += -start % 4
        archive[pos + 102 : pos + 110] = b"%08X" % (sum(archive[start : start + size]) & 0xFFFFFFFF)
        if archive[pos + 110 : pos + 120] == b"TRAILER!!!":
            break
        pos = start + size + (-(start + size) % 4)
    members, _ = read_newc(bytes(archive))
    assert [m.data for m in members] == [b"0123456789", b"z"]
    archive[112] ^= 1  # first data byte of "a"
    with pytest.raises(BuildError) as exc:
        read_newc(bytes(archive))
    assert exc.value.message == "bad cpio data checksum for a at offset 0"


# ---- GNU cpio cross-checks -----------------------------------------------------------------


def files_only() -> list[Member]:
    return [m for m in sample() if not (stat.S_ISCHR(m.mode) or stat.S_ISBLK(m.mode))]


@needs_cpio
def test_gnu_cpio_lists_our_names() -> None:
    archive = write_newc(sample())
    listing = run(["cpio", "-t", "--quiet"], input=archive).stdout.decode().splitlines()
    assert listing == EXPECTED_NAMES


@needs_cpio
def test_gnu_cpio_extracts(tmp_path: Path) -> None:
    archive = write_newc(files_only(), mtime=1000)
    dest = tmp_path / "root"
    dest.mkdir()
    run(
        ["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames", "-D", str(dest)],
        input=archive,
    )
    for m in files_only():
        path = dest / m.name
        st = os.lstat(path)
        assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(m.mode), m.name
        if stat.S_ISLNK(m.mode):
            assert os.readlink(path).encode() == m.data
        elif stat.S_ISREG(m.mode):
            assert path.read_bytes() == m.data, m.name
            assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(m.mode), m.name
    group = [os.lstat(dest / n) for n in ("sbin/init", "usr/bin/busybox", "usr/bin/sh")]
    assert len({st.st_ino for st in group}) == 1
    assert group[0].st_nlink == 3
    assert os.lstat(dest / "usr/bin/not-exec").st_ino != group[0].st_ino
    assert os.lstat(dest / "usr/lib/empty1").st_ino != os.lstat(dest / "usr/lib/empty2").st_ino
    assert stat.S_IMODE(os.lstat(dest / "etc/secret").st_mode) == 0o700


@needs_cpio
def test_gnu_cpio_lists_device_nodes() -> None:
    archive = write_newc(sample())
    out = run(["cpio", "-tv", "--quiet"], input=archive).stdout.decode()
    devices = {}
    for line in out.splitlines():
        m = re.match(r"([cb])[-rwx]{9}\s+\d+\s+\S+\s+\S+\s+(\d+),\s+(\d+)\s.*\s(\S+)$", line)
        if m:
            devices[m.group(4)] = (m.group(1), int(m.group(2)), int(m.group(3)))
    assert devices == {
        "dev/console": ("c", 5, 1),
        "dev/kmsg": ("c", 1, 11),
        "dev/null": ("c", 1, 3),
        "dev/sda": ("b", 8, 0),
    }


@needs_cpio
def test_read_gnu_cpio_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "a").write_bytes(b"shared\n")
    os.link(src / "d" / "a", src / "d" / "b")
    os.link(src / "d" / "a", src / "z")
    os.symlink("d/a", src / "l")
    (src / "e").write_bytes(b"")
    listing = "\n".join(["d", "d/a", "d/b", "d/sub", "e", "l", "z"]) + "\n"
    for fmt, magic in (("newc", b"070701"), ("crc", b"070702")):
        archive = run(["cpio", "-o", "--quiet", "-H", fmt], input=listing.encode(), cwd=src).stdout
        assert archive.startswith(magic)
        members, end = read_newc(archive)
        assert archive[end:].strip(b"\0") == b""  # GNU pads to 512-byte blocks
        by_name = {m.name: m for m in members}
        assert sorted(by_name) == ["d", "d/a", "d/b", "d/sub", "e", "l", "z"]
        for n in ("d/a", "d/b", "z"):
            assert by_name[n].data == b"shared\n", (fmt, n)
            assert by_name[n].nlink == 3
            assert by_name[n].ino == os.stat(src / "z").st_ino
        assert by_name["l"].data == b"d/a" and stat.S_ISLNK(by_name["l"].mode)
        assert stat.S_ISDIR(by_name["d/sub"].mode)
        assert by_name["e"].data == b""
