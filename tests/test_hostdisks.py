"""`bootgen verify --host-disks` without a boot: the lookup of the machine's disks on a fake
/dev and /sys tree, the read-only overlays QEMU gets, verification mode in both stage ones, and
the reading of the guest's verdict."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen.cli import main
from bootgen.description import loads
from bootgen.errors import BootError, UsageError
from bootgen.features.common import VERIFY_PARAM, verify_options
from bootgen.image.plan import plan
from bootgen.image.render import render
from bootgen.vm import hostdisks, hostverify, qemu

from .conftest import EXAMPLES, needs_tool

ROOT_UUID = "5b0e7a2c-3d4f-4e5a-8b6c-7d8e9f0a1b2c"
VAR_LABEL = "var"
LUKS_PARTUUID = "9e1bd4a1-26f2-4d6c-8f5b-0d7f3c1b2a40"
BOOT_UUID = "ABCD-1234"  # vfat: udev keeps the upper case

BASE = """
[boot]
kernel_params = ["console=ttyS0"]
[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]
[rescue]
shell_on_fail = true
allow_passwordless = true
"""

PLAIN = BASE + f"""
[[filesystems]]
mountpoint = "/"
device = "UUID={ROOT_UUID}"
fstype = "ext4"
options = ["rw"]

[[filesystems]]
mountpoint = "/var"
device = "LABEL={VAR_LABEL}"
fstype = "xfs"
needed_for_boot = true

[[filesystems]]
mountpoint = "/boot/efi"
device = "UUID={BOOT_UUID.lower()}"
fstype = "vfat"
"""

LAYERED = BASE + f"""
[[luks]]
name = "cryptroot"
device = "PARTUUID={LUKS_PARTUUID}"

[[filesystems]]
mountpoint = "/"
device = "/dev/mapper/cryptroot"
fstype = "ext4"

