"""The segment cache stays bounded: least recently used entries go first, never the one just
written, never a file that is not an entry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootgen.errors import UsageError
from bootgen.image.cache import LIMIT, DirCache

from .conftest import EXAMPLES, needs_kernel


def key(n: int) -> str:
    return f"{n:064x}"


def put_at(cache: DirCache, n: int, size: int, when: int) -> None:
    """An entry written at a known time (file times can tie within one test)."""
    cache.put(key(n), bytes([n]) * size)
    os.utime(cache.directory / key(n), ns=(when * 10**9, when * 10**9))


def names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_least_recently_used_go_first(tmp_path: Path) -> None:
    cache = DirCache(tmp_path / "c", limit=300)
    put_at(cache, 1, 100, 1000)
    put_at(cache, 2, 100, 2000)
    put_at(cache, 3, 100, 3000)
    assert names(cache.directory) == {key(1), key(2), key(3)}  # 300 bytes: within the limit
    assert cache.get(key(1)) == b"\x01" * 100  # a hit: 1 is now the most recently used
    cache.put(key(4), b"\x04" * 100)
    assert names(cache.directory) == {key(1), key(3), key(4)}  # 2 was the least recently used
    assert cache.get(key(2)) is None


def test_the_entry_just_written_stays_and_other_files_are_left_alone(tmp_path: Path) -> None:
    cache = DirCache(tmp_path / "c", limit=100)
    cache.directory.mkdir()
    others = {"README": b"x" * 1000, f".{key(9)}.bootgen-1-ab.tmp": b"y" * 1000,
              key(8)[:-1]: b"z" * 1000}
    for name, data in others.items():
        (cache.directory / name).write_bytes(data)
    (cache.directory / key(7)).mkdir()  # a directory named like an entry
    put_at(cache, 1, 80, 1000)
    cache.put(key(2), b"\x02" * 500)  # bigger than the whole limit: kept, 1 dropped
    assert names(cache.directory) == {key(2), key(7), *others}
    assert cache.prune() == [key(2)]  # nothing was just written now: it goes too
    assert names(cache.directory) == {key(7), *others}


def test_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("BOOTGEN_CACHE_MAX", raising=False)
    cache = DirCache.default()
    assert cache is not None and cache.limit == LIMIT
    monkeypatch.setenv("BOOTGEN_CACHE_MAX", "64M")
    cache = DirCache.default()
    assert cache is not None and cache.limit == 64 << 20
    monkeypatch.setenv("BOOTGEN_CACHE_MAX", "lots")
    with pytest.raises(UsageError, match="BOOTGEN_CACHE_MAX='lots' is not a size"):
        DirCache.default()


@needs_kernel
def test_a_small_cache_still_builds_the_same_image(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    from bootgen.description import load
    from bootgen.image.build import build

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("BOOTGEN_CACHE_MAX", "1K")  # less than any segment but the layout
    host = load(EXAMPLES / "minimal.toml")
    first = build(host, output=tmp_path / "a.img", flavor="scripted")
    entries = names(tmp_path / "cache/bootgen/segments")
    assert len(entries) == 1  # only the last one written is left
    again = build(host, output=tmp_path / "b.img", flavor="scripted")
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    assert first.sha256 == again.sha256
    assert len(names(tmp_path / "cache/bootgen/segments")) == 1
