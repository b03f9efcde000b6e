"""Pure newc (SVR4 "070701") cpio writer and reader; no disk I/O.

The writer produces reproducible archives for the kernel's initramfs unpacker and GNU cpio:
entries sorted by name, implied parent directories, uid/gid 0, one mtime for every entry,
inodes renumbered from 1, identical regular files stored once as a hardlink group.
Header fields are 8 uppercase hex digits and the TRAILER!!! entry has nlink 1 and every
other field 0, exactly like ``cpio -o -H newc``.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import BuildError

MAGIC_NEWC = b"070701"
MAGIC_CRC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
MAX_FIELD = 0xFFFFFFFF
# The kernel's unpacker (init/initramfs.c) silently skips an entry whose name, with its NUL,
# or whose symlink target is longer than PATH_MAX; a component longer than NAME_MAX cannot be
# created. The writer refuses them rather than ship an image that loses files without a word.
PATH_MAX = 4096
NAME_MAX = 255

_FIELDS = (
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
)
_HEADER_RE = re.compile(rb"07070[12][0-9A-Fa-f]{104}")
_TYPES_WITHOUT_DATA = (stat.S_IFDIR, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
_KNOWN_TYPES = (stat.S_IFREG, stat.S_IFLNK, *_TYPES_WITHOUT_DATA)


@dataclass(frozen=True)
class Member:
    """One archive entry. The writer ignores ino/nlink/uid/gid/mtime; the reader fills them."""

    name: str  # path inside the archive without leading "/", e.g. "usr/bin/kmod"
    mode: int  # full st_mode including the file type bits
    data: bytes = b""  # file content; for symlinks the target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes
    ino: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    mtime: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_device(self) -> bool:
        return stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode)


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def normalize_name(name: str) -> str:
    """Strip leading "/" and "./"; reject empty, "..", "." and empty components, NUL, the end
    marker TRAILER!!! and what the kernel cannot unpack (over PATH_MAX or NAME_MAX)."""
    stripped = name
    while stripped.startswith(("/", "./")):
        stripped = stripped[1:] if stripped.startswith("/") else stripped[2:]
    if stripped == "." or (stripped == "" and name in ("/", ".", "./")):
        return "."
    parts = stripped.split("/")
    if not stripped or "\0" in stripped or any(p in ("", ".", "..") for p in parts):
        raise BuildError(
            f"invalid archive path {name!r}",
            location="cpio",
            hint='use a normalized relative path such as "usr/bin/kmod"',
        )
    if stripped == TRAILER:
        # the kernel (and every reader) stops unpacking at an entry of this name
        raise BuildError(
            f"invalid archive path {name!r}: {TRAILER} marks the end of a cpio archive",
            location="cpio",
        )
    raw = _encode(stripped)
    if len(raw) + 1 > PATH_MAX or any(len(p) > NAME_MAX for p in raw.split(b"/")):
        shown = stripped if len(stripped) <= 60 else stripped[:57] + "..."
        raise BuildError(f"{shown}: path longer than {PATH_MAX - 1} bytes or with a "
                         f"component longer than {NAME_MAX} (the kernel would not unpack it)",
                         location="cpio")
    return stripped


def member_path(name: str) -> str | None:
    """The absolute path an archive name unpacks to ("./etc/x" and "etc/x" → "/etc/x", "." →
    "/"), or None for a name the kernel would not place below / as written: an absolute name,
    or one with a ".." component (shown as it is by readers, never silently "fixed")."""
    stripped = name
    while stripped.startswith("./"):
        stripped = stripped[2:]
    if stripped in ("", "."):
        return "/"
    if stripped.startswith("/") or ".." in stripped.split("/"):
        return None
    return "/" + "/".join(p for p in stripped.split("/") if p not in ("", "."))


def _key(m: Member) -> tuple[int, bytes, tuple[int, int]]:
    rdev = m.rdev if m.is_device else (0, 0)
    return (m.mode, m.data, rdev)


def _validate(m: Member, name: str) -> None:
    ftype = stat.S_IFMT(m.mode)
    if ftype not in _KNOWN_TYPES:
        raise BuildError(
            f"{name}: mode {m.mode:#o} has no valid file type bits",
            location="cpio",
            hint="include the type, e.g. stat.S_IFREG | 0o644",
        )
    if ftype in _TYPES_WITHOUT_DATA and m.data:
        raise BuildError(f"{name}: a {_type_word(m.mode)} cannot carry data", location="cpio")
    if ftype == stat.S_IFLNK and not m.data:
        raise BuildError(f"{name}: symlink with an empty target", location="cpio")
    if ftype == stat.S_IFLNK and (b"\0" in m.data or len(m.data) > PATH_MAX):
        raise BuildError(f"{name}: symlink target longer than {PATH_MAX} bytes or with a NUL "
                         "(the kernel would skip or cut it)", location="cpio")
    if len(m.data) > MAX_FIELD:
        raise BuildError(
            f"{name}: file larger than 4 GiB cannot be stored in newc", location="cpio"
        )
    for part in m.rdev:
        if not 0 <= part <= MAX_FIELD:
            raise BuildError(f"{name}: device number {m.rdev} out of range", location="cpio")


def _type_word(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special file"


def _collect(members: Iterable[Member]) -> dict[bytes, Member]:
    """Normalize names, merge identical duplicates, add implied parents; keyed by encoded name."""
    explicit: dict[str, Member] = {}
    for m in members:
        name = normalize_name(m.name)
        if name == ".":
            if not m.is_dir:
                raise BuildError('"." must be a directory', location="cpio")
            continue
        _validate(m, name)
        prev = explicit.get(name)
        if prev is not None and _key(prev) != _key(m):
            raise BuildError(
                f"conflicting entries for {name}",
                location="cpio",
                hint="the same path was given twice with a different type, mode or content",
            )
        explicit[name] = m
    result: dict[bytes, Member] = {}
    for name, m in explicit.items():
        rdev = m.rdev if m.is_device else (0, 0)
        result[_encode(name)] = Member(name=name, mode=m.mode, data=m.data, rdev=rdev)
        parent = name.rpartition("/")[0]
        while parent:
            existing = explicit.get(parent)
            if existing is not None:
                if not existing.is_dir:
                    raise BuildError(
                        f"{name}: parent {parent} is a {_type_word(existing.mode)}, "
                        "not a directory",
                        location="cpio",
                        hint="place the file under the real directory the symlink points to",
                    )
                break  # an explicit directory; its own parents are handled on its turn
            key = _encode(parent)
            if key in result:
                break
            result[key] = Member(name=parent, mode=stat.S_IFDIR | 0o755)
            parent = parent.rpartition("/")[0]
    return result


def _header(
    *,
    ino: int,
    mode: int,
    nlink: int,
    mtime: int,
    filesize: int,
    rdev: tuple[int, int],
    namesize: int,
) -> bytes:
    values = (ino, mode, 0, 0, nlink, mtime, filesize, 0, 0, rdev[0], rdev[1], namesize, 0)
    return MAGIC_NEWC + b"".join(b"%08X" % v for v in values)


def _entry(header: bytes, name: bytes, data: bytes) -> list[bytes]:
    head_len = len(header) + len(name) + 1
    parts = [header, name, b"\0" * (1 + _pad4(head_len))]
    if data:
        parts += [data, b"\0" * _pad4(len(data))]
    return parts


def write_newc(members: Iterable[Member], *, mtime: int = 0) -> bytes:
    """Serialize members into one reproducible newc archive ending with TRAILER!!!."""
    if not 0 <= mtime <= MAX_FIELD:
        raise BuildError(f"mtime {mtime} out of range for newc", location="cpio")
    entries = sorted(_collect(members).items())
    # hardlink groups: non-empty regular files with the same mode and content
    groups: dict[tuple[int, bytes], list[int]] = {}
    for idx, (_, m) in enumerate(entries):
        if m.is_file and m.data:
            groups.setdefault((m.mode, m.data), []).append(idx)
    group_of: dict[int, list[int]] = {}
    for idxs in groups.values():
        for idx in idxs:
            group_of[idx] = idxs

    parts: list[bytes] = []
    next_ino = 1
    group_ino: dict[int, int] = {}  # first index of a group -> its inode
    for idx, (raw, m) in enumerate(entries):
        group = group_of.get(idx)
        if group is None:
            ino, nlink, data = next_ino, 1, m.data
            next_ino += 1
        else:
            if group[0] not in group_ino:
                group_ino[group[0]] = next_ino
                next_ino += 1
            ino, nlink = group_ino[group[0]], len(group)
            data = m.data if idx == group[-1] else b""
        header = _header(
            ino=ino,
            mode=m.mode,
            nlink=nlink,
            mtime=mtime,
            filesize=len(data),
            rdev=m.rdev,
            namesize=len(raw) + 1,
        )
        parts += _entry(header, raw, data)
    trailer = _header(
        ino=0, mode=0, nlink=1, mtime=0, filesize=0, rdev=(0, 0), namesize=len(TRAILER) + 1
    )
    parts += _entry(trailer, TRAILER.encode(), b"")
    return b"".join(parts)


def read_newc(data: bytes, offset: int = 0) -> tuple[list[Member], int]:
    """Parse one newc archive starting at `offset` (padding is relative to it).

    Returns the members (without TRAILER!!!) with their real header fields, and the offset
    just after the trailer's padding. Every member of a hardlink group gets the group's data.
    Accepts "070701" and "070702" (whose regular-file checksums are verified).
    """
    view = memoryview(data)
    pos = offset
    members: list[Member] = []
    links: dict[tuple[int, int, int], list[int]] = {}  # (devmajor, devminor, ino) -> indexes
    while True:
        if pos >= len(data):
            raise BuildError(
                f"truncated cpio archive: no TRAILER!!! before the end of the data at offset {pos}",
                location="cpio",
            )
        if pos + HEADER_SIZE > len(data):
            raise BuildError(
                f"truncated cpio archive: entry at offset {pos} runs past the end of the data "
                f"({len(data)} bytes)",
                location="cpio",
            )
        raw_header = bytes(view[pos : pos + HEADER_SIZE])
        if not _HEADER_RE.fullmatch(raw_header):
            raise BuildError(f"bad cpio header at offset {pos}", location="cpio")
        f = {name: int(raw_header[6 + 8 * i : 14 + 8 * i], 16) for i, name in enumerate(_FIELDS)}
        namesize, filesize = f["namesize"], f["filesize"]
        name_end = pos + HEADER_SIZE + namesize
        data_start = name_end + _pad4(HEADER_SIZE + namesize)
        data_end = data_start + filesize
        next_pos = data_end + _pad4(data_end - offset)
        if namesize == 0 or data_end > len(data):
            raise BuildError(
                f"truncated cpio archive: entry at offset {pos} runs past the end of the data "
                f"({len(data)} bytes)",
                location="cpio",
            )
        raw_name = bytes(view[pos + HEADER_SIZE : name_end])
        if raw_name[-1:] != b"\0" or b"\0" in raw_name[:-1]:
            raise BuildError(f"bad cpio entry name at offset {pos}", location="cpio")
        name = _decode(raw_name[:-1])
        if name == TRAILER:
            return _fill_links(members, links), min(next_pos, len(data))
        content = bytes(view[data_start:data_end])
        mode = f["mode"]
        # only regular files carry a checksum (GNU cpio writes 0 for symlinks)
        is_crc = raw_header[:6] == MAGIC_CRC and stat.S_ISREG(mode)
        if is_crc and sum(content) & MAX_FIELD != f["check"]:
            raise BuildError(f"bad cpio data checksum for {name} at offset {pos}", location="cpio")
        if stat.S_ISREG(mode) and f["nlink"] > 1:
            links.setdefault((f["devmajor"], f["devminor"], f["ino"]), []).append(len(members))
        members.append(
            Member(
                name=name,
                mode=mode,
                data=content,
                rdev=(f["rdevmajor"], f["rdevminor"]),
                ino=f["ino"],
                nlink=f["nlink"],
                uid=f["uid"],
                gid=f["gid"],
                mtime=f["mtime"],
            )
        )
        pos = next_pos


def _fill_links(
    members: list[Member], links: dict[tuple[int, int, int], list[int]]
) -> list[Member]:
    for idxs in links.values():
        content = b""
        for idx in idxs:
            if members[idx].data:
                content = members[idx].data
        if not content:
            continue
        for idx in idxs:
            m = members[idx]
            if not m.data:
                members[idx] = Member(
                    name=m.name,
                    mode=m.mode,
                    data=content,
                    rdev=m.rdev,
                    ino=m.ino,
                    nlink=m.nlink,
                    uid=m.uid,
                    gid=m.gid,
                    mtime=m.mtime,
                )
    return members
