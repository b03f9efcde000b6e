"""Storage boots in both stage ones: LVM, LVM on LUKS, LUKS on LVM, RAID1 (whole and degraded),
LVM on RAID1 over two LUKS disks, btrfs over two devices with subvolumes, xfs, vfat, and resume
from hibernation (plain and encrypted swap). The test disks are built in the helper VM
(bootgen.vm.stackbuild) and shared through the cache; every boot is judged by the test root."""

from __future__ import annotations

import dataclasses
import re
import secrets
from pathlib import Path

import pytest

from bootgen.config.schema import Host
from bootgen.description import loads
from bootgen.run import run
from bootgen.vm import qemu
from bootgen.vm.luksdisk import TEST_PASSPHRASE
from bootgen.vm.verify import PROMPT, BootResult, Prepared, boot, kernel_params, prepare

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]
FLAVORS = ("scripted", "systemd")

HEAD = """
[boot]
kernel_params = ["console=ttyS0"]
{boot}
[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]

[rescue]
allow_passwordless = true
"""

LVM_XFS = (EXAMPLES / "lvm.toml").read_text() + """
[[filesystems]]
mountpoint = "/srv"
device = "/dev/vg0/srv"
fstype = "xfs"
needed_for_boot = true
"""

LVM_ON_LUKS = HEAD.format(boot="") + """
[[luks]]
name = "cryptpv"
device = "PARTLABEL=cryptpv"

[[lvm]]
name = "vg1"
devices = ["/dev/mapper/cryptpv"]

[[filesystems]]
mountpoint = "/"
device = "/dev/vg1/root"
fstype = "ext4"
options = ["rw"]

[[filesystems]]
mountpoint = "/boot"
device = "LABEL=ESP"
fstype = "vfat"
needed_for_boot = true
"""

LUKS_ON_LVM = HEAD.format(boot="") + """
[[lvm]]
name = "vg2"
devices = ["PARTLABEL=pv"]

[[luks]]
name = "cryptroot"
device = "/dev/vg2/crypt"

[[filesystems]]
mountpoint = "/"
device = "/dev/mapper/cryptroot"
fstype = "ext4"
options = ["rw"]
"""

# dracut's TEST-26 level: LVM on RAID1 over two LUKS disks, one passphrase asked once
LVM_RAID_LUKS = HEAD.format(boot="") + """
[[luks]]
name = "crypt-a"
device = "PARTLABEL=crypt-a"

[[luks]]
name = "crypt-b"
device = "PARTLABEL=crypt-b"

[[raid]]
name = "sys"
uuid = "12121212:34343434:56565656:78787878"
devices = ["/dev/mapper/crypt-a", "/dev/mapper/crypt-b"]

[[lvm]]
name = "vg3"
devices = ["/dev/md/sys"]

[[filesystems]]
mountpoint = "/"
device = "/dev/vg3/root"
fstype = "ext4"
options = ["rw"]
"""

RESUME_PLAIN = HEAD.format(boot='resume_device = "PARTLABEL=swap"') + """
[[filesystems]]
mountpoint = "/"
device = "LABEL=root"
fstype = "ext4"
options = ["rw"]
"""


def slow(text: str) -> Host:
    """The description, with a device timeout for a busy machine: under TCG, with other boots
    beside it, the whole stack can take a minute to appear (a missing device is tested apart)."""
    return loads(text.replace("[boot]", "[boot]\ndevice_timeout = 150", 1))


def passed(r: BootResult) -> BootResult:
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    return r


def detail(r: BootResult) -> dict[str, str]:
    """mountpoint -> "fstype:source[:subvol]" from the test root's verdict; an LV is spelled
    /dev/mapper/VG-LV whichever name stage one mounted it by (the kernel keeps that one)."""
    out = {}
    for d in r.result["detail"].split(","):
        mountpoint, rest = d.split(":", 1)
        m = re.fullmatch(r"(\w+):/dev/(\w+)/(\w+)(:.*)?", rest)
        if m and m.group(2) not in ("mapper", "md", "disk"):
            rest = f"{m.group(1)}:/dev/mapper/{m.group(2)}-{m.group(3)}{m.group(4) or ''}"
        out[mountpoint] = rest
    return out


