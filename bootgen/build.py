"""The build orchestrator: load → plan → render → resolve → pack → check → write.

The only stage that writes to disk. Output is written atomically: a temp file in the target
directory, fsync, rename; a failed or interrupted build never leaves a partial image behind and
never replaces a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import kmod
from .check import Checked, check
from .errors import BuildError, UsageError
from .manifest import dumps, manifest
from .pack import Packed, pack
from .plan import plan
from .render import render
from .resolve import resolve
from .schema import Host
from .spec import Image

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    output: Path | None
    image: Image
    packed: Packed
    sha256: str
    seconds: float
    checked: Checked
    step_seconds: tuple[tuple[str, float], ...]


class _Steps:
    """Times each step; reports a step on `progress` only once it has run for a second."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.times: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        timer = None
        if self.progress is not None:
            timer = threading.Timer(1.0, self.progress, args=(f"{name}…",))
            timer.daemon = True
            timer.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            self.times.append((name, time.perf_counter() - start))


class DirCache:
    """Compressed segments in a directory, by content key; writes are atomic, errors ignored
    (a cache that cannot be written only makes the next build slower)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @staticmethod
    def default() -> DirCache | None:
        if os.environ.get("BOOTGEN_CACHE", "").lower() in ("0", "off", "no"):
            return None
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        return DirCache(Path(base) / "bootgen" / "segments")

    def get(self, key: str) -> bytes | None:
        try:
            return (self.directory / key).read_bytes()
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / key, data)
        except OSError:
            pass


def kernel_version(host: Host, override: str | None = None, root: str = "/") -> str:
    kver = override or host.kernel.version or kmod.newest_kernel(root)
    if not os.path.isdir(os.path.join(root, "lib/modules", kver)):
        raise UsageError(f"kernel {kver} has no modules under /lib/modules",
                         location=f"{host.source}: kernel.version",
                         hint="install its linux-image package or pick an installed version")
    return kver


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"directory {directory} does not exist", location=str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def build(
    host: Host,
    *,
    output: Path | None,
    flavor: str | None = None,
    kver: str | None = None,
    manifest_path: Path | None = None,
    secrets_out: Path | None = None,
    progress: Progress | None = None,
    root: str = "/",
) -> BuildResult:
    start = time.perf_counter()
    steps = _Steps(progress)
    with steps.step("planning"):
        version = kernel_version(host, kver, root)
        spec = plan(host, flavor=flavor, kver=version)
    with steps.step("rendering templates"):
        rendered = render(spec)
    with steps.step("resolving programs, libraries and modules"):
        image = resolve(spec, rendered, root=root)
    with steps.step(f"packing and compressing ({spec.compression})"):
        packed = pack(image, root=root, cache=DirCache.default(), progress=progress)
    data = packed.public if secrets_out else packed.data
    with steps.step("checking the image"):
        required = [e.path for e in image.entries if e.kind == "file" and e.mode & 0o111
                    and not e.secret]
        checked = check(packed.public, init=spec.init, required=required)
    sha = hashlib.sha256(data).hexdigest()
    if output is not None:
        with steps.step(f"writing {output}"):
            write_atomic(output, data, 0o600 if packed.secrets and not secrets_out else 0o644)
            if secrets_out is not None:
                if not packed.secrets:
                    raise BuildError("the image has no secrets to write",
                                     hint="drop --secrets-out")
                write_atomic(secrets_out, packed.secrets, 0o600)
            if manifest_path is not None:
                write_atomic(manifest_path, dumps(manifest(image, sha)).encode())
    return BuildResult(output, image, packed, sha, time.perf_counter() - start, checked,
                       tuple(steps.times))
