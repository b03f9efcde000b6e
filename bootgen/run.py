"""The one wrapper for external commands: argv lists only, failures name the command."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CommandError


def which(name: str) -> str | None:
    """Find a program in PATH or the usual sbin directories (which a non-root PATH may lack)."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        p = Path(d) / name
        if p.is_file():
            return str(p)
    return None


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv, capture output; on failure raise CommandError with the tail of stderr."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args, input=input, env=env, cwd=cwd, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise CommandError(f"command not found: {args[0]}", hint="install it or check PATH") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"command timed out after {timeout}s: {' '.join(args)}") from e
    if check and proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        detail = ("; ".join(tail)) if tail else f"exit status {proc.returncode}"
        shown = " ".join(args[:3]) + (" ..." if len(args) > 3 else "")
        raise CommandError(f"{shown} failed: {detail}")
    return proc
