"""hostfs.walk: symlinks kept as symlinks, resolution confined to a root, errors named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootgen.errors import BuildError
from bootgen.image import hostfs
from bootgen.image.hostfs import HostItem


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A small usr-merged tree: /lib → usr/lib, /lib64 → usr/lib64, versioned .so links."""
    r = tmp_path / "root"
    lib = r / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (r / "usr/lib64").mkdir(parents=True)
    (r / "usr/bin").mkdir(parents=True)
    (lib / "libz.so.1.2.13").write_bytes(b"z")
    (lib / "libz.so.1").symlink_to("libz.so.1.2.13")
    (lib / "ld-linux-x86-64.so.2").write_bytes(b"ld")
    (r / "lib").symlink_to("usr/lib")
    (r / "bin").symlink_to("usr/bin")
    (r / "lib64").symlink_to("usr/lib64")
    # an absolute target must resolve inside the root, not on the host
    (r / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (r / "usr/bin/kmod").write_bytes(b"kmod")
    (r / "usr/bin/a").symlink_to("b")
    (r / "usr/bin/b").symlink_to("../bin/c")
    (r / "usr/bin/c").symlink_to("kmod")
    (r / "usr/bin/loop1").symlink_to("loop2")
    (r / "usr/bin/loop2").symlink_to("loop1")
    (r / "usr/bin/escape").symlink_to("/../../../usr/bin/kmod")
    return r


def test_top_level_symlink_and_versioned_link(tree: Path) -> None:
    items = hostfs.walk("/lib/x86_64-linux-gnu/libz.so.1", str(tree))
    assert items == (
        HostItem("/lib", "symlink", None, "usr/lib"),
        HostItem("/usr/lib/x86_64-linux-gnu/libz.so.1", "symlink", None, "libz.so.1.2.13"),
        HostItem(
            "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
            "file",
            str(tree) + "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
            None,
        ),
    )


def test_absolute_target_stays_in_root(tree: Path) -> None:
    items = hostfs.walk("/lib64/ld-linux-x86-64.so.2", str(tree))
    assert [(i.path, i.kind, i.target) for i in items] == [
        ("/lib64", "symlink", "usr/lib64"),
        (
            "/usr/lib64/ld-linux-x86-64.so.2",
            "symlink",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
        ("/lib", "symlink", "usr/lib"),
        ("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "file", None),
    ]
    assert items[-1].source == str(tree) + "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def test_chain_of_links(tree: Path) -> None:
    items = hostfs.walk("/bin/a", str(tree))
    assert [(i.path, i.target) for i in items] == [
        ("/bin", "usr/bin"),
        ("/usr/bin/a", "b"),
        ("/usr/bin/b", "../bin/c"),
        ("/usr/bin/c", "kmod"),
        ("/usr/bin/kmod", None),
    ]
    assert items[-1].kind == "file"


def test_dotdot_is_physical_and_clamped_at_root(tree: Path) -> None:
    # /lib/.. is /usr (the parent of where /lib leads), not /
    assert hostfs.resolve("/lib/../bin/kmod", str(tree)) == "/usr/bin/kmod"
    assert hostfs.resolve("/usr/bin/escape", str(tree)) == "/usr/bin/kmod"
    assert hostfs.walk("/usr/bin/..", str(tree))[-1].kind == "dir"  # not the lstat of bin/
    assert hostfs.lookup("/bin/kmod/..", str(tree)) is None  # ENOTDIR, as for the kernel
    (tree / "usr/bin/toroot").symlink_to("/")
    assert hostfs.walk("/bin/toroot", str(tree))[-1] == HostItem("/", "dir", str(tree) + "/", None)


def test_dir_and_root(tree: Path) -> None:
    assert hostfs.walk("/lib", str(tree))[-1] == HostItem(
        "/usr/lib", "dir", str(tree) + "/usr/lib", None
    )
    assert hostfs.walk("/", str(tree)) == (HostItem("/", "dir", str(tree) + "/", None),)


def test_missing_path_is_named(tree: Path) -> None:
    with pytest.raises(BuildError, match="/usr/bin/nope"):
        hostfs.walk("/usr/bin/nope", str(tree))
    with pytest.raises(BuildError, match="/usr/bin/kmod/x"):
        hostfs.walk("/usr/bin/kmod/x", str(tree))  # a file used as a directory
    assert hostfs.lookup("/usr/bin/nope", str(tree)) is None


def test_loop(tree: Path) -> None:
    with pytest.raises(BuildError, match="too many levels of symbolic links"):
        hostfs.walk("/bin/loop1", str(tree))


def test_relative_path_rejected(tree: Path) -> None:
    with pytest.raises(BuildError, match="not absolute"):
        hostfs.walk("usr/bin/kmod", str(tree))


def test_special_file_rejected(tree: Path) -> None:
    os.mkfifo(tree / "usr/bin/fifo")
    with pytest.raises(BuildError, match="not a regular file"):
        hostfs.walk("/usr/bin/fifo", str(tree))


def test_is_file(tree: Path) -> None:
    assert hostfs.is_file("/bin/a", str(tree))
    assert not hostfs.is_file("/lib", str(tree))
    assert not hostfs.is_file("/nope", str(tree))


@pytest.mark.skipif(not os.path.islink("/lib"), reason="host is not usr-merged")
def test_real_host_usrmerge() -> None:
    items = hostfs.walk("/lib/x86_64-linux-gnu/libc.so.6")
    assert items[0] == HostItem("/lib", "symlink", None, os.readlink("/lib"))
    assert items[-1].kind == "file"
    assert items[-1].path == os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
