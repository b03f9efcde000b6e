"""The command line: summaries, exit codes, one-line errors, ls/diff/show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen.cli import main

from .conftest import EXAMPLES, debian_initrd, needs_kernel

MINIMAL = str(EXAMPLES / "minimal.toml")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootgen.cli", *args], capture_output=True,
                          text=True)


@needs_kernel
def test_build_summary_and_manifest(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["build", MINIMAL, "-o", str(tmp_path / "i.img"),
                                    "--flavor", "scripted", "--manifest", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()  # progress lines (a slow machine) go to stderr
    assert lines[0].startswith(f"built {tmp_path / 'i.img'}  (scripted stage one, kernel ")
    assert any(line.strip().startswith("size") and "raw" in line and "zstd" in line
               for line in lines)
    assert len(lines) <= 24  # one screen
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["flavor"] == "scripted"
    assert any(e["path"] == "/init" for e in data["entries"])


def test_description_error_exit_2_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[boot]\nflavour = 'x'\n")
    res = run("build", str(bad), "-o", str(tmp_path / "i.img"))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"error: {bad}: boot.flavour: unknown setting (hint: did you mean 'flavor'?)",
        f"error: {bad}: filesystems: no filesystem is mounted at '/' "
        '(hint: add [[filesystems]] with mountpoint = "/")',
    ]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "i.img").exists()


def test_usage_error_exit_2(tmp_path: Path) -> None:
    res = run("build", MINIMAL)
    assert res.returncode == 2
    assert "error: nothing to write (hint: give -o IMAGE and/or --uki OUT.efi)" in res.stderr


@needs_kernel
def test_build_failure_exit_1_and_debug(tmp_path: Path) -> None:
    host = tmp_path / "h.toml"
    host.write_text(Path(MINIMAL).read_text() + "\n[extra]\nbinaries = ['no-such-program-x']\n")
    res = run("build", str(host), "-o", str(tmp_path / "i.img"))
    assert res.returncode == 1
    said = [line for line in res.stderr.splitlines() if not line.startswith("  … ")]
    assert len(said) == 1 and said[0].startswith("error: ")  # beside progress lines
    assert "no-such-program-x" in res.stderr
    assert "Traceback" not in res.stderr
    res = run("--debug", "build", str(host), "-o", str(tmp_path / "i.img"))
    assert res.returncode == 1
    assert "Traceback" in res.stderr


@needs_kernel
def test_unknown_kernel_version(tmp_path: Path) -> None:
    res = run("build", MINIMAL, "-o", str(tmp_path / "i.img"), "--kernel-version", "0.0-none")
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"error: {MINIMAL}: kernel.version: kernel 0.0-none has no modules under /lib/modules "
        "(hint: install its linux-image package or pick an installed version)")


@needs_kernel
def test_ls_and_diff(tmp_path: Path) -> None:
    r = CliRunner()
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert r.invoke(main, ["build", MINIMAL, "-o", str(a), "--flavor", "scripted",
                           "--manifest", str(tmp_path / "a.json")]).exit_code == 0
    assert r.invoke(main, ["build", MINIMAL, "-o", str(b), "--flavor", "systemd",
                           "--manifest", str(tmp_path / "b.json")]).exit_code == 0
    ls = r.invoke(main, ["ls", str(a)])
    assert ls.exit_code == 0
    assert ls.output.startswith("== segment 1: offset 0, ")
    assert any(line.endswith(" /usr/bin/sh -> busybox") for line in ls.output.splitlines())
    assert any(line.startswith("crw-------") and line.endswith("/dev/console")
               for line in ls.output.splitlines())
    same = r.invoke(main, ["diff", str(a), str(a)])
    assert same.exit_code == 0 and same.output == ""
    d = r.invoke(main, ["diff", str(a), str(b)])
    assert d.exit_code == 1
    lines = d.output.splitlines()
    assert "+ /usr/lib/systemd/systemd   [systemd → /usr/lib/systemd/systemd]" in lines
    assert any(line.startswith("- /usr/sbin/blkid") and "scripted" in line for line in lines)


def test_ls_reads_debians_initrd() -> None:
    initrd = debian_initrd()
    if initrd is None:
        pytest.skip("no readable Debian initrd of the newest kernel in /boot")
    res = CliRunner().invoke(main, ["ls", str(initrd)])
    assert res.exit_code == 0
    assert "== segment 1" in res.output
    assert any(line.endswith(" /init") for line in res.output.splitlines())


def test_ls_missing_file() -> None:
    res = run("ls", "/nonexistent.img")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: /nonexistent.img: no such file (hint: check the path)"


@needs_kernel
def test_show_explains_why() -> None:
    res = CliRunner().invoke(main, ["show", MINIMAL, "--flavor", "scripted"])
    assert res.exit_code == 0, res.output
    assert "flavor      scripted" in res.output
    assert "load        virtio_pci virtio_blk ext4" in res.output
    assert "  /usr/bin/busybox    [scripted → /usr/bin/busybox]" in res.output


@needs_kernel
def test_check_command(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["check", MINIMAL, "--flavor", "both"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"{MINIMAL}: ok"] * 2
    assert "systemd stage one" in lines[0] and "scripted stage one" in lines[1]


def test_output_read_by_head_stops_quietly(tmp_path: Path) -> None:
    """`bootgen ls IMAGE | head`: when the reader goes away, bootgen stops without an error
    line, with the exit code of a process SIGPIPE ended (128 + 13)."""
    import stat

    from bootgen.archive.cpio import Member, write_newc

    image = tmp_path / "many.img"  # its listing is far bigger than a pipe's buffer
    image.write_bytes(write_newc([Member(f"d/f{i:05d}", stat.S_IFREG | 0o644, b"x")
                                  for i in range(20000)]))
    p = subprocess.Popen([sys.executable, "-m", "bootgen.cli", "ls", str(image)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline().startswith(b"== segment 1")
    p.stdout.close()
    assert (p.wait(timeout=60), p.stderr.read()) == (141, b"")


def test_other_broken_pipes_are_still_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken pipe that is not standard output's (a child that died) is an error line."""
    import bootgen.cli as cli

    def broken(image: Path) -> list[str]:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli.inspect, "ls_any", broken)
    r = CliRunner().invoke(main, ["ls", __file__])
    assert (r.exit_code, r.output.strip()) == (1, "error: Broken pipe")
