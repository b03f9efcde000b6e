"""`bootgen shell`: the user's terminal on the guest console at a breakpoint, driven by pexpect."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect
import pytest

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]
BOOTGEN = str(Path(sys.executable).with_name("bootgen"))


@pytest.mark.parametrize("flavor", ["scripted", "systemd"])
def test_shell_runs_a_typed_command(flavor: str, tmp_path: Path) -> None:
    child = pexpect.spawn(BOOTGEN, ["shell", str(EXAMPLES / "minimal.toml"), "--flavor", flavor,
                                    "--break", "pre-mount", "--workdir", str(tmp_path)],
                          timeout=240, encoding="utf-8", dimensions=(40, 200))
    try:
        child.expect("connected to the guest console")
        child.expect(r"[#$] ")
        child.sendline("echo typed-$((20+22)); cat /proc/cmdline")
        child.expect("typed-42")
        child.expect("rd.break=pre-mount")
        child.sendcontrol("a")
        child.send("x")  # QEMU's escape: quit
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
