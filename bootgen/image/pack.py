"""Stage `pack`: Image -> archive bytes (early microcode cpio + compressed segments + secrets).

The public part is reproducible: sorted entries, uid/gid 0, one mtime (SOURCE_DATE_EPOCH or 0),
renumbered inodes, identical files stored once as hardlinks. It is cut into segments, each a
complete cpio archive compressed on its own (the kernel unpacks concatenated segments):

  1. "layout": directories, symlinks, device nodes and generated files — small, and new
     whenever the description changes;
  2. one segment per feature for the files copied from the build host (the systemd closure,
     the LUKS tools, ...), then one for kernel modules and firmware.

Host-file segments change only when the host's files do, so their compressed bytes are kept in
a content-addressed cache: a rebuild, or another description that shares a feature, reuses them
and pays for strong compression once. The layout is cached too (a few tens of KB; its zstd -19
took 0.03 s of every warm build). Secrets (keyfiles, host keys) go to a separate
uncompressed archive appended after the public part, so it never depends on them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ..archive import compress, cpio
from ..paths import read_regular
from .spec import HOST_LIMIT, Entry, Image

_TYPE = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
         "char": stat.S_IFCHR, "block": stat.S_IFBLK}

# Early microcode: the kernel looks for these exact names in an uncompressed first archive.
MICROCODE = (
    ("kernel/x86/microcode/GenuineIntel.bin", "usr/lib/firmware/intel-ucode/*"),
    ("kernel/x86/microcode/AuthenticAMD.bin", "usr/lib/firmware/amd-ucode/microcode_amd*.bin"),
)
MICROCODE_LIMIT = 64 << 20
LAYOUT = "layout"
MODULES = "modules"


class SegmentCache(Protocol):
    """Compressed segments by key; the build orchestrator provides one backed by a directory."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...

    def drop(self, key: str) -> None: ...


@dataclass(frozen=True)
class PackedSegment:
    name: str  # "layout", a feature name, or "modules"
    entries: int
    raw_size: int
    data: bytes  # compressed
    cached: bool  # taken from the cache
    proven: bytes | None = None  # a cache hit: the archive its data was unpacked and compared to


@dataclass(frozen=True)
class PackedFile:
    """What pack read for one regular file: the manifest and reports use it, never the host."""

    size: int
    sha256: str
    elf: bool  # starts with the ELF magic


@dataclass(frozen=True)
class Packed:
    early: bytes  # uncompressed microcode archive, or b""
    segments: tuple[PackedSegment, ...]
    secrets: bytes  # uncompressed secrets archive, or b""
    files: Mapping[str, PackedFile] = field(default_factory=dict)  # by image path
    warnings: tuple[str, ...] = ()  # e.g. a damaged cache entry that was replaced

    @property
    def main(self) -> bytes:
        """The compressed segments, in order."""
        return b"".join(s.data for s in self.segments)

    @property
    def raw_size(self) -> int:
        return sum(s.raw_size for s in self.segments)

    def proven(self) -> dict[int, tuple[bytes, bytes]]:
        """Cache hits by offset in `public`: (stream, the archive pack proved it unpacks to),
        so that the read-back check need not unpack them a second time."""
        found, offset = {}, len(self.early)
        for s in self.segments:
            if s.proven is not None:
                found[offset] = (s.data, s.proven)
            offset += len(s.data)
        return found

    @property
    def public(self) -> bytes:
        """The reproducible part: early archive and compressed segments."""
        return self.early + self.main

    @property
    def padding(self) -> bytes:
        """NULs before an appended archive: the kernel finds one only at a 4-byte aligned
        offset, and its lz4 legacy decoder stops only at a zero block size (4 NULs more)."""
        last = self.segments[-1].data if self.segments else b""
        pad = -len(self.public) % 4 + (4 if last[:4] == b"\x02\x21\x4c\x18" else 0)
        return b"\0" * pad

    @property
    def data(self) -> bytes:
        """The whole image: public archives, then the secrets archive when there is one."""
        return self.public + (self.padding + self.secrets if self.secrets else b"")


T = TypeVar("T")
R = TypeVar("R")


def in_daemon_threads(fn: Callable[[T, Callable[[str], None]], R], items: Sequence[T],
                      workers: int, say: Callable[[str], None] | None = None) -> list[R]:
    """fn(item, tell) over items on up to `workers` daemon threads; the results in order, or the
    first exception. The wait is the caller's alone: Ctrl-C (or any signal the caller turns
    into an exception) stops it at once, and a thread still compressing does not hold up the
    exit, as a thread pool's would for as long as zstd -19 takes. So that an abandoned thread
    leaves nothing half done, fn creates no files and prints nothing: what it `tell`s goes to
    `say` in the caller's thread (pack's cache writes happen there too)."""
    todo: queue.SimpleQueue[tuple[int, T]] = queue.SimpleQueue()
    for job in enumerate(items):
        todo.put(job)
    # (index, result, error) from a finished item, or (-1, text, None) from `tell`
    done: queue.SimpleQueue[tuple[int, object, BaseException | None]] = queue.SimpleQueue()

    def tell(text: str) -> None:
        done.put((-1, text, None))

    def work() -> None:
        while True:
            try:
                i, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, fn(item, tell), None))
            except BaseException as e:  # handed to the caller, raised there
                done.put((i, None, e))

    for _ in range(max(1, min(workers, len(items)))):
        threading.Thread(target=work, name="bootgen-pack", daemon=True).start()
    results: dict[int, R] = {}
    while len(results) < len(items):
        i, result, error = done.get()
        if error is not None:
            raise error
        if i < 0:
            if say is not None:
                say(str(result))
        else:
            results[i] = result  # type: ignore[assignment]
    return [results[i] for i in range(len(items))]


