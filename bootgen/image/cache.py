"""The segment cache: compressed segments by content key, in a directory.

Writes are atomic; errors are ignored (a cache that cannot be written only makes the next
build slower)."""

from __future__ import annotations

import os
from pathlib import Path

from ..paths import cache_dir, write_atomic


class DirCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def default() -> DirCache | None:
        if os.environ.get("BOOTGEN_CACHE", "").lower() in ("0", "off", "no"):
            return None
        return DirCache(cache_dir("segments"))

    def get(self, key: str) -> bytes | None:
        try:
            return (self.directory / key).read_bytes()
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / key, data)
        except OSError:
            pass
