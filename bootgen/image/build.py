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
from ..features.uki import UKI
from ..paths import write_atomic
from ..progress import Progress, Steps
from . import kmod, uki
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
    uki: bytes | None = None  # the unified kernel image, when one was asked for


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
    uki_output: Path | None = None,
    progress: Progress | None = None,
    root: str = "/",
) -> BuildResult:
    """Build the image of `host`. `output` is the initrd, or the UKI with `[boot] output =
    "uki"`; `uki_output` writes a UKI as well."""
    start = time.perf_counter()
    steps = Steps(progress)
    if host.boot.output == "uki":
        if uki_output is not None and output is not None:
            raise UsageError("the description's boot.output is uki: -o writes the UKI",
                             hint="give -o or --uki, not both")
        output, uki_output = None, uki_output or output
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
    if secrets_out is not None and not packed.secrets:
        raise BuildError("the image has no secrets to write", hint="drop --secrets-out")
    efi = None
    if uki_output is not None:
        with steps.step("assembling the unified kernel image"):
            efi = uki.make(host, uki_initrd(host, packed, secrets_out), spec.kver, root=root)
    private = bool(packed.secrets) and not secrets_out
    target = output if output is not None else uki_output
    if target is not None:
        with steps.step(f"writing {target}"):
            if output is not None:
                write_atomic(output, data, 0o600 if private else 0o644)
            if efi is not None and uki_output is not None:
                write_atomic(uki_output, efi,
                             0o600 if private and UKI.of(host).secrets else 0o644)
            if secrets_out is not None:
                write_atomic(secrets_out, packed.secrets, 0o600)
            if manifest_path is not None:
                write_atomic(manifest_path, dumps(manifest(image, packed, sha)).encode())
    return BuildResult(output if output is not None else uki_output, image, packed, sha,
                       time.perf_counter() - start, checked, tuple(steps.times), efi)


def uki_initrd(host: Host, packed: Packed, secrets_out: Path | None) -> bytes:
    """The initrd a UKI carries: the public part, and the secrets when [uki] secrets = true
    and they are not written apart."""
    if not packed.secrets or secrets_out is not None:
        return packed.public
    if not UKI.of(host).secrets:
        raise BuildError("the image has secrets (keyfiles, host keys), which the UKI leaves "
                         "out by default", location=f"{host.source}: uki.secrets",
                         hint="write them apart with --secrets-out, or set uki.secrets = true "
                         "to embed them")
    return packed.data