@pytest.mark.parametrize("flavor", FLAVORS)
def test_lvm_root_home_and_xfs(flavor: str, tmp_path: Path) -> None:
    h = slow(LVM_XFS)
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path))
    mounts = detail(r)
    assert mounts["/"] == "ext4:/dev/mapper/vg0-root"
    assert mounts["/home"] == "ext4:/dev/mapper/vg0-home"
    assert mounts["/srv"] == "xfs:/dev/mapper/vg0-srv"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_lvm_on_luks_and_vfat(flavor: str, tmp_path: Path) -> None:
    h = slow(LVM_ON_LUKS)
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path))
    assert r.prompts == 1
    mounts = detail(r)
    assert mounts["/"] == "ext4:/dev/mapper/vg1-root" and mounts["/boot"].startswith("vfat:")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_luks_on_lvm(flavor: str, tmp_path: Path) -> None:
    h = slow(LUKS_ON_LVM)
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path))
    assert r.prompts == 1 and detail(r)["/"] == "ext4:/dev/mapper/cryptroot"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_raid1_root(flavor: str, tmp_path: Path) -> None:
    h = slow((EXAMPLES / "raid.toml").read_text())
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path))
    assert re.fullmatch(r"ext4:/dev/md(/root|\d+)", detail(r)["/"])
    assert not any("DEGRADED" in line for line in r.tail)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_raid1_root_boots_degraded_and_says_so(flavor: str, tmp_path: Path) -> None:
    h = slow((EXAMPLES / "raid.toml").read_text())
    prep = prepare(h, flavor, tmp_path)
    one_disk = dataclasses.replace(prep, drives=prep.drives[:1])
    r = passed(boot(h, one_disk, tmp_path))
    log = r.log.read_text(errors="replace")
    assert re.search(r"bootgen: RAID /dev/\S+ started DEGRADED", log), r.tail


@pytest.mark.parametrize("flavor", FLAVORS)
def test_lvm_on_raid1_on_two_luks_disks_one_passphrase(flavor: str, tmp_path: Path) -> None:
    h = slow(LVM_RAID_LUKS)
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path))
    assert r.prompts == 1
    assert detail(r)["/"] == "ext4:/dev/mapper/vg3-root"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_btrfs_on_two_devices_with_subvolumes(flavor: str, tmp_path: Path) -> None:
    h = slow((EXAMPLES / "btrfs.toml").read_text())
    r = passed(boot(h, prepare(h, flavor, tmp_path), tmp_path))
    mounts = detail(r)
    assert mounts["/"].startswith("btrfs:") and mounts["/"].endswith(":/@root")
    assert mounts["/home"].startswith("btrfs:") and mounts["/home"].endswith(":/@home")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_missing_physical_volume_is_named(flavor: str, tmp_path: Path) -> None:
    h = loads(LVM_XFS.replace("[boot]", "[boot]\ndevice_timeout = 10"))
    prep = prepare(h, flavor, tmp_path)
    r = boot(h, dataclasses.replace(prep, drives=()), tmp_path, timeout=150)
    assert not r.passed
    log = r.log.read_text(errors="replace")
    if flavor == "scripted":
        assert "volume group vg0: physical volume PARTLABEL=pv0 did not appear within 10 s" in log
    else:
        assert re.search(r"Timed out waiting for device .*vg0.*root", log), r.tail


# --- hibernation ------------------------------------------------------------------------------


def persistent(prep: Prepared, where: Path) -> Prepared:
    """The prepared disks behind writable overlays: a hibernation image must survive the
    boot that writes it (the cached disks stay untouched)."""
    drives = []
    for i, d in enumerate(prep.drives):
        overlay = where / f"overlay{i}.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", d.path, overlay])
        drives.append(qemu.Drive(str(overlay), format="qcow2", serial=d.serial))
    return dataclasses.replace(prep, drives=tuple(drives))


def console_run(host: Host, prep: Prepared, log: Path, params: list[str], want: str
                ) -> tuple[re.Match[str], list[str]]:
    """Boot, answer passphrase prompts, return the match of `want` and the console lines."""
    token = secrets.token_hex(6)
    cfg = qemu.QemuConfig(kernel=prep.kernel, initrd=str(prep.image),
                          append=kernel_params(host, token, params), drives=prep.drives)
    with qemu.Machine(cfg, log_path=log) as m:
        m.start()
        while True:
            found = m.wait_for_console_text(f"{want}|{PROMPT.pattern}", 300)
            if not PROMPT.fullmatch(found.group(0)):
                break
            m.send_console(TEST_PASSPHRASE + "\n")
        m.wait_for_exit(120)
        return found, [line.text for line in m.lines]


RESUME_LUKS = (EXAMPLES / "resume.toml").read_text()


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("text", [RESUME_PLAIN, RESUME_LUKS], ids=["plain", "encrypted"])
def test_resume_from_hibernation(flavor: str, text: str, tmp_path: Path) -> None:
    h = slow(text)
    prep = persistent(prepare(h, flavor, tmp_path), tmp_path)
    before, _ = console_run(h, prep, tmp_path / "hibernate.log", ["bootgen.hibernate=1"],
                            r"BOOTGEN-HIBERNATE value=(\S+) ")  # whole words only
    value = before.group(1)
    after, lines = console_run(h, prep, tmp_path / "resume.log", [],
                               r"BOOTGEN-RESUMED value=(\S+)[ \t]*\n|BOOTGEN-RESULT [^\n]*\n")
    assert after.group(0).startswith("BOOTGEN-RESUMED"), "booted afresh instead of resuming:\n" \
        + "\n".join(lines[-30:])
    assert after.group(1) == value
