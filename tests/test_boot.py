"""Boot tests: both stage ones, the real Debian kernel, QEMU (TCG), synthetic disks.

Every passing boot is judged by the test root's verdict line, which carries a random per-run
token and the id of the disk that booted, so a pass cannot be faked by the initrd.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bootgen.config.schema import Host
from bootgen.description import loads
from bootgen.vm import qemu
from bootgen.vm.verify import BootResult, Prepared, boot, kernel_params, prepare

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]

FLAVORS = ("scripted", "systemd")
PASSWORD = "bootgen"
PASSWORD_HASH = ("$6$bootgensalt$uBaM3.x3spNCTGDRkrGI3212igg727VxHobQU6oAqX6gou6t85EIJyp/"
                 "yO5qXLLcYWIyeCg0oxxfXf9f6Kefw0")

BASE = """
[boot]
kernel_params = ["console=ttyS0"]
device_timeout = {timeout}

[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]

[rescue]
{rescue}
"""

LABEL_ROOT = """
[[filesystems]]
mountpoint = "/"
device = "LABEL=root"
fstype = "ext4"
options = ["rw"]
"""

UUID_ROOT = """
[[filesystems]]
mountpoint = "/"
device = "UUID=5b0e7a2c-3d4f-4e5a-8b6c-7d8e9f0a1b2c"
fstype = "ext4"
options = ["rw"]
"""

HELLO_UNIT = '''
[systemd]
wants = ["hello.service"]

[systemd.units]
"hello.service" = """
[Unit]
DefaultDependencies=no
[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/bin/echo HELLO-FROM-A-DESCRIBED-UNIT
"""
'''

# root by PARTUUID on a GPT disk, /var by UUID on a second disk, mounted in stage one
GPT_ROOT = """
[[filesystems]]
mountpoint = "/"
device = "PARTUUID=9e1bd4a1-26f2-4d6c-8f5b-0d7f3c1b2a40"
fstype = "ext4"
options = ["rw"]

[[filesystems]]
mountpoint = "/var"
device = "UUID=3f1f0c55-6b7e-4a8e-9d2c-1a2b3c4d5e6f"
fstype = "ext4"
needed_for_boot = true
"""


def host(layout: str, *, timeout: int = 30, rescue: str = "allow_passwordless = true") -> Host:
    return loads(BASE.format(timeout=timeout, rescue=rescue) + layout, "test-host.toml")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def boot_ok(h: Host, flavor: str, work: Path, append: tuple[str, ...] = ()) -> BootResult:
    r = boot(h, prepare(h, flavor, work), work, append=append)
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    return r


@pytest.mark.parametrize("flavor", FLAVORS)
def test_root_by_label_rw(flavor: str, work: Path) -> None:
    r = boot_ok(host(LABEL_ROOT + HELLO_UNIT), flavor, work)
    assert r.result["root"] == "rw"
    assert r.result["init"] == "init"
    assert list(r.stages)[-1] == "real init"
    # a unit from [systemd] units runs in the systemd flavour; the scripted one ignores it
    said = "HELLO-FROM-A-DESCRIBED-UNIT" in r.log.read_text(errors="replace")
    assert said == (flavor == "systemd")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_root_by_uuid_ro_and_custom_init(flavor: str, work: Path) -> None:
    r = boot_ok(host(UUID_ROOT), flavor, work, append=("ro", "init=/sbin/altinit"))
    assert r.result["root"] == "ro"
    assert r.result["init"] == "altinit"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_root_by_partuuid_and_var_by_uuid(flavor: str, work: Path) -> None:
    r = boot_ok(host(GPT_ROOT), flavor, work)
    assert r.result["mounts"] == "ok"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_missing_root_fails_clearly_within_the_timeout(flavor: str, work: Path) -> None:
    h = host(LABEL_ROOT, timeout=5)
    r = boot(h, prepare(h, flavor, work), work, append=("root=LABEL=nowhere",))
    assert not r.passed
    text = "\n".join(r.tail)
    if flavor == "scripted":
        assert "bootgen: FAILED: root device LABEL=nowhere did not appear within 5 s" in text
    else:
        assert "bootgen: stage one failed; failed units:" in text
        # the reason names the job that timed out, read on past the line that ended the wait
        assert "Timed out waiting for device" in r.reason and "nowhere" in r.reason, r.reason
        assert r.reason.endswith("failed units: none"), r.reason
        assert "bootgen: see journalctl -xb in the shell" in text
    # the failure came from the device timeout, well before verify's own timeout
    assert r.wall_seconds < 90


def start(prep: Prepared, h: Host, work: Path, *params: str) -> qemu.Machine:
    cfg = qemu.QemuConfig(kernel=prep.kernel, initrd=str(prep.image), drives=prep.drives,
                          append=kernel_params(h, secrets.token_hex(4), params))
    m = qemu.Machine(cfg, log_path=work / "console.log")
    m.start()
    return m


@pytest.mark.parametrize("flavor", FLAVORS)
def test_break_pre_mount_gives_a_shell_then_boots(flavor: str, work: Path) -> None:
    h = host(LABEL_ROOT)
    prep = prepare(h, flavor, work)
    with start(prep, h, work, "rd.break=pre-mount") as m:
        m.wait_for_console_text(r"bootgen: break at pre-mount", 180)
        m.wait_for_console_text(r"[#$] $", 60)
        m.send_console("echo shell-$((6*7))-works; ls /sysroot | wc -l\n")
        m.wait_for_console_text(r"shell-42-works", 30)
        m.wait_for_console_text(r"^0$", 30)  # the root is not mounted yet
        m.send_console("exit\n")
        m.wait_for_console_text(r"BOOTGEN-RESULT .* verdict=PASS", 180)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_rescue_shell_asks_for_the_password(flavor: str, work: Path) -> None:
    h = host(LABEL_ROOT, rescue=f'root_password_hash = "{PASSWORD_HASH}"')
    prep = prepare(h, flavor, work)
    param = "rd.systemd.unit=emergency.target" if flavor == "systemd" else "rd.break=pre-mount"
    with start(prep, h, work, param) as m:
        m.wait_for_console_text(r"(?i)root password", 180)
        m.send_console("wrong-password\n")
        m.wait_for_console_text(r"(?i)login incorrect|incorrect password|root password", 60)
        m.wait_for_console_text(r"(?i)root password", 60)
        m.send_console(PASSWORD + "\n")
        m.wait_for_console_text(r"[#$] $", 60)
        m.send_console("echo rescued-$((40+2))\n")
        m.wait_for_console_text(r"rescued-42", 30)


def test_locked_rescue_says_how_to_enable_it(work: Path) -> None:
    h = host(LABEL_ROOT, rescue="")
    prep = prepare(h, "systemd", work)
    with start(prep, h, work, "rd.systemd.unit=emergency.target") as m:
        m.wait_for_console_text(r"rescue shell is locked: set rescue.root_password_hash or "
                                r"rescue.allow_passwordless = true", 180)


def test_example_boots_in_both_flavours_without_edits(work: Path) -> None:
    """The same description, unchanged, boots with both flavours (verify --flavor both)."""
    from bootgen.description import load
    from bootgen.vm.verify import verify

    results = verify(load(EXAMPLES / "minimal.toml"), FLAVORS, workdir=work)
    assert [(r.flavor, r.passed) for r in results] == [(f, True) for f in FLAVORS], \
        [r.reason for r in results]
