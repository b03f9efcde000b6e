"""The build orchestrator: reproducible, atomic, complete images with a manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from bootgen.archive.compress import read_image
from bootgen.config.schema import Host
from bootgen.description import load, loads
from bootgen.errors import BuildError
from bootgen.image import build as build_mod
from bootgen.image.build import build
from bootgen.paths import write_atomic

from .conftest import EXAMPLES, alias_providers, needs_kernel, needs_tool

pytestmark = needs_kernel


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("flavor", ["systemd", "scripted"])
def test_reproducible_across_dirs_and_mtimes(tmp_path: Path, minimal: Host, flavor: str) -> None:
    """Two builds in different temp dirs, source mtimes touched in between: equal sha256."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    build(minimal, output=a / "i.img", flavor=flavor)
    # touch every source file of a copied host description, and the description itself
    copy = tmp_path / "host.toml"
    shutil.copy(EXAMPLES / "minimal.toml", copy)
    time.sleep(0.01)
    os.utime(copy)
    build(load(copy), output=b / "i.img", flavor=flavor)
    assert sha(a / "i.img") == sha(b / "i.img")


def test_source_date_epoch(tmp_path: Path, minimal: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    r = build(minimal, output=tmp_path / "i.img", flavor="scripted")
    members = [m for seg in read_image((tmp_path / "i.img").read_bytes()) for m in seg.members]
    assert {m.mtime for m in members} == {1700000000}
    assert {(m.uid, m.gid) for m in members} == {(0, 0)}
    assert r.checked.members == len(members)


def test_image_contents(tmp_path: Path, minimal: Host) -> None:
    r = build(minimal, output=tmp_path / "i.img", manifest_path=tmp_path / "m.json")
    paths = {e.path for e in r.image.entries}
    for p in ("/init", "/usr/lib/systemd/systemd", "/etc/initrd-release", "/dev/console",
              "/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib64"):
        assert p in paths, p
    mods = set(r.image.modules)
    assert {"virtio_pci", "virtio_blk", "ext4", "jbd2", "mbcache", "crc16"} <= mods
    # ext4 needs crc32c: every module this kernel has for it (none when it is built in)
    assert alias_providers("crypto-crc32c") <= mods
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["image_sha256"] == sha(tmp_path / "i.img")
    rows = {row["path"]: row for row in manifest["entries"]}
    libc = rows["/usr/lib/x86_64-linux-gnu/libc.so.6"]
    assert libc["sha256"] == hashlib.sha256(
        Path("/usr/lib/x86_64-linux-gnu/libc.so.6").read_bytes()).hexdigest()
    assert libc["reason"].startswith("systemd → /usr/lib/systemd/systemd")
    ext4 = next(r for p, r in rows.items() if p.endswith("/ext4.ko"))
    assert ext4["reason"] == "base → module ext4"
    assert rows["/dev/kmsg"]["rdev"] == "1:11"
    assert stat.S_IMODE(os.stat(tmp_path / "i.img").st_mode) == 0o644


def test_failed_build_keeps_the_old_image(tmp_path: Path, minimal: Host) -> None:
    out = tmp_path / "i.img"
    build(minimal, output=out, flavor="scripted")
    before = sha(out)
    bad = loads(
        (EXAMPLES / "minimal.toml").read_text() + "\n[extra]\nbinaries = ['/no/such/program']\n")
    with pytest.raises(BuildError, match="/no/such/program"):
        build(bad, output=out, flavor="scripted")
    assert sha(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["i.img"]


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "x.img"
    out.write_bytes(b"good")

    def boom(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(out, b"new content")
    assert out.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["x.img"]


def test_missing_library_names_the_binary(tmp_path: Path) -> None:
    """An ELF whose DT_NEEDED library is absent: error names the library and the binary."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing")
    (tmp_path / "lib.c").write_text("int f(void){return 1;}\n")
    (tmp_path / "main.c").write_text("int f(void); int main(void){return f();}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", tmp_path / "libgone.so.1",
                    "-Wl,-soname,libgone.so.1", tmp_path / "lib.c"], check=True)
    subprocess.run(["gcc", "-o", tmp_path / "prog", tmp_path / "main.c", "-L", tmp_path,
                    "-l:libgone.so.1"], check=True)
    (tmp_path / "libgone.so.1").unlink()
    host = loads((EXAMPLES / "minimal.toml").read_text()
                 + f"\n[extra]\nbinaries = ['{tmp_path / 'prog'}']\n")
    with pytest.raises(BuildError) as exc:
        build(host, output=tmp_path / "i.img", flavor="scripted")
    assert "libgone.so.1" in exc.value.message
    assert str(tmp_path / "prog") in exc.value.message


@needs_tool("cpio")
def test_gnu_cpio_reads_the_image(tmp_path: Path, minimal: Host) -> None:
    """Every segment, decompressed by the zstd tool, is an archive GNU cpio lists and extracts
    the same way as our reader; together they hold the whole image."""
    r = build(minimal, output=tmp_path / "i.img", flavor="scripted")
    data = (tmp_path / "i.img").read_bytes()
    dest = tmp_path / "x"
    dest.mkdir()
    listed: list[str] = []
    segments = read_image(data)
    # the early microcode archive (uncompressed) is there only when the host has microcode
    early = read_image(r.packed.early) if r.packed.early else []
    assert [s.compression for s in segments] == ["none"] * len(early) + ["zstd"] * len(
        r.packed.segments)
    for seg in segments[len(early):]:
        raw = subprocess.run(["zstd", "-dc"], input=data[seg.offset:seg.end],
                             capture_output=True, check=True).stdout
        names = subprocess.run(["cpio", "-t", "--quiet"], input=raw, capture_output=True,
                               check=True).stdout.decode().split()
        assert names == [m.name for m in seg.members]
        listed += names
        subprocess.run(["cpio", "-i", "-d", "-u", "--quiet", "--no-absolute-filenames", "-D",
                        dest, "--nonmatching", "dev/*"], input=raw, check=True)
    assert {e.path.lstrip("/") for e in r.image.entries} <= set(listed)
    assert (dest / "init").read_bytes().startswith(b"#!/bin/sh")
    assert os.readlink(dest / "bin") == "usr/bin"
    assert (dest / "usr/bin/busybox").read_bytes() == Path("/usr/bin/busybox").read_bytes()


def test_segments_by_feature_and_cache(tmp_path: Path, minimal: Host,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = build(minimal, output=tmp_path / "a.img", flavor="scripted")
    names = [s.name for s in first.packed.segments]
    assert names[0] == "layout" and names[-1] == "modules"
    assert "scripted" in names
    again = build(minimal, output=tmp_path / "b.img", flavor="scripted")
    assert all(s.cached for s in again.packed.segments)
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    monkeypatch.setenv("BOOTGEN_CACHE", "off")
    cold = build(minimal, output=tmp_path / "c.img", flavor="scripted")
    assert not any(s.cached for s in cold.packed.segments)
    assert (tmp_path / "c.img").read_bytes() == (tmp_path / "a.img").read_bytes()


@needs_tool("lsinitrd")
def test_dracut_lsinitrd_reads_the_image(tmp_path: Path, minimal: Host) -> None:
    build(minimal, output=tmp_path / "i.img")
    out = subprocess.run(["lsinitrd", tmp_path / "i.img"], capture_output=True, text=True,
                         check=True).stdout
    assert "usr/lib/systemd/systemd" in out
    assert "etc/initrd-release" in out
