"""Stage `pack`: Image -> archive bytes (early microcode cpio + compressed main cpio + secrets).

The main archive is reproducible: sorted entries, uid/gid 0, one mtime (SOURCE_DATE_EPOCH or 0),
renumbered inodes, identical files stored once as hardlinks. Secrets (keyfiles, host keys) go to
a separate uncompressed archive appended after it, so the main archive's bytes never depend on
them. Reads file contents from the build host; writes nothing.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass

from . import compress, cpio
from .spec import Entry, Image

_TYPE = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
         "char": stat.S_IFCHR, "block": stat.S_IFBLK}

# Early microcode: the kernel looks for these exact names in an uncompressed first archive.
MICROCODE = (
    ("kernel/x86/microcode/GenuineIntel.bin", "usr/lib/firmware/intel-ucode/*"),
    ("kernel/x86/microcode/AuthenticAMD.bin", "usr/lib/firmware/amd-ucode/microcode_amd*.bin"),
)


@dataclass(frozen=True)
class Packed:
    early: bytes  # uncompressed microcode archive, or b""
    main: bytes  # compressed main archive
    secrets: bytes  # uncompressed secrets archive, or b""
    raw_size: int  # main archive before compression

    @property
    def public(self) -> bytes:
        """The reproducible part: early and main archives."""
        return self.early + self.main

    @property
    def padding(self) -> bytes:
        """NULs before an appended archive: the kernel finds one only at a 4-byte aligned
        offset, and its lz4 legacy decoder stops only at a zero block size (4 NULs more)."""
        pad = -len(self.public) % 4 + (4 if self.main[:4] == b"\x02\x21\x4c\x18" else 0)
        return b"\0" * pad

    @property
    def data(self) -> bytes:
        """The whole image: public archives, then the secrets archive when there is one."""
        return self.public + (self.padding + self.secrets if self.secrets else b"")


def source_mtime() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    return int(value) if value.isdigit() else 0


def read_source(entry: Entry) -> bytes:
    """The content of an entry copied from the build host (`source` is a host path)."""
    assert entry.source is not None
    with open(entry.source, "rb") as f:
        return f.read()


def to_member(entry: Entry) -> cpio.Member:
    mode = _TYPE[entry.kind] | entry.mode
    if entry.kind == "file":
        data = entry.data if entry.data is not None else read_source(entry)
        return cpio.Member(entry.path.lstrip("/"), mode, data)
    if entry.kind == "symlink":
        return cpio.Member(entry.path.lstrip("/"), mode, (entry.target or "").encode())
    return cpio.Member(entry.path.lstrip("/"), mode, rdev=entry.rdev)


def microcode(root: str = "/") -> bytes:
    """An early archive with the host's CPU microcode, or b"" when the host has none."""
    members = []
    for name, pattern in MICROCODE:
        files = sorted(glob.glob(os.path.join(root, pattern)))
        if files:
            blob = b"".join(open(f, "rb").read() for f in files if os.path.isfile(f))
            members.append(cpio.Member(name, stat.S_IFREG | 0o644, blob))
    return cpio.write_newc(members, mtime=source_mtime()) if members else b""


def pack(image: Image, *, root: str = "/", early_microcode: bool = True) -> Packed:
    mtime = source_mtime()
    public = [to_member(e) for e in image.entries if not e.secret]
    secret = [to_member(e) for e in image.entries if e.secret]
    raw = cpio.write_newc(public, mtime=mtime)
    spec = image.spec
    main = compress.compress(raw, spec.compression, spec.compression_level)
    return Packed(
        early=microcode(root) if early_microcode else b"",
        main=main,
        secrets=cpio.write_newc(secret, mtime=mtime) if secret else b"",
        raw_size=len(raw),
    )
