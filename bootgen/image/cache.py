"""The segment cache: compressed segments by content key, in a directory.

A cache is an input like any other: pack proves every hit (it must unpack to exactly the
archive its key was made from) before it goes into an image, and drops a bad entry. Writes are
atomic; errors are ignored (a cache that cannot be written only makes the next build slower).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import BootgenError
from ..paths import cache_dir, read_regular, write_atomic

MAX_ENTRY = 1 << 30  # a cached segment is never bigger than an image may be


class DirCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def default() -> DirCache | None:
        if os.environ.get("BOOTGEN_CACHE", "").lower() in ("0", "off", "no"):
            return None
        return DirCache(cache_dir("segments"))

    def get(self, key: str) -> bytes | None:
        """The entry, or None when there is none (or it is no readable regular file)."""
        try:
            return read_regular(self.directory / key, limit=MAX_ENTRY)
        except BootgenError:
            return None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / key, data)
        except (OSError, BootgenError):
            pass

    def drop(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.directory / key)
