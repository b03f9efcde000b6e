"""The one wrapper for external commands: argv lists only, failures name the command."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CommandError

# Where Debian puts the programs bootgen runs, for the one-line "install ..." hint.
PACKAGES = {
    "mke2fs": "e2fsprogs", "e2fsck": "e2fsprogs", "debugfs": "e2fsprogs",
    "sfdisk": "fdisk", "blkid": "util-linux", "cryptsetup": "cryptsetup-bin",
    "depmod": "kmod", "modprobe": "kmod", "lvm": "lvm2", "mdadm": "mdadm",
    "mkfs.btrfs": "btrfs-progs", "btrfs": "btrfs-progs", "mkfs.xfs": "xfsprogs",
    "mkfs.vfat": "dosfstools", "mkswap": "util-linux", "dropbearconvert": "dropbear-bin",
    "ssh-keygen": "openssh-client", "busybox": "busybox-static", "zstd": "zstd",
    "cpio": "cpio", "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils",
    "swtpm": "swtpm", "sbsign": "sbsigntool", "sbverify": "sbsigntool", "mcopy": "mtools",
    "mformat": "mtools", "mmd": "mtools", "ckbcomp": "console-setup", "loadkeys": "kbd",
    "tpm2_pcrread": "tpm2-tools", "systemd-cryptenroll": "systemd",
    "objcopy": "binutils", "shellcheck": "shellcheck", "rsvg-convert": "librsvg2-bin",
}
# Searched after PATH: Debian's sbin directories are not in a normal user's PATH, but their
# programs (mke2fs, sfdisk, cryptsetup...) run fine without root on image files.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(name: str) -> str | None:
    """Find a program in PATH, then in the sbin directories (which a non-root PATH lacks)."""
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def missing(name: str) -> CommandError:
    """The one-line error for a program that is not installed."""
    package = PACKAGES.get(os.path.basename(name))
    hint = f"install the Debian package {package}" if package else "install it or check PATH"
    return CommandError(f"command not found: {name}", hint=hint)


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
    if "/" not in args[0]:
        found = which(args[0])
        if found is None:
            raise missing(args[0])
        args[0] = found
    try:
        proc = subprocess.run(
            args, input=input, env=env, cwd=cwd, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise missing(args[0]) from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"command timed out after {timeout}s: {' '.join(args)}") from e
    if check and proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        detail = ("; ".join(tail)) if tail else f"exit status {proc.returncode}"
        shown = " ".join([str(argv[0]), *args[1:3]]) + (" ..." if len(args) > 3 else "")
        raise CommandError(f"{shown} failed: {detail}")
    return proc
