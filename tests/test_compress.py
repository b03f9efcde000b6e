"""Compressors, stream decompression and initrd segment detection."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random
import stat
import struct
from pathlib import Path

import pytest
import zstandard

from bootgen.archive.compress import (
    LZ4_LEGACY_MAGIC,
    METHODS,
    Segment,
    compress,
    decompress_stream,
    detect,
    read_image,
)
from bootgen.archive.cpio import Member, read_newc, write_newc
from bootgen.errors import BuildError
from bootgen.run import run, which

from .conftest import KVER, debian_initrd

REG = stat.S_IFREG | 0o644
TOOLS = {"zstd": "zstd", "gzip": "gzip", "xz": "xz", "lz4": "lz4"}


def payload(size: int = 200_000, seed: int = 1) -> bytes:
    """Compressible but not trivial data."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghij\n", k=rng.randint(1, 12))) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


def archive(*names: str) -> bytes:
    return write_newc([Member(n, REG, n.encode() * 3) for n in names])


COMPRESSED = [m for m in METHODS if m != "none"]


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_and_round_trip(method: str) -> None:
    data = payload()
    first = compress(data, method)
    assert compress(data, method) == first
    if method == "none":
        assert first == data
        return
    assert len(first) < len(data)
    got_method, out, end = decompress_stream(first + b"\0" * 16, 0)
    assert (got_method, out, end) == (method, data, len(first))
    assert detect(first, 0) == method


@pytest.mark.parametrize("method", COMPRESSED)
def test_system_tool_decompresses(method: str) -> None:
    tool = TOOLS[method]
    if which(tool) is None:
        pytest.skip(f"{tool} not installed")
    data = payload(300_000, seed=2)
    assert run([tool, "-dc"], input=compress(data, method)).stdout == data


@pytest.mark.parametrize("method", COMPRESSED)
def test_empty_input(method: str) -> None:
    assert decompress_stream(compress(b"", method), 0)[1] == b""