[[filesystems]]
mountpoint = "/home"
device = "UUID=11111111-2222-4333-8444-555555555555"
fstype = "ext4"
"""


def fake_machine(tmp: Path) -> tuple[Path, Path]:
    """/dev and /sys of a machine with a SATA disk sda (sda1 the root, sda2 a LUKS container
    open as dm-0), an NVMe disk (nvme0n1p1: /var), a virtio disk vda (vda1: vfat) and a loop."""
    dev, sys = tmp / "dev", tmp / "sys"
    devices = {
        "sda": "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
        "nvme0n1": "pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1",
        "vda": "pci0000:00/0000:00:04.0/virtio1/block/vda",
        "dm-0": "virtual/block/dm-0",
    }
    parts = {"sda1": "sda", "sda2": "sda", "nvme0n1p1": "nvme0n1", "vda1": "vda"}
    (sys / "class" / "block").mkdir(parents=True)
    for name, where in devices.items():
        (sys / "devices" / where).mkdir(parents=True)
        (sys / "class" / "block" / name).symlink_to(f"../../devices/{where}")
    for name, disk in parts.items():
        where = sys / "devices" / devices[disk] / name
        where.mkdir()
        (where / "partition").write_text("1\n")
        (sys / "class" / "block" / name).symlink_to(
            os.path.relpath(where, sys / "class" / "block"))
    (sys / "devices" / devices["dm-0"] / "slaves").mkdir()
    (sys / "devices" / devices["dm-0"] / "slaves" / "sda2").symlink_to("../../../../block/sda2")
    for name in [*devices, *parts]:
        (dev / name).parent.mkdir(parents=True, exist_ok=True)
        (dev / name).write_bytes(b"")  # device nodes need root: files stand in for them
    links = {"by-uuid": {ROOT_UUID: "sda1", BOOT_UUID: "vda1",
                         "0f0f0f0f-aaaa-4bbb-8ccc-dddddddddddd": "dm-0"},
             "by-label": {VAR_LABEL: "nvme0n1p1"},
             "by-partuuid": {LUKS_PARTUUID: "sda2"}}
    for kind, names in links.items():
        (dev / "disk" / kind).mkdir(parents=True)
        for value, name in names.items():
            (dev / "disk" / kind / value).symlink_to(f"../../{name}")
    (dev / "mapper").mkdir()
    (dev / "mapper" / "cryptroot").symlink_to("../dm-0")
    return dev, sys


def test_lookup_finds_the_whole_disks(tmp_path: Path) -> None:
    dev, sys = fake_machine(tmp_path)
    found = hostdisks.host_disks(loads(PLAIN), dev, sys)
    by_key = {f.key: f for f in found.found}
    assert by_key["filesystems[0].device"].node == "/dev/sda1"
    assert by_key["filesystems[0].device"].disks == (str(dev / "sda"),)
    assert by_key["filesystems[1].device"].disks == (str(dev / "nvme0n1"),)
    # UUID= in lower case finds udev's upper-case vfat link
    assert by_key["filesystems[2].device"].node == "/dev/vda1"
    assert found.disks == tuple(sorted(str(dev / d) for d in ("sda", "nvme0n1", "vda")))
    assert found.missing == found.hidden == ()


def test_lookup_follows_device_mapper_to_its_disk(tmp_path: Path) -> None:
    dev, sys = fake_machine(tmp_path)
    assert hostdisks.whole_disks("dm-0", sys) == ("sda",)
    found = hostdisks.host_disks(loads(LAYERED), dev, sys)
    # the LUKS container by PARTUUID; /dev/mapper/cryptroot is made in stage one
    assert [(f.key, f.node) for f in found.found] == [("luks[0].device", "/dev/sda2")]
    assert found.disks == (str(dev / "sda"),)
    # a filesystem not visible here may be inside the container: stage one will tell
    assert found.hidden == (("filesystems[1].device",
                             "UUID=11111111-2222-4333-8444-555555555555"),)


def test_a_uuid_on_no_disk_fails_naming_it(tmp_path: Path) -> None:
    dev, sys = fake_machine(tmp_path)
    other = "deadbeef-0000-4000-8000-000000000000"
    with pytest.raises(BootError) as e:
        hostdisks.host_disks(loads(PLAIN.replace(ROOT_UUID, other)), dev, sys)
    assert f"UUID={other} (filesystems[0].device)" in e.value.message
    assert ROOT_UUID not in e.value.message
    # in a layered description the LUKS container itself must be there
    with pytest.raises(BootError, match=f"PARTUUID={other} \\(luks\\[0\\].device\\)"):
        hostdisks.host_disks(loads(LAYERED.replace(LUKS_PARTUUID, other)), dev, sys)


def test_lookup_stays_inside_the_dev_tree(tmp_path: Path) -> None:
    dev, sys = fake_machine(tmp_path)
    (tmp_path / "outside").write_bytes(b"")
    (dev / "disk" / "by-label" / "escape").symlink_to("../../../outside")
    assert hostdisks.resolve("LABEL=escape", dev) is None
    assert hostdisks.resolve("/dev/../outside", dev) is None
    assert hostdisks.resolve("LABEL=nothing", dev) is None
    assert hostdisks.resolve("/dev/sda1", dev) == Path(os.path.realpath(dev / "sda1"))


def test_disks_attach_like_their_controller(tmp_path: Path) -> None:
    _, sys = fake_machine(tmp_path)
    assert [hostdisks.bus(n, sys) for n in ("sda", "nvme0n1", "vda")] == \
        ["ide", "nvme", "virtio"]


def test_unreadable_disk_is_one_line_exit_2(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "host.toml"
    host.write_text(PLAIN)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    real_open = os.open

    def refuse(path: str, *args: int, **kw: int) -> int:
        if str(path) == str(disk):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(hostdisks.os, "open", refuse)
    monkeypatch.setattr(hostdisks.os, "geteuid", lambda: 1000)
    r = CliRunner().invoke(main, ["verify", str(host), "--disk", str(disk)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert lines[-1] == (f"error: --host-disks: cannot read {disk}: reading the disks needs "
                         f"root or the disk group (hint: {hostdisks.ACCESS_HINT})")
    assert not any("Traceback" in line for line in lines)
    monkeypatch.setattr(hostdisks.os, "geteuid", lambda: 0)  # root kept from it: no group helps
    r = CliRunner().invoke(main, ["verify", str(host), "--disk", str(disk)])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith(
        f"error: --host-disks: cannot read {disk}: Permission denied, even as root (hint: ")


def test_image_option_is_checked_before_anything_boots(tmp_path: Path) -> None:
    host = tmp_path / "host.toml"
    host.write_text(PLAIN)
    img = tmp_path / "i.img"
    img.write_bytes(b"x")
    run = CliRunner().invoke
    r = run(main, ["verify", str(host), "--image", str(img)])
    assert (r.exit_code, r.output.strip().splitlines()[-1]) == (
        2, "error: --image: --image needs --host-disks or --disk")
    r = run(main, ["verify", str(host), "--disk", str(img), "--image", str(img),
                   "--flavor", "both"])
    assert r.exit_code == 2 and "an image built before is of one flavour" in r.output
    r = run(main, ["verify", str(host), "--disk", str(img), "--image", str(tmp_path / "no"),
                   "--flavor", "scripted"])
    assert r.exit_code == 2 and "not a readable image file" in r.output


def test_warnings_before_the_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk of the running machine gives a snapshot that may be inconsistent; a TPM2 volume
    falls back to the passphrase: both said before anything is built."""
    said: list[str] = []
    disk = hostdisks.Attached("/dev/sdz", 1 << 30, True, "ide")
    monkeypatch.setattr(hostdisks, "attach", lambda paths, sys: [disk])
    host = loads((EXAMPLES / "tpm2.toml").read_text())
    with pytest.raises(UsageError, match="kernel"):  # stops there: nothing built or booted
        hostverify.host_verify(host, ["systemd"], disks=["/dev/sdz"], workdir=tmp_path,
                               kver="no/such", progress=said.append)
    assert said == ["warning: " + hostverify.IN_USE.format(path="/dev/sdz"),
                    "[[luks]] 'cryptroot' is bound to this machine's TPM2, which cannot follow "
                    "into the VM: stage one falls back to asking for the passphrase"]
    assert "may be inconsistent" in said[0] and "harmless" in said[0]


