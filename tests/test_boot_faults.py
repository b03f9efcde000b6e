"""Boot faults, both flavours, real QEMU boots: stage one says what failed, within a bounded
guest time, and without a rescue path (rescue.shell_on_fail = false) ends cleanly: a countdown,
then a reboot as panic= asks (QEMU's -no-reboot makes it exit) — never a kernel panic.

Faults: the root never appears, the root has the wrong filesystem type, fsck finds errors it may
not fix (a test disk corrupted with debugfs), every passphrase is wrong, the network that
rd.neednet=1 requires never comes up (no NIC), and the init= program is not in the root.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from bootgen.config.schema import Host
from bootgen.description import loads
from bootgen.image.build import build
from bootgen.run import which
from bootgen.vm import qemu
from bootgen.vm.verify import PROMPT, Prepared, kernel_params, prepare, qemu_config

from .conftest import needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]

FLAVORS = ("scripted", "systemd")
PANIC = 2  # seconds of countdown before the reboot
TIMEOUT = 5  # device_timeout where the root is never to appear
# where the devices must appear (so that the fault under test is the one met): systemd under
# TCG on a busy machine may take more than 10 s from its start to udev's coldplug
PATIENT = 40
BASE = """
[boot]
kernel_params = ["console=ttyS0"]
device_timeout = {timeout}

[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]

[rescue]
shell_on_fail = false
allow_passwordless = true
"""
ROOT = """
[[filesystems]]
mountpoint = "/"
device = "LABEL=root"
fstype = "{fstype}"
options = ["rw"]
"""
LUKS = """
[[luks]]
name = "root"
device = "PARTLABEL=cryptroot"
tries = 2

[[filesystems]]
mountpoint = "/"
device = "/dev/mapper/root"
fstype = "ext4"
"""
NETWORK = """
[network]
enable = true
timeout = 5