def test_gzip_header_is_fixed() -> None:
    out = compress(b"abc" * 1000, "gzip")
    assert out[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"  # no name, mtime 0, Unix
    assert gzip.decompress(out) == b"abc" * 1000
    assert compress(b"abc", "gzip", 1)[8] == 4


def test_xz_uses_crc32() -> None:
    out = compress(b"abc" * 1000, "xz")
    assert out[6:8] == b"\x00\x01"  # stream flags: check type 1 = CRC32
    assert lzma.decompress(out) == b"abc" * 1000


def test_zstd_writes_content_size() -> None:
    data = payload(50_000)
    params = zstandard.get_frame_parameters(compress(data, "zstd"))
    assert params.content_size == len(data)
    assert params.dict_id == 0
    assert compress(data, "zstd") != compress(data, "zstd", 3)
    assert compress(data, "zstd") == compress(data, "zstd", 19)  # the default level


def test_lz4_legacy_blocks() -> None:
    data = payload(9 << 20, seed=3)  # more than one 8 MiB block
    out = compress(data, "lz4")
    assert struct.unpack_from("<I", out, 0)[0] == LZ4_LEGACY_MAGIC
    sizes = []
    pos = 4
    while pos < len(out):
        (size,) = struct.unpack_from("<I", out, pos)
        sizes.append(size)
        pos += 4 + size
    assert pos == len(out) and len(sizes) == 2
    assert decompress_stream(out, 0) == ("lz4", data, len(out))
    if which("lz4"):
        assert run(["lz4", "-dc"], input=out).stdout == data


def test_lz4_stream_end_detection() -> None:
    body = compress(archive("a", "b"), "lz4")
    plain = archive("secret")
    # ends at NUL padding
    assert decompress_stream(body + b"\0" * 8 + plain, 0)[2] == len(body)
    # ends at the next segment's magic
    assert decompress_stream(body + plain, 0)[2] == len(body)
    # a repeated lz4 legacy magic continues the same stream
    two = body + compress(archive("c"), "lz4")
    method, out, end = decompress_stream(two, 0)
    assert end == len(two)
    assert out == archive("a", "b") + archive("c")


def test_unknown_method_and_bad_level() -> None:
    with pytest.raises(BuildError) as exc:
        compress(b"x", "brotli")
    assert exc.value.message == (
        "unknown compression method 'brotli'; valid methods: zstd, gzip, xz, lz4, none"
    )
    with pytest.raises(BuildError) as exc:
        compress(b"x", "gzip", 10)
    assert exc.value.message == "invalid gzip level 10; valid levels: 0..9"


def test_detect() -> None:
    assert detect(archive("a"), 0) == "cpio"
    assert detect(b"070702" + b"0" * 104, 0) == "cpio"
    assert detect(b"\0\0" + compress(b"x", "zstd"), 2) == "zstd"
    assert detect(bz2.compress(b"x"), 0) == "bzip2"
    assert detect(lzma.compress(b"x", format=lzma.FORMAT_ALONE), 0) == "lzma"
    assert detect(b"\x89LZO\x00", 0) == "lzo"
    assert detect(b"hello", 0) is None
    assert detect(b"07070", 0) is None
    assert detect(b"", 5) is None


# ---- read_image ----------------------------------------------------------------------------


def names(seg: Segment) -> list[str]:
    return [m.name for m in seg.members]


def test_concatenated_image() -> None:
    early = write_newc([Member("kernel/x86/microcode/GenuineIntel.bin", REG, b"\x01" * 100)])
    main = compress(archive("init", "etc/a") + archive("lib/b"), "zstd")
    extra = compress(archive("secret/key"), "gzip")
    tail_xz = compress(archive("x"), "xz")
    tail_lz4 = compress(archive("y"), "lz4")
    plain = archive("last")
    pad = b"\0" * 512
    image = early + pad + main + extra + b"\0" * 3 + tail_xz + tail_lz4 + b"\0" * 4
    plain_at = len(image) + (-len(image) % 4)
    image += b"\0" * (plain_at - len(image)) + plain + b"\0" * 100
    segs = read_image(image)
    o_main = len(early) + 512
    o_extra = o_main + len(main)
    o_xz = o_extra + len(extra) + 3
    o_lz4 = o_xz + len(tail_xz)
    assert [(s.offset, s.end, s.compression, s.archives) for s in segs] == [
        (0, len(early), "none", 1),
        (o_main, o_main + len(main), "zstd", 2),
        (o_extra, o_extra + len(extra), "gzip", 1),
        (o_xz, o_xz + len(tail_xz), "xz", 1),
        (o_lz4, o_lz4 + len(tail_lz4), "lz4", 1),
        (plain_at, plain_at + len(plain), "none", 1),
    ]
    assert names(segs[0]) == ["kernel", "kernel/x86", "kernel/x86/microcode"] + [
        "kernel/x86/microcode/GenuineIntel.bin"
    ]
    assert names(segs[1]) == ["etc", "etc/a", "init", "lib", "lib/b"]
    assert segs[1].members[2].data == b"initinitinit"
    assert names(segs[2]) == ["secret", "secret/key"]
    assert names(segs[3]) == ["x"] and names(segs[4]) == ["y"] and names(segs[5]) == ["last"]


def test_gnu_tools_image(tmp_path: Path) -> None:
    """An image made like Debian's: GNU cpio early archive, then a zstd-compressed GNU cpio."""
    if which("cpio") is None or which("zstd") is None:
        pytest.skip("cpio or zstd not installed")
    (tmp_path / "e" / "kernel").mkdir(parents=True)
    (tmp_path / "e" / "kernel" / "ucode").write_bytes(b"u" * 1000)
    (tmp_path / "m" / "scripts").mkdir(parents=True)
    (tmp_path / "m" / "init").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "m" / "scripts" / "x").write_bytes(payload(5000))
    early = run(
        ["cpio", "-o", "--quiet", "-H", "newc"], input=b"kernel\nkernel/ucode\n", cwd=tmp_path / "e"
    ).stdout
    main_cpio = run(
        ["cpio", "-o", "--quiet", "-H", "newc"],
        input=b".\ninit\nscripts\nscripts/x\n",
        cwd=tmp_path / "m",
    ).stdout
    main = run(["zstd", "-q", "-19", "-c"], input=main_cpio).stdout
    segs = read_image(early + main)
    assert [s.compression for s in segs] == ["none", "zstd"]
    assert segs[1].offset == len(early) and segs[1].end == len(early) + len(main)
    assert names(segs[0]) == ["kernel", "kernel/ucode"]
    assert names(segs[1]) == [".", "init", "scripts", "scripts/x"]
    assert segs[1].members[3].data == payload(5000)


