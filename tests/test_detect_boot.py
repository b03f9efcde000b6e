"""detect inside a guest, then boot its disks with what it wrote: the guest's root is this
machine's own root shared read-only (bootgen.vm.hostroot); there the host's udevd, cryptsetup
and lvm bring up an example's test disks and mount them as an installer would, and `bootgen
detect` (this worktree's, run by the guest) describes that system. The description it writes
is built in both flavours and boots the very same disks: the test root judges the mounts."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import pytest

from bootgen.description import load, loads
from bootgen.image import kmod
from bootgen.image.build import build
from bootgen.vm import hostroot, qemu
from bootgen.vm.luksdisk import TEST_PASSPHRASE
from bootgen.vm.verify import boot, prepare

from .conftest import EXAMPLES, REPO, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]

DETECT = """
sh {repo}/tools/capture-host.sh --mounted /mnt /run/capture
cd {repo}
{python} -m bootgen.cli detect --root /run/capture -o /run/out/host.toml
"""
OUT = """
tar -C /run/out -cf "$OUT_DISK" .
"""


@pytest.mark.parametrize("example", ["luks", "lvm"])
def test_detect_in_a_guest_then_boot_the_same_disks(example: str, tmp_path: Path) -> None:
    host = load(EXAMPLES / f"{example}.toml")
    kver = kmod.newest_kernel()
    kernel = qemu.default_kernel(kver)
    prep = prepare(host, "systemd", tmp_path / "original", kver=kver)
    script = (hostroot.system_script(host, TEST_PASSPHRASE) + "mkdir -p /run/out\n"
              + DETECT.format(repo=shlex.quote(str(REPO)), python=shlex.quote(sys.executable))
              + OUT)
    job = hostroot.run_job(script, tmp_path / "guest", kver=kver, kernel=kernel,
                           drives=prep.drives, append="console=ttyS0",
                           name=f"detect in a guest ({example})")
    text = job.files["./host.toml"].decode()
    detected = loads(text, f"detected-{example}.toml")
    assert not any(fs.device.startswith("/dev/vd") for fs in detected.filesystems), text
    assert {fs.mountpoint for fs in detected.boot_filesystems} == {
        fs.mountpoint for fs in host.boot_filesystems}
    # under TCG on a busy machine coldplug can take longer than the default device timeout
    # (30 s); the boot test allows more, the rest of the description is what detect wrote
    detected = dataclasses.replace(detected, boot=dataclasses.replace(detected.boot,
                                                                      device_timeout=120))
    for flavor in ("scripted", "systemd"):
        work = tmp_path / flavor
        work.mkdir()
        image = work / f"{flavor}.img"
        r = build(detected, output=image, flavor=flavor, kver=kver)
        mine = dataclasses.replace(prep, flavor=flavor, image=image,
                                   image_size=len(r.packed.data), build=r)
        result = boot(detected, mine, work)
        assert result.passed, f"{flavor}: {result.reason}\n{text}\n" + "\n".join(result.tail)
