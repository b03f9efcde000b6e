"""The build orchestrator: plan → render → resolve → pack → check → write.

`assemble` runs the pure-ish first half (what goes in, and why) for `build` and `bootgen show`
alike; `build` packs, checks and writes. The only stage that writes to disk: its outputs are
checked before building and written together, atomically (bootgen.paths.write_outputs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Host
from ..config.settings import check_kernel_version
from ..errors import BootgenError, BuildError, Problems, UsageError, raise_all
from ..features.uki import UKI
from ..paths import Output, check_outputs, write_outputs
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
    bad = check_kernel_version(kver)
    if bad is not None:
        raise UsageError(bad[0], location="--kernel-version" if override else
                         f"{host.source}: kernel.version", hint=bad[1])
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


def dry_run(host: Host, flavors: Sequence[str], *, kver: str | None = None, root: str = "/"
            ) -> list[Image]:
    """Everything a build does but packing, for `bootgen check`: plan, render and resolve each
    flavour (programs, libraries, modules, the files the description names: readable regular
    files of bounded size, public keys that are public). Every problem of every flavour at
    once (Problems); the images otherwise."""
    problems: list[BootgenError] = []
    images = []
    for flavor in flavors:
        try:
            images.append(assemble(host, flavor=flavor, kver=kver, root=root))
        except Problems as e:
            problems += e.problems
        except BootgenError as e:
            problems.append(e)
    raise_all(problems)
    return images


def inputs(host: Host, image: Image | None = None) -> list[str]:
    """What a build reads: the description, the files it names, every host file of the image."""
    found = [host.source]
    if image is not None:
        found += [f.source for f in image.spec.files]
        found += [p for g in image.spec.generated for p in g.include]
        found += [e.source for e in image.entries if e.source]
    return found


def outputs(output: Path | None, manifest_path: Path | None, secrets_out: Path | None,
            uki_output: Path | None = None) -> list[Output]:
    """The files a build writes, in the order they are renamed into place: secrets and
    manifest before the images (an image is never there without them)."""
    planned = [Output("--secrets-out", secrets_out, mode=0o600) if secrets_out else None,
               Output("--manifest", manifest_path) if manifest_path else None,
               Output("--uki", uki_output) if uki_output else None,
               Output("-o", output) if output else None]
    return [o for o in planned if o is not None]


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
    force: bool = False,
) -> BuildResult:
    """Build, check and write the image (and its manifest and secrets). `output` is the
    initrd, or the UKI with `[boot] output = "uki"`; `uki_output` writes a UKI as well. Output
    paths are checked before anything is built (bootgen.paths.check_outputs), and written all
    or none."""
    start = time.perf_counter()
    steps = Steps(progress)
    if host.boot.output == "uki":
        if uki_output is not None and output is not None:
            raise UsageError("the description's boot.output is uki: -o writes the UKI",
                             hint="give -o or --uki, not both")
        output, uki_output = None, uki_output or output
    planned = outputs(output, manifest_path, secrets_out, uki_output)
    check_outputs(planned, inputs(host), force=force)
    image = assemble(host, flavor=flavor, kver=kver, root=root, steps=steps)
    spec = image.spec
    check_outputs(planned, inputs(host, image), force=force, probe=False)
    with steps.step(f"packing and compressing ({spec.compression})"):
        packed = pack(image, root=root, cache=DirCache.default(), progress=progress)
    if secrets_out is not None and not packed.secrets:
        raise UsageError("the image has no secrets to write", location="--secrets-out",
                         hint="drop --secrets-out")
    data = packed.public if secrets_out else packed.data
    with steps.step("checking the image"):
        required = [e.path for e in image.entries if e.kind == "file" and e.mode & 0o111
                    and not e.secret]
        public = [e for e in image.entries if not e.secret]
        checked = check(packed.public, init=spec.init, required=required,
                        files={e.path: packed.files[e.path].sha256 for e in public
                               if e.kind == "file"},
                        links={e.path: e.target or "" for e in public if e.kind == "symlink"},
                        proven=packed.proven())
    sha = hashlib.sha256(data).hexdigest()
    efi = None
    if uki_output is not None:
        with steps.step("assembling the unified kernel image"):
            efi = uki.make(host, uki_initrd(host, packed, secrets_out), spec.kver, root=root)
    if planned:
        with steps.step(f"writing {output if output is not None else uki_output}"):
            private = bool(packed.secrets) and not secrets_out
            content = {"-o": data, "--secrets-out": packed.secrets, "--uki": efi or b"",
                       "--manifest": dumps(manifest(image, packed, sha)).encode()
                       if manifest_path is not None else b""}
            mode = {"-o": 0o600 if private else 0o644,
                    "--uki": 0o600 if private and UKI.of(host).secrets else 0o644}
            write_outputs([dataclasses.replace(o, data=content[o.option],
                                               mode=mode.get(o.option, o.mode))
                           for o in planned], inputs(host, image), force=force)
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
