"""The segment cache: compressed segments by content key, in a directory.

A cache is an input like any other: pack proves every hit (it must unpack to exactly the
archive its key was made from) before it goes into an image, and drops a bad entry. Writes are
atomic; errors are ignored (a cache that cannot be written only makes the next build slower).

It is bounded: every update of the host's systemd or kernel makes new entries and leaves the old
ones unused, so after each write the least recently used entries (a hit touches its entry) are
deleted until the entries hold at most BOOTGEN_CACHE_MAX bytes (default 512 MiB).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from ..errors import BootgenError
from ..paths import MiB, cache_dir, env_size, read_regular, write_atomic

MAX_ENTRY = 1 << 30  # a cached segment is never bigger than an image may be
LIMIT_ENV = "BOOTGEN_CACHE_MAX"
LIMIT = 512 * MiB
KEY = re.compile(r"[0-9a-f]{64}")  # what pack names entries (temporary files never match)


class DirCache:
    def __init__(self, directory: Path, limit: int = LIMIT) -> None:
        self.directory = directory
        self.limit = limit

    @staticmethod
    def default() -> DirCache | None:
        if os.environ.get("BOOTGEN_CACHE", "").lower() in ("0", "off", "no"):
            return None
        return DirCache(cache_dir("segments"), env_size(LIMIT_ENV, LIMIT))

    def get(self, key: str) -> bytes | None:
        """The entry, or None when there is none (or it is no readable regular file)."""
        try:
            data = read_regular(self.directory / key, limit=MAX_ENTRY)
        except BootgenError:
            return None
        with contextlib.suppress(OSError):
            os.utime(self.directory / key)  # used now: the last to go when pruning
        return data

    def put(self, key: str, data: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / key, data)
        except (OSError, BootgenError):
            return
        self.prune(keep=key)

    def drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.directory / key)

    def prune(self, keep: str = "") -> list[str]:
        """Delete the least recently used entries until the rest hold at most `limit` bytes
        (never `keep`, the entry just written); the keys deleted."""
        entries = []
        try:
            with os.scandir(self.directory) as found:
                for e in found:
                    if KEY.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        entries.append((st.st_mtime_ns, e.name, st.st_size))
        except OSError:
            return []
        total = sum(size for _, _, size in entries)
        dropped = []
        for _, name, size in sorted(entries):
            if total <= self.limit:
                break
            if name != keep:
                self.drop(name)
                dropped.append(name)
                total -= size
        return dropped
