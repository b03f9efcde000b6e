"""Deterministic compressors, stream decompressors and initrd segment detection.

An initrd is a concatenation of segments, read by the kernel's unpack_to_rootfs():
uncompressed newc archives (which must start at a 4-byte aligned offset of the file), and
compressed streams (one zstd frame, gzip member, xz stream or lz4 legacy stream each) whose
decompressed data holds one or more complete newc archives. NUL bytes between segments and
between archives inside a decompressed stream are skipped.
"""

from __future__ import annotations

import lzma
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import lz4
import lz4.block
import zstandard

from ..errors import BuildError
from .cpio import Member, read_newc

METHODS = ("zstd", "gzip", "xz", "lz4", "none")
DEFAULT_LEVELS: dict[str, int] = {"zstd": 19, "gzip": 9, "xz": 6, "lz4": 9}
# zstd, every level: a 32 MiB window, so that libraries compress against each other (level 12:
# 8.29 MB instead of 8.95 for the 22 MB systemd segment, in the same 0.8 s), in jobs of 8 MiB of
# input, each seeing the 16 MiB before it, on up to ZSTD_MAX_WORKERS threads. The bytes depend
# on neither the thread count nor the machine; the size is within 0.1% of one job's, and 2 CPUs
# compress that segment at level 19 in 0.75x the time of one.
ZSTD_LONG_WINDOW = 25
ZSTD_JOB = 8 << 20
ZSTD_OVERLAP = 8  # overlap = window >> (9 - ZSTD_OVERLAP): half the window
ZSTD_MAX_WORKERS = 4  # a 22 MB segment makes 3 jobs; each worker holds ~120 MB at level 19
LEVEL_RANGES: dict[str, tuple[int, int]] = {
    "zstd": (1, 22),
    "gzip": (0, 9),
    "xz": (0, 9),
    "lz4": (1, 12),
}
UNSUPPORTED = ("bzip2", "lzma", "lzo")

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20  # input bytes per block; the kernel decodes into an 8 MiB buffer
LZ4_MAX_CHUNK = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_compressBound(8 MiB)

# (magic, name) pairs, checked in order at a segment start
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"070701", "cpio"),
    (b"070702", "cpio"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (struct.pack("<I", LZ4_LEGACY_MAGIC), "lz4"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x89LZO", "lzo"),
)
_NON_ZERO = re.compile(rb"[^\x00]")
MAX_UNPACKED = 2 << 30  # bytes a compressed segment may unpack to (bootgen ls, diff, check)
MAX_UNPACKED_ENV = "BOOTGEN_MAX_UNPACKED"  # how a user raises it (read by the callers)
NUL_RUN = 1 << 20  # NUL bytes a segment may unpack to before its first archive
CHUNK = 1 << 20  # decompressed bytes per step


@dataclass(frozen=True)
class Segment:
    """One piece of an initrd: [offset, end) in the file, excluding NUL padding after it."""

    offset: int
    end: int
    compression: str  # "none" for a plain cpio archive, else a METHODS name
    members: list[Member]
    archives: int = 1  # how many cpio archives the (decompressed) segment holds


def _check_level(method: str, level: int | None) -> int:
    if level is None:
        return DEFAULT_LEVELS[method]
    lo, hi = LEVEL_RANGES[method]
    if not lo <= level <= hi:
        raise BuildError(
            f"invalid {method} level {level}; valid levels: {lo}..{hi}", location="compress"
        )
    return level


def compress(data: bytes, method: str, level: int | None = None) -> bytes:
    """Compress data reproducibly in a format the kernel's initramfs unpacker reads."""
    if method not in METHODS:
        raise BuildError(
            f"unknown compression method {method!r}; valid methods: {', '.join(METHODS)}",
            location="compress",
        )
    if method == "none":
        return data
    lvl = _check_level(method, level)
    if method == "zstd":
        params = zstandard.ZstdCompressionParameters.from_level(
            lvl, window_log=ZSTD_LONG_WINDOW, write_content_size=True, threads=workers(),
            job_size=ZSTD_JOB, overlap_log=ZSTD_OVERLAP)
        return zstandard.ZstdCompressor(compression_params=params).compress(data)
    if method == "gzip":
        return _gzip(data, lvl)
    if method == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=lvl)
    return _lz4_legacy(data, lvl)


