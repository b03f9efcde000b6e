"""`bootgen install-hooks`: rebuild the initrd when a kernel is installed.

Two hooks, both running `bootgen build` on one description (default /etc/bootgen/host.toml):

- a kernel-install plugin, /usr/lib/kernel/install.d/50-bootgen.install (what systemd's
  `kernel-install add KVER ...` runs): the initrd goes to $KERNEL_INSTALL_STAGING_AREA/initrd
  (or $ENTRY_DIR/initrd), unless another initrd generator is configured or the caller passed
  initrds;
- a Debian hook, /etc/kernel/postinst.d/zz-bootgen (run by the kernel package after
  initramfs-tools' own): /boot/initrd.img-KVER beside the kernel image; and
  /etc/kernel/postrm.d/zz-bootgen removes it with the kernel.

A new initrd is built beside the old one under a temporary name and renamed over it only when
it is complete (and, with /etc/bootgen/verify present or BOOTGEN_VERIFY=1, only after the image
booted in QEMU): a failed build leaves the old initrd in place and the hook fails loudly.
Files carry a marker line; `--remove` deletes only files that carry it, and install never
replaces a file without it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..paths import write_atomic

MARKER = "# installed by bootgen install-hooks"
DEFAULT_HOST = "/etc/bootgen/host.toml"

COMMON = """#!/bin/sh
{marker}: {what}
set -u
BOOTGEN={bootgen}
HOST={host}

build() {{  # KVER TARGET: a new initrd for KVER replaces TARGET only once it is complete
    kver=$1
    target=$2
    if [ ! -f "$HOST" ]; then
        echo "bootgen: $HOST is missing; no initrd built for $kver" >&2
        return 0
    fi
    if [ "${{BOOTGEN_VERIFY:-0}}" = 1 ] || [ -e /etc/bootgen/verify ]; then
        if ! "$BOOTGEN" verify "$HOST" --kernel-version "$kver"; then
            echo "bootgen: the initrd for $kver did not boot in QEMU; $target is unchanged" >&2
            return 1
        fi
    fi
    tmp="$target.bootgen-new"
    rm -f "$tmp"
    if "$BOOTGEN" build "$HOST" --kernel-version "$kver" -o "$tmp" >&2 && [ -s "$tmp" ]; then
        mv -f "$tmp" "$target"
        echo "bootgen: wrote $target" >&2
    else
        rm -f "$tmp"
        echo "bootgen: building the initrd for $kver failed; $target is unchanged" >&2
        return 1
    fi
}}
"""

KERNEL_INSTALL = """
# kernel-install COMMAND KERNEL_VERSION ENTRY_DIR KERNEL_IMAGE [INITRD...]
command=${1:?} kver=${2:?} entry_dir=${3:-}
[ "$command" = add ] || exit 0
generator=${KERNEL_INSTALL_INITRD_GENERATOR:-bootgen}
[ "$generator" = bootgen ] || exit 0
[ "$#" -le 4 ] || exit 0  # the caller brought its own initrd
if [ -n "${KERNEL_INSTALL_STAGING_AREA:-}" ]; then
    build "$kver" "$KERNEL_INSTALL_STAGING_AREA/initrd"
else
    build "$kver" "$entry_dir/initrd"
fi
"""

POSTINST = """
# /etc/kernel/postinst.d: KERNEL_VERSION [KERNEL_IMAGE]
kver=${1:?}
boot=$(dirname "${2:-/boot/vmlinuz-$kver}")
build "$kver" "$boot/initrd.img-$kver"
"""

POSTRM = """#!/bin/sh
{marker}: removes the initrd of a removed kernel
# /etc/kernel/postrm.d: KERNEL_VERSION [KERNEL_IMAGE]
kver=${{1:?}}
boot=$(dirname "${{2:-/boot/vmlinuz-$kver}}")
rm -f "$boot/initrd.img-$kver" "$boot/initrd.img-$kver.bootgen-new"
"""


@dataclass(frozen=True)
class Hook:
    path: str  # below the prefix
    text: str


def this_bootgen() -> str:
    """The bootgen the hooks run: this one's entry point, else the one on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "bootgen" and argv0.is_file():
        return str(argv0.resolve())
    beside = Path(sys.executable).parent / "bootgen"  # python -m bootgen.cli in a venv
    if beside.is_file():
        return str(beside)
    return shutil.which("bootgen") or "/usr/bin/bootgen"


def hooks(bootgen: str, host: str) -> list[Hook]:
    def common(what: str) -> str:
        return COMMON.format(marker=MARKER, what=what, bootgen=shlex.quote(bootgen),
                             host=shlex.quote(host))

    return [
        Hook("usr/lib/kernel/install.d/50-bootgen.install",
             common(f"kernel-install plugin, builds the initrd from {host}") + KERNEL_INSTALL),
        Hook("etc/kernel/postinst.d/zz-bootgen",
             common(f"Debian kernel hook, builds /boot/initrd.img-KVER from {host}") + POSTINST),
        Hook("etc/kernel/postrm.d/zz-bootgen", POSTRM.format(marker=MARKER)),
    ]


def _ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace").splitlines()[1]
    except (OSError, IndexError):
        return False


def install(prefix: Path, *, bootgen: str | None = None, host: str = DEFAULT_HOST) -> list[Path]:
    """Write the hooks below `prefix` (atomically, mode 0755); a file there that bootgen did
    not install is an error, nothing is written then."""
    if not host.startswith("/"):
        raise UsageError(f"{host} is not an absolute path", location="--config")
    wanted = [(prefix / h.path, h) for h in hooks(bootgen or this_bootgen(), host)]
    foreign = [str(p) for p, _ in wanted if p.exists() and not _ours(p)]
    if foreign:
        raise UsageError(f"{', '.join(foreign)} exists and was not installed by bootgen",
                         hint="move it away, or remove it if it is no longer wanted")
    for path, h in wanted:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, h.text.encode(), 0o755)
    return [p for p, _ in wanted]


def remove(prefix: Path) -> list[Path]:
    """Delete the hooks bootgen installed below `prefix`; leave anything else alone."""
    gone = []
    for h in hooks("bootgen", DEFAULT_HOST):
        path = prefix / h.path
        if path.exists() and _ours(path):
            os.unlink(path)
            gone.append(path)
    return gone
