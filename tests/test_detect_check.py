"""`bootgen check HOST --host`: every disagreement between a description and the machine is
one line, and the exit status is 1 when there is any."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen.cli import main
from bootgen.description import loads
from bootgen.detect.describe import detect
from bootgen.detect.hostcheck import check_host

from .conftest import needs_kernel
from .detect_trees import LUKS_UUID, luks_lvm_tree


def _run(tmp_path: Path, text: str, tree: Path) -> tuple[int, list[str]]:
    desc = tmp_path / "host.toml"
    desc.write_text(text)
    res = CliRunner().invoke(main, ["check", str(desc), "--host", "--root", str(tree)])
    return res.exit_code, res.output.splitlines()


def test_a_detected_description_matches_its_machine(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    luks_lvm_tree(tree)
    code, lines = _run(tmp_path, detect(tree).text, tree)
    assert (code, lines) == (0, [f"{tmp_path / 'host.toml'}: ok, and this machine matches it"])


@needs_kernel
def test_each_problem_is_one_line(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    luks_lvm_tree(tree, keyfile=None)
    (tree / "etc/keys").mkdir(parents=True)
    text = f"""
[kernel]
modules = ["virtio_blk", "no_such_module_at_all"]

[[luks]]
name = "cryptlvm"
device = "UUID=c94b0701-0263-4720-baa1-fbb33338d0ca"
key_file = "/etc/keys/gone.key"

[[luks]]
name = "other"
device = "PARTUUID=99999999-2222-3333-4444-555555555555"

[[lvm]]
name = "vg-sys"
devices = ["UUID={LUKS_UUID}"]

[[filesystems]]
mountpoint = "/"
device = "/dev/vg-sys/root"
fstype = "xfs"
"""
    code, lines = _run(tmp_path, text, tree)
    assert code == 1
    problems = [line.split(": ", 1)[1] for line in lines]
    want = [
        "filesystems[0].fstype: /dev/vg-sys/root (/dev/dm-1) holds ext4, not xfs",
        "filesystems[0].fstype: / is mounted as ext4 now, not xfs",
        "luks[0].device: UUID=c94b0701-0263-4720-baa1-fbb33338d0ca (/dev/vdb1) is xfs, not a "
        "LUKS volume",
        "luks[0].device: /dev/mapper/cryptlvm is open from /dev/vda1 now, not from "
        "UUID=c94b0701-0263-4720-baa1-fbb33338d0ca (/dev/vdb1)",
        "luks[0].key_file: /etc/keys/gone.key does not exist",
        "luks[1].device: PARTUUID=99999999-2222-3333-4444-555555555555 is not on this machine "
        "(not in sysfs or the udev database)",
        "lvm[0].devices[0]: UUID=0b410392-83a4-4414-af82-0147d3492565 (/dev/vda1) is "
        "crypto_LUKS, not an LVM physical volume",
        "kernel.modules[1]: no_such_module_at_all is neither a module nor built into kernel",
    ]
    assert len(problems) == len(want)
    for got, expected in zip(problems, want, strict=True):
        assert got.startswith(expected), (got, expected)


def test_the_kernel_command_line_must_not_contradict(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    luks_lvm_tree(tree, keyfile=None)
    host = loads(detect(tree).text)
    assert check_host(host, tree, None) == []
    (tree / "proc/cmdline").write_text("root=UUID=c94b0701-0263-4720-baa1-fbb33338d0ca "
                                       "rootfstype=btrfs\n")
    assert check_host(host, tree, None) == [
        "filesystems[/].device: the kernel command line says "
        "root=UUID=c94b0701-0263-4720-baa1-fbb33338d0ca (/dev/vdb1), the description "
        "/dev/vg-sys/root (/dev/dm-1)",
        "filesystems[/].fstype: the kernel command line says rootfstype=btrfs, the "
        "description ext4",
    ]


@pytest.mark.parametrize("mode", [0o000])
def test_an_unreadable_keyfile_is_named(tmp_path: Path, mode: int) -> None:
    import os

    tree = tmp_path / "tree"
    luks_lvm_tree(tree)
    host = loads(detect(tree).text)
    key = tree / "etc/keys/root key"
    key.chmod(mode)
    problems = check_host(host, tree, None)
    if os.access(key, os.R_OK):  # root reads anything
        assert problems == []
    else:
        assert problems == ["luks[0].key_file: /etc/keys/root key is not readable by this user "
                            "(build as root?)"]