[[network.interfaces]]
name = "eth0"
dhcp = true
"""
_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]", re.MULTILINE)
STOPPING = rf"bootgen: .*rebooting in {PANIC} s \(panic={PANIC}"


def bound(flavor: str) -> float:
    """Guest seconds a failing boot may take, to the reboot: TCG on a busy machine (the scripted
    init reaches /init in ~3-9 s, systemd in ~5-15 s, and shuts down in up to 10 s)."""
    return (60 if flavor == "scripted" else 120) + PANIC


def host(text: str = "", fstype: str = "ext4", timeout: int = PATIENT) -> Host:
    return loads(BASE.format(timeout=timeout) + (ROOT.format(fstype=fstype)
                                                 if "[[filesystems]]" not in text else "")
                 + text, "fault.toml")


def with_image_of(disks: Prepared, image_host: Host, flavor: str, work: Path) -> Prepared:
    """The disks of one description, booted with the image of another (what a wrong
    description meets on a real machine)."""
    out = work / f"{flavor}-other.img"
    r = build(image_host, output=out, flavor=flavor)
    return replace(disks, image=out, image_size=len(r.packed.data))


def fault(h: Host, prep: Prepared, work: Path, *append: str, net: bool | None = None,
          answer: str = "wrong passphrase") -> tuple[str, float]:
    """Boot until stage one gives up and QEMU exits; the console text and the guest uptime of
    its last timestamped line (the kernel's "reboot: Restarting system")."""
    cfg = qemu_config(h, prep, kernel_params(h, secrets.token_hex(4), [*append,
                                                                       f"panic={PANIC}"]))
    if net is not None:
        cfg = replace(cfg, net=net)
    machine = qemu.Machine(cfg, log_path=work / f"{prep.flavor}-fault.log")
    try:
        machine.start()
        while True:
            m = machine.wait_for_console_text(f"{PROMPT.pattern}|{STOPPING}", 300)
            if not PROMPT.fullmatch(m.group(0)):
                break
            machine.send_console(answer + "\n")  # a wrong passphrase, every time
        machine.wait_for_exit(120)
    finally:
        machine.shutdown()
    text = "\n".join(line.text for line in machine.lines)
    stamps = [float(s) for s in _STAMP.findall(text)]
    return text, max(stamps) if stamps else 0.0


def ended_cleanly(text: str) -> None:
    assert "Kernel panic" not in text and "not syncing" not in text
    assert re.search(STOPPING, text), text[-3000:]
    assert "reboot: Restarting system" in text


@pytest.mark.parametrize("flavor", FLAVORS)
def test_root_never_appears(flavor: str, tmp_path: Path) -> None:
    h = host(timeout=TIMEOUT)
    text, guest = fault(h, prepare(h, flavor, tmp_path), tmp_path, "root=LABEL=nowhere")
    ended_cleanly(text)
    if flavor == "scripted":
        assert f"FAILED: root device LABEL=nowhere did not appear within {TIMEOUT} s" in text
        # the wait counts time: the failure comes TIMEOUT s (give or take 1) after it began
        waited = re.search(r"^\[\s*(\d+\.\d+)\] bootgen: waiting up to .* LABEL=nowhere", text,
                           re.MULTILINE)
        failed = re.search(r"^\[\s*(\d+\.\d+)\] bootgen: FAILED: root device", text,
                           re.MULTILINE)
        assert waited and failed, text[-3000:]
        assert TIMEOUT - 2 <= float(failed.group(1)) - float(waited.group(1)) <= TIMEOUT + 1
    else:
        assert "Timed out waiting for device" in text and "nowhere" in text
        assert "bootgen: stage one failed; failed units:" in text
    assert guest < bound(flavor)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_rootdelay_counts_seconds_not_iterations(flavor: str, tmp_path: Path) -> None:
    if flavor == "systemd":
        pytest.skip("rootdelay= is the scripted init's (systemd waits per device unit)")
    h = host(timeout=TIMEOUT)
    text, _ = fault(h, prepare(h, flavor, tmp_path), tmp_path, "root=LABEL=nowhere",
                    "rootdelay=10")
    waited = re.search(r"^\[\s*(\d+\.\d+)\] bootgen: waiting up to 10 s", text, re.MULTILINE)
    failed = re.search(r"^\[\s*(\d+\.\d+)\] bootgen: FAILED: root device LABEL=nowhere did not "
                       r"appear within 10 s", text, re.MULTILINE)
    assert waited and failed, text[-3000:]
    # the issue measured 15.5 s of guest time for a 10 s rootdelay when iterations were counted
    assert 8 <= float(failed.group(1)) - float(waited.group(1)) <= 11


@pytest.mark.parametrize("flavor", FLAVORS)
def test_wrong_filesystem_type(flavor: str, tmp_path: Path) -> None:
    disks = prepare(host(), flavor, tmp_path)  # an ext4 root
    wrong = host(fstype="ext2")  # the description says ext2
    text, guest = fault(wrong, with_image_of(disks, wrong, flavor, tmp_path), tmp_path)
    ended_cleanly(text)
    if flavor == "scripted":
        assert "FAILED: could not mount the root /dev/vda (ext2, rw) on /sysroot" in text
    else:
        assert re.search(r"Failed to mount .*sysroot", text), text[-3000:]
        assert "bootgen:   sysroot.mount" in text
    assert guest < bound(flavor)


def corrupted_copy(disk: Path, work: Path) -> Path:
    """A copy of an ext4 test disk that e2fsck -p may not repair (exit 4): /etc's inode
    cleared, the filesystem marked as not clean."""
    debugfs = which("debugfs")
    if debugfs is None:
        pytest.skip("debugfs (e2fsprogs) is not installed")
    bad = work / "corrupted.img"
    shutil.copyfile(disk, bad)
    for request in ("clri /etc", "ssv state 0"):
        subprocess.run([debugfs, "-w", "-R", request, str(bad)], check=True,
                       capture_output=True)
    check = subprocess.run([which("e2fsck") or "e2fsck", "-n", str(bad)], capture_output=True)
    assert check.returncode == 4, check.stdout  # errors left: preen mode gives up too
    return bad


@pytest.mark.parametrize("flavor", FLAVORS)
def test_fsck_finds_errors(flavor: str, tmp_path: Path) -> None:
    h = host()
    prep = prepare(h, flavor, tmp_path)
    assert len(prep.drives) == 1
    bad = corrupted_copy(Path(prep.drives[0].path), tmp_path)
    prep = replace(prep, drives=(replace(prep.drives[0], path=str(bad)),))
    text, guest = fault(h, prep, tmp_path)
    ended_cleanly(text)
    if flavor == "scripted":
        assert "UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY" in text
        assert "FAILED: fsck of the root filesystem (/dev/vda) exited with status 4" in text
    else:
        # e2fsck's own report goes to the journal; systemd-fsck's verdict reaches the console
        # (exit status 4: errors left uncorrected)
        assert "fsck failed with exit status 4" in text, text[-3000:]
        assert re.search(r"Failed to start .*File System Check", text), text[-3000:]
        assert "bootgen:   systemd-fsck@" in text
    assert guest < bound(flavor)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_wrong_passphrase_every_time(flavor: str, tmp_path: Path) -> None:
    h = host(LUKS)
    text, guest = fault(h, prepare(h, flavor, tmp_path), tmp_path)
    ended_cleanly(text)
    if flavor == "scripted":
        assert "that passphrase did not open root (try 2 of 2)" in text
        assert "FAILED: could not unlock root (/dev/vda1) after 2 tries" in text
    else:
        assert re.search(r"Failed to start .*Cryptography Setup for root", text), text[-3000:]
        assert "bootgen:   systemd-cryptsetup@root.service" in text
    # two prompts typed at once, the unlock attempts (pbkdf2, TCG); systemd then waits out the
    # device timeout of /dev/mapper/root
    assert guest < bound(flavor) + PATIENT


@pytest.mark.parametrize("flavor", FLAVORS)
def test_required_network_never_up(flavor: str, tmp_path: Path) -> None:
    h = host(NETWORK)
    text, guest = fault(h, prepare(h, flavor, tmp_path), tmp_path, "rd.neednet=1", net=False)
    ended_cleanly(text)
    if flavor == "scripted":
        assert "FAILED: the network did not come up within 5 s (rd.neednet=1)" in text
    else:
        assert "bootgen:   systemd-networkd-wait-online.service" in text
    assert guest < bound(flavor)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_init_missing_in_the_root(flavor: str, tmp_path: Path) -> None:
    h = host()
    text, guest = fault(h, prepare(h, flavor, tmp_path), tmp_path, "init=/sbin/nonexistent")
    ended_cleanly(text)
    assert "init /sbin/nonexistent is not an executable file in the root filesystem" in text
    if flavor == "systemd":
        assert "bootgen:   bootgen-init-check.service" in text
    assert guest < bound(flavor)


def test_halts_without_panic_parameter(tmp_path: Path) -> None:
    """Without panic= the machine halts and keeps the message on its console."""
    h = host()
    prep = prepare(h, "scripted", tmp_path)
    cfg = qemu_config(h, prep, " ".join(["console=ttyS0", "root=LABEL=nowhere",
                                         f"bootgen.token={secrets.token_hex(4)}"]))
    machine = qemu.Machine(cfg, log_path=tmp_path / "halt.log")
    try:
        machine.start()
        machine.wait_for_console_text(r"halting in 5 s: the machine stays stopped", 300)
        machine.wait_for_console_text(r"reboot: System halted", 60)
    finally:
        machine.shutdown()
    assert not any("Kernel panic" in line.text for line in machine.lines)