def test_image_errors() -> None:
    good = archive("a")
    with pytest.raises(BuildError) as exc:
        read_image(good + b"\0" * 4 + bz2.compress(good))
    assert exc.value.message == f"unsupported compression bzip2 at offset {len(good) + 4}"
    with pytest.raises(BuildError) as exc:
        read_image(lzma.compress(good, format=lzma.FORMAT_ALONE))
    assert exc.value.message == "unsupported compression lzma at offset 0"
    with pytest.raises(BuildError) as exc:
        read_image(good + b"garbage!")
    assert exc.value.message == (
        f"unrecognised data at offset {len(good)} (bytes {b'garbage!'.hex()})"
    )
    zstd_cut = compress(good, "zstd")[:-5]
    with pytest.raises(BuildError) as exc:
        read_image(zstd_cut)
    assert exc.value.message == ("truncated zstd stream at offset 0: it ends before its end marker")
    with pytest.raises(BuildError) as exc:
        read_image(compress(b"not a cpio archive", "gzip"))
    assert exc.value.message == "no cpio archive at offset 0"
    assert exc.value.location == "gzip segment at offset 0, decompressed"
    with pytest.raises(BuildError) as exc:
        read_image(compress(good[:-30], "xz"))
    assert exc.value.message.startswith("truncated cpio archive")
    with pytest.raises(BuildError) as exc:
        decompress_stream(good, 0)
    assert exc.value.message == "no compressed stream at offset 0 (an uncompressed cpio archive)"
    assert read_image(b"") == [] and read_image(b"\0" * 64) == []


def test_misaligned_plain_cpio() -> None:
    main = compress(archive("a"), "gzip")
    pad = 1 if (len(main) + 1) % 4 else 2
    with pytest.raises(BuildError) as exc:
        read_image(main + b"\0" * pad + archive("b"))
    assert exc.value.message == (
        f"uncompressed cpio archive at offset {len(main) + pad} is not 4-byte aligned"
    )


# ---- the real Debian initrd ----------------------------------------------------------------


def reference_names(data: bytes, segs: list[Segment]) -> list[str]:
    """Names as GNU cpio sees them, decompressing each segment with the system tool."""
    out: list[str] = []
    for seg in segs:
        raw = data[seg.offset : seg.end]
        if seg.compression != "none":
            tool = TOOLS[seg.compression]
            if which(tool) is None:
                pytest.skip(f"{tool} not installed")
            raw = run([tool, "-dc"], input=raw).stdout
            assert raw == decompress_stream(data, seg.offset)[1]
        pos = 0
        for _ in range(seg.archives):  # GNU cpio stops at the first trailer
            while raw[pos : pos + 1] == b"\0":
                pos += 1
            end = read_newc(raw, pos)[1]
            listing = run(["cpio", "-t", "--quiet"], input=raw[pos:end]).stdout
            out += listing.decode(errors="surrogateescape").splitlines()
            pos = end
    return out


@pytest.mark.skipif(which("cpio") is None, reason="GNU cpio not installed")
def test_debian_initrd() -> None:
    initrd = debian_initrd()
    if initrd is None:
        pytest.skip(f"no readable /boot/initrd.img-{KVER} (Debian's initrd of the newest kernel)")
    data = initrd.read_bytes()
    segs = read_image(data)
    assert segs, "no segments found"
    assert segs[-1].compression in ("zstd", "gzip", "xz", "lz4")
    members = [m for s in segs for m in s.members]
    by_name = {m.name: m for m in members}
    init = by_name.get("init")
    assert init is not None and init.data.startswith(b"#!")
    assert stat.S_ISREG(init.mode) and init.mode & 0o111
    assert [m.name for m in members] == reference_names(data, segs)
    if which("lsinitramfs"):
        listing = run(["lsinitramfs", str(initrd)]).stdout.decode(errors="surrogateescape")
        assert len(members) == len(listing.splitlines())
    # every member of a hardlink group carries the data
    groups: dict[int, list[Member]] = {}
    for m in segs[-1].members:
        if stat.S_ISREG(m.mode) and m.nlink > 1:
            groups.setdefault(m.ino, []).append(m)
    for group in groups.values():
        assert len({m.data for m in group}) == 1 and group[0].data


