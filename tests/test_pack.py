"""Packing: secrets kept apart, alignment, early microcode, read-back checks."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bootgen.archive import cpio
from bootgen.archive.compress import read_image
from bootgen.errors import BuildError
from bootgen.image.check import check
from bootgen.image.pack import microcode, pack
from bootgen.image.spec import Entry, Image, ImageSpec


def spec(compression: str = "zstd") -> ImageSpec:
    return ImageSpec(flavor="scripted", kver="k", compression=compression, compression_level=None,
                     features=(), init="/init", programs=(), libraries=(), files=(),
                     generated=(), hooks=(), symlinks=(), dirs=(), devnodes=(), modules=())


def image(entries: list[Entry], compression: str = "zstd") -> Image:
    return Image(spec(compression), tuple(entries), (), ())


INIT = Entry("/init", "file", 0o755, data=b"#!/bin/sh\n")
KEY = Entry("/etc/keys/root.key", "file", 0o400, data=b"very secret", secret=True)


@pytest.mark.parametrize("method", ["zstd", "gzip", "xz", "lz4", "none"])
def test_secrets_in_a_separate_aligned_archive(method: str) -> None:
    packed = pack(image([INIT, KEY], method), early_microcode=False)
    assert b"very secret" not in packed.main
    assert packed.main == pack(image([INIT], method), early_microcode=False).main
    data = packed.data
    # public part, NUL padding to a multiple of 4, then the secrets archive
    assert data.startswith(packed.public) and data.endswith(packed.secrets)
    start = len(data) - len(packed.secrets)
    assert start % 4 == 0 and start >= len(packed.public)
    assert data[len(packed.public):start] == b"\0" * (start - len(packed.public))
    segments = read_image(data)
    assert [m.name for m in segments[-1].members] == ["etc", "etc/keys", "etc/keys/root.key"]
    assert segments[-1].members[-1].data == b"very secret"
    assert segments[-1].offset == start


def test_microcode_early_archive(tmp_path: Path) -> None:
    fw = tmp_path / "usr/lib/firmware/intel-ucode"
    fw.mkdir(parents=True)
    (fw / "06-55-04").write_bytes(b"A" * 10)
    (fw / "06-8e-09").write_bytes(b"B" * 5)
    early = microcode(str(tmp_path))
    members, _ = cpio.read_newc(early)
    blob = next(m for m in members if m.name == "kernel/x86/microcode/GenuineIntel.bin")
    assert blob.data == b"A" * 10 + b"B" * 5
    assert microcode(str(tmp_path / "nothing")) == b""


def test_check_finds_missing_init_and_libraries() -> None:
    raw = cpio.write_newc([cpio.Member("bin/x", stat.S_IFREG | 0o755, b"#!/bin/sh\n")])
    with pytest.raises(BuildError, match="/init /init is missing"):
        check(raw, init="/init")
    elf = Path("/usr/bin/kmod").read_bytes()  # needs libc, libzstd, liblzma, libcrypto
    raw = cpio.write_newc([
        cpio.Member("init", stat.S_IFREG | 0o755, elf),
        cpio.Member("lib64/ld-linux-x86-64.so.2", stat.S_IFREG | 0o755, b"x"),
    ])
    with pytest.raises(BuildError, match=r"/init needs lib\w+\.so\.\d, missing from the image"):
        check(raw, init="/init")


def test_check_follows_symlinks_in_the_image() -> None:
    raw = cpio.write_newc([
        cpio.Member("init", stat.S_IFLNK | 0o777, b"usr/bin/sh"),
        cpio.Member("usr/bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        cpio.Member("usr/bin/busybox", stat.S_IFREG | 0o755, b"#!static"),
    ])
    assert check(raw, init="/init").members == 5  # init, usr, usr/bin, sh, busybox