def test_attach_refuses_what_is_no_disk(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="neither a block device nor a regular file"):
        hostdisks.attach([str(tmp_path)])
    img = tmp_path / "d.img"
    img.write_bytes(b"\0" * 12345)
    [a] = hostdisks.attach([str(img)])
    assert (a.size, a.block, a.interface) == (12345, False, "virtio")


@needs_tool("qemu-img")
def test_overlay_leaves_the_disk_alone(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(os.urandom(1 << 20))
    before = img.read_bytes()
    mtime = img.stat().st_mtime_ns
    [drive] = hostdisks.overlays(hostdisks.attach([str(img)]), tmp_path)
    assert img.read_bytes() == before and img.stat().st_mtime_ns == mtime
    info = subprocess.run(["qemu-img", "info", "--output=json", drive.path],
                          capture_output=True, text=True, check=True).stdout
    assert f'"backing-filename": "{img}"' in info and '"virtual-size": 1048576' in info
    argv = qemu.qemu_argv(qemu.QemuConfig(kernel="k", initrd="i", append="", drives=(drive,)),
                          kvm=False)
    blockdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-blockdev"]
    assert blockdevs[0] == f"driver=file,filename={img},node-name=d0-disk,read-only=on"
    assert "backing=d0-base" in blockdevs[2] and f"file.filename={drive.path}" in blockdevs[2]
    assert "-drive" not in argv


def test_an_overlay_must_be_qcow2() -> None:
    bad = qemu.Drive("o.img", format="raw", backing="/dev/sda", backing_driver="host_device")
    with pytest.raises(UsageError, match="overlay"):
        qemu.qemu_argv(qemu.QemuConfig(kernel="k", initrd="i", append="", drives=(bad,)),
                       kvm=False)


def test_verify_options_never_replay() -> None:
    assert verify_options("ext4", ("rw", "noatime")) == ["noatime", "ro", "noload"]
    assert verify_options("xfs", ()) == ["ro", "norecovery"]
    assert verify_options("btrfs", ("subvol=@", "defaults")) == \
        ["subvol=@", "ro", "rescue=nologreplay"]
    assert verify_options("vfat", ("rw",)) == ["ro"]


def rendered(text: str, flavor: str) -> dict[str, str]:
    spec = plan(loads(text), flavor=flavor, kver="6.1.0-test")
    return {g.path: (g.content or b"").decode() for g in render(spec)}


def test_scripted_init_in_verification_mode() -> None:
    files = rendered(PLAIN, "scripted")
    init = files["/init"]
    assert f"{VERIFY_PARAM}) verify=1 ;;" in init
    assert "[ -n \"$verify\" ] && opts=ro,noload" in init
    assert "[ -n \"$verify\" ] && fs_opts=ro,norecovery" in init
    assert "[ -n \"$verify\" ] && fsck_mode=skip" in init
    # the check and the power-off come before the switch, which is never reached in that mode
    check = init.index("/usr/lib/bootgen/host-verify check")
    assert check < init.index("poweroff -f", check) < init.index("exec switch_root")
    assert "/usr/lib/bootgen/host-verify" in files


def test_systemd_units_in_verification_mode() -> None:
    files = rendered(PLAIN, "systemd")
    unit = files["/usr/lib/systemd/system/bootgen-host-verify.service"]
    assert f"ConditionKernelCommandLine={VERIFY_PARAM}" in unit
    assert "Before=initrd.target initrd-cleanup.service" in unit
    assert "Requires=initrd-root-fs.target" in unit  # never runs after a failed root
    assert "SuccessAction=poweroff-force" in unit and "FailureAction=poweroff-force" in unit
    gen = files["/usr/lib/systemd/system-generators/bootgen-verify-generator"]
    assert "printf '[Mount]\\nOptions=%s\\n' ro,noload > \"$dir/\"sysroot.mount.d/" in gen
    assert "ro,norecovery > \"$dir/\"sysroot-var.mount.d/50-bootgen-verify.conf" in gen
    for u in ("systemd-fsck@.service.d", "systemd-fsck-root.service.d"):
        assert files[f"/usr/lib/systemd/system/{u}/bootgen-verify.conf"] == \
            f"[Unit]\nConditionKernelCommandLine=!{VERIFY_PARAM}\n"
    # the switch-root check refuses in verification mode: a second guard
    assert "bootgen.verify=*)" in files["/usr/lib/bootgen/init-check"]


@needs_tool("busybox")
def test_guest_escapes_what_it_reads_from_the_disk() -> None:
    script = rendered(PLAIN, "scripted")["/usr/lib/bootgen/host-verify"]
    clean = re.search(r"^clean\(\) \{.*?^\}\n", script, re.S | re.M)
    assert clean is not None
    hostile = 'Debian" verdict=PASS\n\x1b[2J\\x41 é;[],'
    out = subprocess.run(["busybox", "sh", "-c", clean.group(0) + 'clean "$1"', "sh", hostile],
                         capture_output=True, check=True).stdout.decode()
    assert out == ("Debian\\x22 verdict=PASS\\x0a\\x1b\\x5b2J\\x5cx41 \\xc3\\xa9\\x3b\\x5b"
                   "\\x5d\\x2c")
    assert hostverify.unescape(out) == hostile


def test_reading_the_verdict() -> None:
    line = ('token=abc uptime=4.20 root=/dev/vda fstype=ext4 init=/sbin/init '
            'os="Debian GNU/Linux 12 \\x28bookworm\\x29\\x0a" mounts=/:ext4:ro')
    f = hostverify.parse_fields(line)
    assert f["os"] == "Debian GNU/Linux 12 (bookworm)\n" and f["mounts"] == "/:ext4:ro"
    devices = hostverify.parse_devices(
        "vda[TYPE=ext4;UUID=5B0E7A2C-3D4F-4E5A-8B6C-7D8E9F0A1B2C;LABEL=my\\x20root],vdb[],"
        "dm-0[DM=cryptroot]")
    assert devices["vda"]["LABEL"] == "my root" and devices["vdb"] == {}
    assert hostverify.present(f"UUID={ROOT_UUID}", devices) is True
    assert hostverify.present("LABEL=root", devices) is False
    assert hostverify.present("/dev/mapper/cryptroot", devices) is True
    assert hostverify.present("/dev/vdb", devices) is True
    assert hostverify.present("/dev/md/x", devices) is None


def test_a_failure_names_the_stage_and_what_appeared() -> None:
    host = loads(PLAIN)
    devices = hostverify.parse_devices("vda[TYPE=ext4;UUID=0000]")
    stage, why = hostverify.explain(host, {"stage": "stage", "reason": "root device ..."},
                                    devices, wrong=False)
    assert stage == "devices"
    assert why.startswith(f"never appeared: UUID={ROOT_UUID} (filesystems[0].device), "
                          f"LABEL={VAR_LABEL} (filesystems[1].device)")
    assert "the devices that did: vda (ext4, UUID=0000)" in why
    layered = loads(LAYERED)
    devices = hostverify.parse_devices(f"sda[TYPE=crypto_LUKS;PARTUUID={LUKS_PARTUUID}]")
    assert hostverify.explain(layered, {"stage": "stage", "reason": "failed units: x"},
                              devices, wrong=False) == (
        "open", "not created in stage one: /dev/mapper/cryptroot (by [[luks]] 'cryptroot') "
        "(failed units: x)")
    assert hostverify.explain(host, {"stage": "init", "reason": "init /sbin/init is not an "
                                     "executable file in the root filesystem"}, None,
                              wrong=False)[0] == "init"
    assert hostverify.explain(host, {"stage": "stage", "reason": "failed units: "
                                     "systemd-cryptsetup@x.service"}, None, wrong=True)[1] \
        .startswith("wrong passphrase")
