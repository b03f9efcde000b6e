"""Shared fixtures: the installed kernel, example hosts, built images (cached per session)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from bootgen.config.schema import Host
from bootgen.description import load
from bootgen.image import kmod

REPO = Path(__file__).resolve().parent.parent
# a well-formed ed25519 public key (not anybody's): the description checks what keys hold
PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f "
              "test@bootgen")
EXAMPLES = REPO / "examples"

# The gate that decides whether a change lands runs the same examples every time (.ci/run sets
# HYPOTHESIS_PROFILE=ci); a developer's `make test` keeps drawing new ones, which is how a
# member named TRAILER!!! was found.
settings.register_profile("ci", derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never touch the user's cache: one cache for the whole run (segments, test disks,
    verify workdirs), shared by the xdist workers so that they build each disk once."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/, shared by popen-gw0, popen-gw1...
    cache = base / "xdg-cache"
    cache.mkdir(exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(cache)
    return cache


def _kernel() -> str | None:
    try:
        return kmod.newest_kernel()
    except Exception:
        return None


KVER = _kernel()
needs_kernel = pytest.mark.skipif(KVER is None, reason="no kernel modules under /lib/modules")


def alias_providers(alias: str, kver: str | None = KVER) -> set[str]:
    """Modules of the kernel that provide `alias` (modules.alias), e.g. which crc32c modules
    this kernel ships: machines differ (another kernel may build one in)."""
    if kver is None:
        return set()
    path = Path("/lib/modules", kver, "modules.alias")
    out = set()
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias" and parts[1] == alias:
            out.add(parts[2].replace("-", "_"))
    return out


def debian_initrd() -> Path | None:
    """The Debian initrd of the newest installed kernel, derived (never a fixed version)."""
    if KVER is None:
        return None
    path = Path("/boot", f"initrd.img-{KVER}")
    return path if path.is_file() and os.access(path, os.R_OK) else None


def needs_tool(name: str) -> pytest.MarkDecorator:
    missing = shutil.which(name) is None and not os.path.exists(f"/usr/sbin/{name}")
    return pytest.mark.skipif(missing, reason=f"{name} is not installed")


@pytest.fixture(scope="session")
def minimal() -> Host:
    return load(EXAMPLES / "minimal.toml")


def unpack_image(image: Path, dest: Path) -> Path:
    """Unpack every segment of an image with the zstd tool and GNU cpio (independent readers);
    device nodes are skipped (they need root)."""
    import subprocess

    from bootgen.archive.compress import read_image

    data = image.read_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    for seg in read_image(data):
        raw = data[seg.offset:seg.end]
        if seg.compression == "zstd":
            raw = subprocess.run(["zstd", "-dc"], input=raw, capture_output=True,
                                 check=True).stdout
        subprocess.run(["cpio", "-i", "-d", "-u", "--quiet", "--no-absolute-filenames",
                        "-D", dest, "--nonmatching", "dev/*"], input=raw, check=True)
    return dest
