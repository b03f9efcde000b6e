"""The build orchestrator: plan → render → resolve → pack → check → write.

`assemble` runs the pure-ish first half (what goes in, and why) for `build` and `bootgen show`
alike; `build` packs, checks and writes. The only stage that writes to disk; every output is
written atomically (bootgen.paths.write_atomic).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Host
from ..errors import BuildError, UsageError
from ..paths import write_atomic
from ..progress import Progress, Steps
from . import kmod
from .cache import DirCache
from .check import Checked, check
from .manifest import dumps, manifest
from .pack import Packed, pack
from .plan import plan
from .render import render
from .resolve import resolve
from .spec import Image


@dataclass(frozen=True)
class BuildResult:
    output: Path | None
    image: Image
    packed: Packed
    sha256: str
    seconds: float
    checked: Checked
    step_seconds: tuple[tuple[str, float], ...]


def kernel_version(host: Host, override: str | None = None, root: str = "/") -> str:
    kver = override or host.kernel.version or kmod.newest_kernel(root)
    if not os.path.isdir(os.path.join(root, "lib/modules", kver)):
        raise UsageError(f"kernel {kver} has no modules under /lib/modules",
                         location=f"{host.source}: kernel.version",
                         hint="install its linux-image package or pick an installed version")
    return kver


def assemble(host: Host, *, flavor: str | None = None, kver: str | None = None,
             root: str = "/", steps: Steps | None = None) -> Image:
    """What the image of `host` holds, and why: plan, render and resolve."""
    steps = steps or Steps(None)
    with steps.step("planning"):
        spec = plan(host, flavor=flavor, kver=kernel_version(host, kver, root))
    with steps.step("rendering templates"):
        rendered = render(spec)
    with steps.step("resolving programs, libraries and modules"):
        return resolve(spec, rendered, root=root)


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
    steps = Steps(progress)
    image = assemble(host, flavor=flavor, kver=kver, root=root, steps=steps)
    spec = image.spec
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
                write_atomic(manifest_path, dumps(manifest(image, packed, sha)).encode())
    return BuildResult(output, image, packed, sha, time.perf_counter() - start, checked,
                       tuple(steps.times))