def workers() -> int:
    """Threads for one compression: the CPUs this process may run on, at most 4 (the bytes
    are the same for any number)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(ZSTD_MAX_WORKERS, cpus))


def recipe(method: str, level: int | None = None) -> str:
    """Everything besides the input that decides the compressed bytes (method, level, how this
    module drives the library, the library's version): a cache of compressed bytes keys on it,
    so that a build from the cache is byte for byte a build without it."""
    lvl = _check_level(method, level) if method != "none" else 0
    library = {"zstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
               "gzip": zlib.ZLIB_RUNTIME_VERSION,
               "lz4": lz4.library_version_string()}.get(method, "")
    how = f"w{ZSTD_LONG_WINDOW}j{ZSTD_JOB}o{ZSTD_OVERLAP}" if method == "zstd" else ""
    return f"{method}:{lvl}:{how}:{library}"


def _gzip(data: bytes, level: int) -> bytes:
    """One gzip member: no name, mtime 0, OS "Unix"; header built here so it never varies."""
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY)
    body = deflater.compress(data) + deflater.flush()
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    header = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + bytes((xfl, 3))
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + body + trailer


def _lz4_legacy(data: bytes, level: int) -> bytes:
    parts = [struct.pack("<I", LZ4_LEGACY_MAGIC)]
    view = memoryview(data)
    for start in range(0, len(data), LZ4_LEGACY_BLOCK):
        block = lz4.block.compress(
            view[start : start + LZ4_LEGACY_BLOCK],
            mode="high_compression",
            compression=level,
            store_size=False,
        )
        parts += [struct.pack("<I", len(block)), block]
    return b"".join(parts)


def detect(data: bytes, offset: int) -> str | None:
    """Name the format whose magic starts at offset: "cpio", a compression name, or None."""
    for magic, name in _MAGICS:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def _too_big(method: str, offset: int, limit: int) -> BuildError:
    return BuildError(
        f"{method} stream at offset {offset} unpacks to more than {limit} bytes",
        location="initrd",
        hint=f"set {MAX_UNPACKED_ENV} (now {limit}) higher if this is a real initrd",
    )


def _nul_only(method: str, offset: int) -> BuildError:
    return BuildError(
        f"{method} stream at offset {offset} unpacks to NUL bytes only, no cpio archive",
        location="initrd",
    )


def decompress_stream(data: bytes, offset: int, limit: int = MAX_UNPACKED
                      ) -> tuple[str, bytes, int]:
    """Decompress the one stream starting at offset: (method, output, offset after it).

    The output is bounded: more than `limit` bytes, or more than NUL_RUN bytes of NULs before
    any other byte (a "bomb"), fail fast without unpacking the rest."""
    method = detect(data, offset)
    if method in UNSUPPORTED:
        raise BuildError(
            f"unsupported compression {method} at offset {offset}",
            location="initrd",
            hint="bootgen reads zstd, gzip, xz and lz4 (legacy) compressed segments",
        )
    if method is None or method == "cpio":
        what = "an uncompressed cpio archive" if method else "unrecognised data"
        raise BuildError(f"no compressed stream at offset {offset} ({what})", location="initrd")
    if method == "lz4":
        out, end = _unlz4_legacy(data, offset, limit)
        return method, out, end
    view = memoryview(data)[offset:]
    if method == "zstd":
        try:
            size = zstandard.frame_content_size(view[:18])
        except zstandard.ZstdError:
            size = -1
        if size > limit:  # the frame says how big it is: no need to try
            raise _too_big(method, offset, limit)
    buf = bytearray()
    try:
        if method == "zstd":
            zdec = zstandard.ZstdDecompressor().decompressobj()
            pos = 0
            # a zstd block of a few bytes can stand for 128 KiB: feed small pieces
            while not zdec.eof and pos < len(view):
                buf += zdec.decompress(view[pos:pos + 4096])
                pos += 4096
                _bounded(buf, method, offset, limit)
            eof, unused = zdec.eof, len(zdec.unused_data) + max(0, len(view) - pos)
        elif method == "gzip":
            gdec = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending: bytes | memoryview = view
            while not gdec.eof:
                chunk = gdec.decompress(pending, CHUNK)
                pending = gdec.unconsumed_tail
                buf += chunk
                _bounded(buf, method, offset, limit)
                if not chunk and not pending:
                    break
            eof, unused = gdec.eof, len(gdec.unused_data)
        else:
            xdec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            first = True
            while not xdec.eof and (first or not xdec.needs_input):
                buf += xdec.decompress(view if first else b"", CHUNK)
                first = False
                _bounded(buf, method, offset, limit)
            eof, unused = xdec.eof, len(xdec.unused_data)
    except (zstandard.ZstdError, zlib.error, lzma.LZMAError) as e:
        raise BuildError(
            f"corrupt {method} stream at offset {offset}: {e}", location="initrd"
        ) from e
    if not eof:
        raise BuildError(
            f"truncated {method} stream at offset {offset}: it ends before its end marker",
            location="initrd",
        )
    return method, bytes(buf), len(data) - unused


def _bounded(out: bytearray, method: str, offset: int, limit: int) -> None:
    if len(out) > limit:
        raise _too_big(method, offset, limit)
    if len(out) > NUL_RUN and not _NON_ZERO.search(out, 0, NUL_RUN + 1):
        raise _nul_only(method, offset)


def matches(data: bytes, method: str, raw: bytes) -> str | None:
    """Whether `data` is exactly one `method` stream of `raw` (what a cache hit must be):
    None when it is, else what is wrong."""
    if method == "none":
        return None if data == raw else "it differs from the archive"
    if method == "zstd" and data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            declared = zstandard.frame_content_size(data[:18])
        except zstandard.ZstdError:
            declared = -1
        if declared == len(raw):  # what bootgen writes: one call, into exactly that many bytes
            try:
                out = zstandard.ZstdDecompressor().decompress(data, allow_extra_data=False)
            except zstandard.ZstdError as e:
                return f"corrupt zstd stream: {e}"
            return None if out == raw else "it unpacks to other bytes than the archive"
    try:
        found, out, end = decompress_stream(data, 0, len(raw))
    except BuildError as e:
        return e.message
    if found != method:
        return f"it is {found}, not {method}"
    if end != len(data):
        return f"{len(data) - end} bytes follow its end"
    if out != raw:
        return "it unpacks to other bytes than the archive"
    return None


def _unlz4_legacy(data: bytes, offset: int, limit: int = 0) -> tuple[bytes, int]:
    """Read lz4 legacy blocks until EOF, a zero size (padding) or another format's magic.

    A repeated lz4 legacy magic continues the stream, as in the kernel and the lz4 tool.
    Note the kernel itself only stops at EOF or NUL padding: another segment directly after
    an lz4 one must be separated from it by at least 4 NUL bytes.
    """
    view = memoryview(data)
    pos = offset + 4
    chunks: list[bytes] = []
    total = 0
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if size == 0:
            break
        if size == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        other = detect(data, pos)
        if size <= LZ4_MAX_CHUNK and pos + 4 + size <= len(data):
            try:
                chunk = lz4.block.decompress(
                    view[pos + 4 : pos + 4 + size], uncompressed_size=LZ4_LEGACY_BLOCK
                )
            except lz4.block.LZ4BlockError as e:
                if other is not None:
                    break
                raise BuildError(
                    f"corrupt lz4 block at offset {pos}: {e}", location="initrd"
                ) from e
            chunks.append(chunk)
            total += len(chunk)
            if limit and total > limit:
                raise _too_big("lz4", offset, limit)
            pos += 4 + size
            continue
        if other is not None:
            break
        raise BuildError(
            f"corrupt lz4 stream at offset {pos}: block size {size} runs past the end "
            f"of the data ({len(data)} bytes)",
            location="initrd",
        )
    return b"".join(chunks), pos


def skip_zeros(data: bytes, offset: int) -> int:
    """The first offset >= offset holding a non-NUL byte, or len(data)."""
    found = _NON_ZERO.search(data, offset)
    return found.start() if found else len(data)


def _read_archives(blob: bytes, method: str, seg_offset: int) -> tuple[list[Member], int]:
    where = f"{method} segment at offset {seg_offset}, decompressed"
    members: list[Member] = []
    count = 0
    pos = skip_zeros(blob, 0)
    while pos < len(blob):
        if detect(blob, pos) != "cpio":
            raise BuildError(f"no cpio archive at offset {pos}", location=where)
        if pos % 4:
            raise BuildError(f"cpio archive at offset {pos} is not 4-byte aligned", location=where)
        try:
            found, pos = read_newc(blob, pos)
        except BuildError as e:
            raise BuildError(e.message, location=where, hint=e.hint) from e
        members += found
        count += 1
        pos = skip_zeros(blob, pos)
    if count == 0:
        raise BuildError("compressed segment holds no cpio archive", location=where)
    return members, count


def read_image(data: bytes, limit: int = MAX_UNPACKED,
               proven: Mapping[int, tuple[bytes, bytes]] | None = None) -> list[Segment]:
    """Split an initrd file into its segments and parse every cpio archive in them; together
    the segments may unpack to `limit` bytes at most. `proven` maps the offset of a stream to
    (its bytes, what they unpack to), when the caller unpacked them with `matches` already:
    a stream found there byte for byte is not unpacked twice."""
    segments: list[Segment] = []
    unpacked = 0
    pos = skip_zeros(data, 0)
    while pos < len(data):
        kind = detect(data, pos)
        if kind == "cpio":
            if pos % 4:
                raise BuildError(
                    f"uncompressed cpio archive at offset {pos} is not 4-byte aligned",
                    location="initrd",
                    hint="the kernel only finds a plain cpio at a multiple of 4; "
                    "pad the previous segment with NUL bytes",
                )
            members, end = read_newc(data, pos)
            segments.append(Segment(pos, end, "none", members))
        elif kind is None:
            raise BuildError(
                f"unrecognised data at offset {pos} (bytes {bytes(data[pos : pos + 8]).hex()})",
                location="initrd",
                hint="expected a cpio archive or a zstd, gzip, xz or lz4 stream",
            )
        else:
            known = (proven or {}).get(pos)
            if known is not None and memoryview(data)[pos:pos + len(known[0])] == known[0]:
                method, blob, end = kind, known[1], pos + len(known[0])
                if unpacked + len(blob) > limit:
                    raise _too_big(method, pos, limit - unpacked)
            else:
                method, blob, end = decompress_stream(data, pos, limit - unpacked)
            unpacked += len(blob)
            members, count = _read_archives(blob, method, pos)
            segments.append(Segment(pos, end, method, members, count))
        pos = skip_zeros(data, end)
    return segments