def test_proven_stream_is_not_unpacked_twice() -> None:
    """A stream the caller already unpacked and compared (a segment cache hit) is taken as
    proven only where its bytes are found exactly; anything else is unpacked as usual."""
    first, second = archive("a"), archive("b")
    stream_a, stream_b = compress(first, "zstd"), compress(second, "zstd")
    image = stream_a + stream_b
    # told (wrongly, to see it used) that stream_b unpacks to archive "c": taken at its offset
    segs = read_image(image, proven={len(stream_a): (stream_b, archive("c"))})
    assert names(segs[1]) == ["c"] and segs[1].end == len(image)
    # the same claim at an offset where other bytes are: unpacked, claim ignored
    segs = read_image(image, proven={0: (stream_b, archive("c"))})
    assert names(segs[0]) == ["a"] and names(segs[1]) == ["b"]
    # a stream that differs from the proven one by one byte is unpacked (and found corrupt)
    broken = stream_a + stream_b[:-1] + bytes([stream_b[-1] ^ 1])
    with pytest.raises(BuildError, match="corrupt zstd stream|checksum"):
        read_image(broken, proven={len(stream_a): (stream_b, second)})
    # the limit counts proven streams too
    with pytest.raises(BuildError, match="unpacks to more than"):
        read_image(image, limit=len(first) + 1, proven={len(stream_a): (stream_b, second)})


def test_zstd_bytes_do_not_depend_on_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strong zstd levels compress in jobs on every CPU: the bytes are the same on a machine
    with 1, 2 or 4 of them (jobs made small here so that the input makes several)."""
    import bootgen.archive.compress as module

    data = payload(3 << 20, seed=7)
    monkeypatch.setattr(module, "ZSTD_JOB", 1 << 20)
    out = {}
    for n in (1, 2, 4):
        monkeypatch.setattr(module, "workers", lambda n=n: n)
        out[n] = compress(data, "zstd", 19)
    assert out[1] == out[2] == out[4]
    assert zstandard.ZstdDecompressor().decompress(out[1]) == data


def test_recipe_names_what_decides_the_bytes() -> None:
    import bootgen.archive.compress as module

    assert module.recipe("zstd", 19) != module.recipe("zstd", 18) != module.recipe("gzip", 9)
    assert module.recipe("zstd") == module.recipe("zstd", 19)  # the default level, named
    assert ".".join(map(str, zstandard.ZSTD_VERSION)) in module.recipe("zstd")
    with pytest.raises(BuildError, match="invalid zstd level 30"):
        module.recipe("zstd", 30)


def test_matches_proves_a_cache_hit_without_trusting_its_header() -> None:
    from bootgen.archive.compress import matches

    raw = write_newc([Member("big", REG, payload(300_000))])  # a 4-byte size field
    good = compress(raw, "zstd")
    assert matches(good, "zstd", raw) is None
    assert matches(good + b"x", "zstd", raw) is not None  # bytes after the frame
    assert matches(good + good, "zstd", raw) is not None  # two frames
    assert matches(good[:-3], "zstd", raw) is not None  # truncated
    assert matches(compress(archive("init"), "zstd"), "zstd", raw) is not None
    assert matches(compress(raw, "gzip"), "zstd", raw) is not None
    # a header that claims 4 GiB is not believed, nor is that much memory asked for
    fhd = good[4]
    single, dict_flag, fcs_flag = (fhd >> 5) & 1, fhd & 3, fhd >> 6
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fcs_flag]
    assert width == 4, "the test archive's size field is 4 bytes wide"
    liar = good[:at] + struct.pack("<I", 0xFFFFFFF0) + good[at + width:]
    assert "unpacks to more than" in (matches(liar, "zstd", raw) or "")
