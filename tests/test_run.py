"""The one wrapper for external commands, as a normal user runs it: sbin programs are found
without sbin in PATH, and a missing one names the Debian package that has it."""

from __future__ import annotations

import pytest

from bootgen.errors import CommandError
from bootgen.run import missing, run, which

USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"  # Debian's default


def test_sbin_programs_run_with_a_user_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", USER_PATH)
    found = which("mke2fs")
    assert found is not None and "/sbin/" in found
    proc = run(["mke2fs", "-V"])  # prints its version on stderr and exits 0
    assert b"mke2fs" in proc.stderr


def test_missing_program_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", USER_PATH)
    with pytest.raises(CommandError) as e:
        run(["bootgen-no-such-program", "x"])
    assert e.value.format() == ("error: command not found: bootgen-no-such-program "
                                "(hint: install it or check PATH)")
    assert missing("mkfs.xfs").hint == "install the Debian package xfsprogs"


def test_failure_names_the_command_as_given() -> None:
    with pytest.raises(CommandError, match=r"^mke2fs -q /nonexistent/x failed: "):
        run(["mke2fs", "-q", "/nonexistent/x"])