def source_mtime() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    return int(value) if value.isdigit() else 0


def read_source(entry: Entry) -> bytes:
    """The content of an entry copied from the build host (`source` is a host path): a regular
    file of bounded size, checked again now (it may have changed since resolve looked)."""
    assert entry.source is not None
    return read_regular(entry.source, limit=entry.max_size or HOST_LIMIT,
                        location=f"{entry.source} ({entry.reason})")


def to_member(entry: Entry, files: dict[str, PackedFile] | None = None) -> cpio.Member:
    """The archive member of an entry; records each regular file's size and digest in
    `files` on the way."""
    mode = _TYPE[entry.kind] | entry.mode
    if entry.kind == "file":
        data = entry.data if entry.data is not None else read_source(entry)
        if files is not None:
            files[entry.path] = PackedFile(len(data), hashlib.sha256(data).hexdigest(),
                                           data[:4] == b"\x7fELF")
        return cpio.Member(entry.path.lstrip("/"), mode, data)
    if entry.kind == "symlink":
        return cpio.Member(entry.path.lstrip("/"), mode, (entry.target or "").encode())
    return cpio.Member(entry.path.lstrip("/"), mode, rdev=entry.rdev)


def segment_of(entry: Entry) -> str:
    """Which segment an entry goes to: host files by the feature that asked for them."""
    if entry.kind != "file" or entry.source is None:
        return LAYOUT
    if entry.path.startswith(("/usr/lib/modules/", "/usr/lib/firmware/")):
        return MODULES
    return entry.feature or LAYOUT


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def microcode(root: str = "/") -> bytes:
    """An early archive with the host's CPU microcode, or b"" when the host has none."""
    members = []
    for name, pattern in MICROCODE:
        files = sorted(glob.glob(os.path.join(root, pattern)))
        if files:
            blob = b"".join(read_regular(f, limit=MICROCODE_LIMIT) for f in files
                            if os.path.isfile(f))
            members.append(cpio.Member(name, stat.S_IFREG | 0o644, blob))
    return cpio.write_newc(members, mtime=source_mtime()) if members else b""


def pack(image: Image, *, root: str = "/", early_microcode: bool = True,
         cache: SegmentCache | None = None,
         progress: Callable[[str], None] | None = None) -> Packed:
    mtime = source_mtime()
    spec = image.spec
    groups: dict[str, list[Entry]] = {}
    for e in image.entries:
        if not e.secret:
            groups.setdefault(segment_of(e), []).append(e)
    order = [LAYOUT] + sorted(g for g in groups if g not in (LAYOUT, MODULES)) + [MODULES]
    dirs = {e.path: e for e in image.entries if e.kind == "dir"}

    def with_parents(entries: list[Entry]) -> list[Entry]:
        # The kernel re-applies a directory entry's mode when it meets it again, so parents
        # that a later segment implies must carry the image's modes, not a default.
        parents = {p for e in entries for p in _ancestors(e.path) if p in dirs}
        return [dirs[p] for p in sorted(parents)] + entries

    files: dict[str, PackedFile] = {}
    raws = [(name, len(groups[name]),
             cpio.write_newc([to_member(e, files) for e in (groups[name] if name == LAYOUT
                                                            else with_parents(groups[name]))],
                             mtime=mtime))
            for name in order if name in groups]

    warnings: list[str] = []

    def one(item: tuple[str, int, bytes], tell: Callable[[str], None]
            ) -> tuple[PackedSegment, str]:
        name, count, raw = item
        key = hashlib.sha256(compress.recipe(spec.compression, spec.compression_level).encode()
                             + b"\0" + raw).hexdigest()
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            # a hit must unpack to exactly this archive, or it does not go into the image
            bad = compress.matches(hit, spec.compression, raw)
            if bad is None:
                return PackedSegment(name, count, len(raw), hit, True, raw), key
            assert cache is not None
            cache.drop(key)
            warnings.append(f"segment cache: the cached {name} segment ({key[:12]}…) was "
                            f"damaged ({bad}); dropped it and compressed the segment again")
        if len(raw) > 4 << 20:
            tell(f"compressing {name} ({len(raw) >> 20} MiB, {spec.compression}); "
                     "cached for later builds")
        data = compress.compress(raw, spec.compression, spec.compression_level)
        return PackedSegment(name, count, len(raw), data, False), key

    done = in_daemon_threads(one, raws, min(len(raws), os.cpu_count() or 1), progress)
    if cache is not None:  # here, not in the threads: an interrupted build writes no half entry
        for segment, key in done:
            if not segment.cached:
                cache.put(key, segment.data)
    segments = tuple(segment for segment, _ in done)
    secret = [to_member(e, files) for e in image.entries if e.secret]
    return Packed(
        early=microcode(root) if early_microcode else b"",
        segments=segments,
        secrets=cpio.write_newc(secret, mtime=mtime) if secret else b"",
        files=files,
        warnings=tuple(sorted(warnings)),
    )
