"""`bootgen install-hooks`: the kernel-install plugin and the Debian kernel hooks, installed
below a prefix and run there with a stand-in bootgen; the old initrd stays until a new one is
complete, and only bootgen's own files are ever replaced or removed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen.cli import main
from bootgen.detect.hooks import MARKER, install, remove

from .conftest import EXAMPLES, KVER, needs_kernel

PLUGIN = "usr/lib/kernel/install.d/50-bootgen.install"
POSTINST = "etc/kernel/postinst.d/zz-bootgen"
POSTRM = "etc/kernel/postrm.d/zz-bootgen"

FAKE = """#!/bin/sh
# a stand-in bootgen: logs its arguments, writes "NEW" to -o (or half of it and fails)
echo "$*" >> "$(dirname "$0")/calls"
case $1 in verify) exit "${{FAKE_VERIFY:-0}}" ;; esac
while [ "$#" -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
{body}
"""


def fake(folder: Path, body: str = 'printf NEW > "$out"') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prog = folder / "fake bootgen $(touch pwned)"  # the path is quoted into the hooks
    prog.write_text(FAKE.format(body=body))
    prog.chmod(0o755)
    return prog


def setup(tmp_path: Path, body: str = 'printf NEW > "$out"') -> tuple[Path, Path, Path]:
    prog = fake(tmp_path / "bin", body)
    host = tmp_path / "etc b" / "host.toml"
    host.parent.mkdir()
    host.write_text("# a description\n")
    prefix = tmp_path / "root"
    install(prefix, bootgen=str(prog), host=str(host))
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "initrd.img-6.9.0-test").write_text("OLD")
    return prefix, boot, prog


def run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(script), *args], capture_output=True, text=True,
                          env={**os.environ, "BOOTGEN_VERIFY": "0", **env}, check=False)


def test_installed_hooks_are_executable_shell_that_lints(tmp_path: Path) -> None:
    paths = install(tmp_path, bootgen="/usr/bin/bootgen")
    assert sorted(str(p.relative_to(tmp_path)) for p in paths) == sorted([PLUGIN, POSTINST,
                                                                          POSTRM])
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o755
        assert p.read_text().splitlines()[1].startswith(MARKER)
        subprocess.run(["sh", "-n", str(p)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", *map(str, paths)], check=True)


def test_postinst_replaces_the_initrd_once_the_new_one_is_complete(tmp_path: Path) -> None:
    prefix, boot, prog = setup(tmp_path)
    r = run(prefix / POSTINST, "6.9.0-test", str(boot / "vmlinuz-6.9.0-test"))
    assert r.returncode == 0, r.stderr
    assert (boot / "initrd.img-6.9.0-test").read_text() == "NEW"
    assert sorted(p.name for p in boot.iterdir()) == ["initrd.img-6.9.0-test"]
    calls = (prog.parent / "calls").read_text().splitlines()
    assert calls == [f"build {tmp_path}/etc b/host.toml --kernel-version 6.9.0-test -o "
                     f"{boot}/initrd.img-6.9.0-test.bootgen-new"]
    assert not (Path.cwd() / "pwned").exists() and not (tmp_path / "pwned").exists()
    r = run(prefix / POSTRM, "6.9.0-test", str(boot / "vmlinuz-6.9.0-test"))
    assert r.returncode == 0 and list(boot.iterdir()) == []


def test_a_failed_build_leaves_the_old_initrd(tmp_path: Path) -> None:
    prefix, boot, _ = setup(tmp_path, 'printf HALF > "$out"; exit 1')
    r = run(prefix / POSTINST, "6.9.0-test", str(boot / "vmlinuz-6.9.0-test"))
    assert r.returncode != 0 and "failed" in r.stderr and "unchanged" in r.stderr
    assert (boot / "initrd.img-6.9.0-test").read_text() == "OLD"
    assert sorted(p.name for p in boot.iterdir()) == ["initrd.img-6.9.0-test"]


def test_an_empty_image_is_not_installed(tmp_path: Path) -> None:
    prefix, boot, _ = setup(tmp_path, ': > "$out"')
    r = run(prefix / POSTINST, "6.9.0-test", str(boot / "vmlinuz-6.9.0-test"))
    assert r.returncode != 0 and (boot / "initrd.img-6.9.0-test").read_text() == "OLD"


def test_verify_when_asked_and_keep_the_old_initrd_if_it_does_not_boot(tmp_path: Path) -> None:
    prefix, boot, prog = setup(tmp_path)
    r = run(prefix / POSTINST, "6.9.0-test", str(boot / "vmlinuz-6.9.0-test"),
            BOOTGEN_VERIFY="1", FAKE_VERIFY="1")
    assert r.returncode != 0 and "did not boot" in r.stderr
    assert (boot / "initrd.img-6.9.0-test").read_text() == "OLD"
    assert [c.split()[0] for c in (prog.parent / "calls").read_text().splitlines()] == [
        "verify"]
    r = run(prefix / POSTINST, "6.9.0-test", str(boot / "vmlinuz-6.9.0-test"),
            BOOTGEN_VERIFY="1", FAKE_VERIFY="0")
    assert r.returncode == 0 and (boot / "initrd.img-6.9.0-test").read_text() == "NEW"


def test_kernel_install_plugin(tmp_path: Path) -> None:
    prefix, boot, prog = setup(tmp_path)
    entry, staging = tmp_path / "entry", tmp_path / "staging"
    entry.mkdir()
    staging.mkdir()
    plugin = prefix / PLUGIN
    args = ("add", "6.9.0-test", str(entry), str(boot / "vmlinuz-6.9.0-test"))
    assert run(plugin, *args, KERNEL_INSTALL_INITRD_GENERATOR="dracut").returncode == 0
    assert run(plugin, *args, "/my/own/initrd").returncode == 0
    assert run(plugin, "remove", "6.9.0-test", str(entry)).returncode == 0
    assert not (prog.parent / "calls").exists()
    assert run(plugin, *args).returncode == 0
    assert (entry / "initrd").read_text() == "NEW"
    assert run(plugin, *args, KERNEL_INSTALL_STAGING_AREA=str(staging)).returncode == 0
    assert (staging / "initrd").read_text() == "NEW"


def test_no_description_builds_nothing_and_says_so(tmp_path: Path) -> None:
    prefix, boot, prog = setup(tmp_path)
    (tmp_path / "etc b" / "host.toml").unlink()
    r = run(prefix / POSTINST, "6.9.0-test", str(boot / "vmlinuz-6.9.0-test"))
    assert r.returncode == 0 and "host.toml is missing" in r.stderr
    assert (boot / "initrd.img-6.9.0-test").read_text() == "OLD"


def test_only_bootgens_own_files_are_replaced_or_removed(tmp_path: Path) -> None:
    mine = tmp_path / POSTINST
    mine.parent.mkdir(parents=True)
    mine.write_text("#!/bin/sh\n# someone else's hook\n")
    runner = CliRunner()
    res = runner.invoke(main, ["install-hooks", "--prefix", str(tmp_path)])
    assert res.exit_code == 2 and "not installed by bootgen" in res.output
    assert not (tmp_path / PLUGIN).exists()  # nothing written
    res = runner.invoke(main, ["install-hooks", "--prefix", str(tmp_path), "--remove"])
    assert res.exit_code == 0 and mine.read_text().endswith("someone else's hook\n")
    mine.unlink()
    res = runner.invoke(main, ["install-hooks", "--prefix", str(tmp_path)])
    assert res.exit_code == 0 and "does not exist yet" in res.output
    assert (tmp_path / PLUGIN).exists() and mine.exists()
    res = runner.invoke(main, ["install-hooks", "--prefix", str(tmp_path)])  # again: fine
    assert res.exit_code == 0
    res = runner.invoke(main, ["install-hooks", "--prefix", str(tmp_path), "--remove"])
    assert res.exit_code == 0 and res.output.count("removed") == 3
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    assert remove(tmp_path) == []


@needs_kernel
def test_the_hook_builds_a_real_initrd_with_this_bootgen(tmp_path: Path) -> None:
    bootgen = Path(sys.executable).parent / "bootgen"
    if not bootgen.is_file():
        pytest.skip("no bootgen entry point beside this python")
    host = tmp_path / "host.toml"
    shutil.copy(EXAMPLES / "minimal.toml", host)
    install(tmp_path / "root", bootgen=str(bootgen), host=str(host))
    boot = tmp_path / "boot"
    boot.mkdir()
    r = run(tmp_path / "root" / POSTINST, str(KVER), str(boot / f"vmlinuz-{KVER}"),
            XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr
    image = boot / f"initrd.img-{KVER}"
    assert image.stat().st_size > 100_000
    listing = subprocess.run([str(bootgen), "ls", str(image)], capture_output=True, text=True,
                             check=True).stdout
    assert "init" in listing
