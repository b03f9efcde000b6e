"""Storage features without booting: the description's checks, what each flavour carries, the
generated shell (sh -n, shellcheck), the generators' command-line handling, and the plans of
the stacked test disks and their job script."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bootgen.description import loads
from bootgen.errors import BuildError, DescriptionError
from bootgen.image.build import build
from bootgen.image.plan import plan
from bootgen.vm.stack import needs_helper, plan_stack
from bootgen.vm.stackbuild import job_modules, job_script

from .conftest import EXAMPLES, needs_kernel, needs_tool, unpack_image
from .test_storage_boot import LUKS_ON_LVM, LVM_ON_LUKS, LVM_RAID_LUKS, LVM_XFS, RESUME_PLAIN

STORAGE = {name: (EXAMPLES / f"{name}.toml").read_text()
           for name in ("lvm", "raid", "btrfs", "resume")}
ROOT = """
[[filesystems]]
mountpoint = "/"
device = "{device}"
fstype = "ext4"
"""


def errors(text: str) -> list[str]:
    with pytest.raises(DescriptionError) as e:
        loads(text, "host.toml")
    return e.value.format().splitlines()


# --- the description -------------------------------------------------------------------------


BAD = [
    (ROOT.format(device="/dev/vgx/root"),
     "error: host.toml: filesystems[0].device: '/dev/vgx/root' names volume group 'vgx', which "
     "no [[lvm]] entry describes (hint: add [[lvm]] with name = \"vgx\" and its devices)"),
    ("[[lvm]]\nname = 'vg0'\ndevices = ['PARTLABEL=pv']\n" + ROOT.format(device="/dev/vg1/root"),
     "error: host.toml: filesystems[0].device: '/dev/vg1/root' names volume group 'vg1', which "
     "no [[lvm]] entry describes (hint: did you mean '/dev/vg0/root'?)"),
    ("[[lvm]]\nname = '-bad'\ndevices = ['PARTLABEL=pv']\n" + ROOT.format(device="LABEL=r"),
     "error: host.toml: lvm[0].name: '-bad' is not an LVM volume group name (hint: letters, "
     "digits and '+_.-', not starting with '-')"),
    ("[[lvm]]\nname = 'vg0'\n" + ROOT.format(device="/dev/vg0/root"),
     "error: host.toml: lvm[0].devices: no physical volume is given (hint: list the devices "
     "that hold the volume group)"),
    (ROOT.format(device="/dev/md/root"),
     "error: host.toml: filesystems[0].device: no [[raid]] entry makes /dev/md/root (hint: "
     "describe the array with [[raid]] (name = the part after /dev/md/))"),
    ("[[raid]]\nname = 'r'\nuuid = 'xyz'\ndevices = ['PARTLABEL=a', 'PARTLABEL=b']\n"
     + ROOT.format(device="/dev/md/r"),
     "error: host.toml: raid[0].uuid: 'xyz' is not an md array UUID (hint: as mdadm --detail "
     "prints it (8:8:8:8 hex digits) or as blkid does)"),
    ("[[raid]]\nname = 'r'\nuuid = '11111111:22222222:33333333:44444444'\n"
     "devices = ['PARTLABEL=a']\n" + ROOT.format(device="/dev/md/r"),
     "error: host.toml: raid[0].devices: raid1 needs at least 2 devices (hint: list every "
     "member device)"),
    ("[[raid]]\nname = 'r'\nuuid = '11111111:22222222:33333333:44444444'\n"
     "devices = ['PARTLABEL=a', 'PARTLABEL=b']\ndegraded_timeout = 30\n"
     + ROOT.format(device="/dev/md/r"),
     "error: host.toml: raid[0].degraded_timeout: 30 s leaves too little of "
     "boot.device_timeout (30 s) to start the array degraded (hint: use at most 15 here, or "
     "raise boot.device_timeout)"),
    ("[[btrfs]]\nfilesystem = 'LABEL=pool'\ndevices = ['PARTLABEL=a', 'PARTLABEL=b']\n"
     + ROOT.format(device="LABEL=root"),
     "error: host.toml: btrfs[0].filesystem: no [[filesystems]] entry is on LABEL=pool"),
    ("[boot]\nresume_device = 'swap'\n" + ROOT.format(device="LABEL=root"),
     "error: host.toml: boot.resume_device: 'swap' is not a device reference (hint: use "
     "/dev/..., LABEL=, UUID=, PARTUUID= or PARTLABEL=)"),
    ("[[luks]]\nname = 'c'\ndevice = '/dev/vg0/crypt'\n"
     + ROOT.format(device="/dev/mapper/c"),
     "error: host.toml: luks[0].device: '/dev/vg0/crypt' names volume group 'vg0', which no "
     "[[lvm]] entry describes (hint: add [[lvm]] with name = \"vg0\" and its devices)"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1].split(": ")[2][:40] for b in BAD])
def test_storage_description_errors(text: str, expected: str) -> None:
    assert expected in errors(text)


def test_stacked_devices_are_known_to_other_checks() -> None:
    """/dev/mapper/vg-lv is an LV, not a missing [[luks]] entry; LUKS on an LV is fine."""
    for text in (LVM_ON_LUKS, LUKS_ON_LVM, LVM_RAID_LUKS, LVM_XFS, *STORAGE.values()):
        loads(text)


# --- what the flavours carry -------------------------------------------------------------


def spec_paths(text: str, flavor: str) -> dict[str, str]:
    spec = plan(loads(text), flavor=flavor, kver="k")
    out = {g.path: g.feature for g in spec.generated}
    out |= {f.target or f.source: f.feature for f in spec.files}
    out |= {p.name: p.feature for p in spec.programs}
    return out


def test_systemd_flavour_uses_the_upstream_rules() -> None:
    lvm = spec_paths(LVM_XFS, "systemd")
    for path in ("/usr/lib/udev/rules.d/69-lvm.rules", "/usr/lib/udev/rules.d/56-lvm.rules",
                 "/usr/lib/udev/rules.d/95-dm-notify.rules", "/usr/sbin/lvm",
                 "/usr/bin/systemd-run", "/etc/lvm/lvm.conf",
                 "/usr/lib/systemd/system-generators/bootgen-lvm-generator"):
        assert lvm[path] == "lvm", path
    raid = spec_paths(STORAGE["raid"], "systemd")
    for path in ("/usr/lib/udev/rules.d/64-md-raid-assembly.rules", "/etc/mdadm/mdadm.conf",
                 "/usr/lib/systemd/system/mdadm-last-resort@.timer",
                 "/usr/lib/systemd/system/mdadm-last-resort@.timer.d/bootgen.conf"):
        assert raid[path] == "mdraid", path
    btrfs = spec_paths(STORAGE["btrfs"], "systemd")
    assert btrfs["/usr/lib/systemd/system/systemd-udev-trigger.service.d/bootgen-btrfs.conf"] \
        == "btrfs"
    resume = spec_paths(STORAGE["resume"], "systemd")
    assert resume["/usr/lib/systemd/system-generators/systemd-hibernate-resume-generator"] \
        == "resume"


def test_lvm_conf_activates_the_described_groups_only() -> None:
    spec = plan(loads(LVM_XFS), flavor="scripted", kver="k")
    conf = next(g.content for g in spec.generated if g.path == "/etc/lvm/lvm.conf") or b""
    assert b'auto_activation_volume_list = [ "vg0" ]' in conf
    assert b"use_devicesfile = 0" in conf and b"udev_sync = 0" in conf  # scripted: no udev
    spec = plan(loads(LVM_XFS), flavor="systemd", kver="k")
    conf = next(g.content for g in spec.generated if g.path == "/etc/lvm/lvm.conf") or b""
    assert b"udev_sync = 1" in conf


def test_scripted_storage_hooks_open_the_stack_bottom_up() -> None:
    spec = plan(loads(LVM_RAID_LUKS), flavor="scripted", kver="k")
    order = [h.feature for h in spec.hooks if h.point == "pre-mount"]
    assert order == ["luks", "mdraid", "lvm"]
    spec = plan(loads(LUKS_ON_LVM), flavor="scripted", kver="k")
    assert [h.feature for h in spec.hooks if h.point == "pre-mount"] == ["lvm", "luks"]
    spec = plan(loads(STORAGE["resume"]), flavor="scripted", kver="k")
    assert [h.feature for h in spec.hooks if h.point == "pre-mount"] == ["luks", "resume"]


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every storage description, both flavours, built (uncompressed: fast) and unpacked."""
    out = {}
    texts = {**STORAGE, "luks-on-lvm": LUKS_ON_LVM, "test26": LVM_RAID_LUKS}
    for name, text in texts.items():
        for flavor in ("scripted", "systemd"):
            tmp = tmp_path_factory.mktemp(f"{name}-{flavor}")
            host = loads(text.replace("[boot]", '[boot]\ncompression = "none"', 1))
            build(host, output=tmp / "i.img", flavor=flavor)
            out[f"{name}-{flavor}"] = unpack_image(tmp / "i.img", tmp / "root")
    return out


@needs_kernel
@needs_tool("shellcheck")
def test_generated_shell_passes_shellcheck(unpacked: dict[str, Path]) -> None:
    scripts = [root / "init" for key, root in unpacked.items() if key.endswith("scripted")]
    scripts += [p for key, root in unpacked.items() if key.endswith("systemd")
                for p in (root / "usr/lib/systemd/system-generators").glob("bootgen-*")]
    assert len(scripts) >= 12
    for script in scripts:
        subprocess.run(["busybox", "sh", "-n", script], check=True)
        res = subprocess.run(["shellcheck", "-s", "sh", script], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}:\n{res.stdout}"


def run_generator(root: Path, name: str, cmdline: str, tmp_path: Path, conf: str) -> str:
    """Run a generator of the image on this machine against a copy of its config file."""
    gen = (root / "usr/lib/systemd/system-generators" / name).read_text()
    copy = tmp_path / "conf"
    shutil.copy(root / conf.lstrip("/"), copy)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    script = tmp_path / name
    script.write_text(gen.replace("/proc/cmdline", str(tmp_path / "cmdline"))
                      .replace(conf, str(copy)))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    subprocess.run(["busybox", "sh", script, out], check=True)
    return copy.read_text()


@needs_kernel
def test_lvm_generator_honours_rd_lvm(unpacked: dict[str, Path], tmp_path: Path) -> None:
    root = unpacked["lvm-systemd"]

    def listed(cmdline: str) -> str:
        conf = run_generator(root, "bootgen-lvm-generator", cmdline, tmp_path, "/etc/lvm/lvm.conf")
        return next(line.strip() for line in conf.splitlines() if "auto_activation" in line)

    assert listed("quiet") == 'auto_activation_volume_list = [ "vg0" ]'
    assert listed("rd.lvm.vg=other rd.lvm.lv=vg0/root") == \
        'auto_activation_volume_list = [ "other", "vg0/root" ]'
    assert listed("rd.lvm=0") == "auto_activation_volume_list = [   ]"


@needs_kernel
def test_md_generator_honours_rd_md(unpacked: dict[str, Path], tmp_path: Path) -> None:
    root = unpacked["raid-systemd"]

    def arrays(cmdline: str) -> list[str]:
        conf = run_generator(root, "bootgen-md-generator", cmdline, tmp_path,
                             "/etc/mdadm/mdadm.conf")
        return [line for line in conf.splitlines() if line.startswith("ARRAY")]

    whole = ["ARRAY /dev/md/root UUID=3f2c2a5e:8a4b1c9d:0e6f7a8b:9c0d1e2f"]
    assert arrays("quiet") == whole
    assert arrays("rd.md.uuid=3f2c2a5e-8a4b-1c9d-0e6f-7a8b9c0d1e2f") == whole
    assert arrays("rd.md.uuid=00000000:00000000:00000000:00000000") == []
    assert arrays("rd.md=0") == []


# --- the stacked test disks ----------------------------------------------------------------


def test_needs_helper() -> None:
    assert not needs_helper(loads((EXAMPLES / "luks.toml").read_text()))
    for text in (*STORAGE.values(), LVM_ON_LUKS, LUKS_ON_LVM):
        assert needs_helper(loads(text))


def test_plan_of_lvm_on_raid_on_luks() -> None:
    stack = plan_stack(loads(LVM_RAID_LUKS))
    assert [d.id for d in stack.disks] == ["d0", "d1"]
    assert [(la.kind, la.name) for la in stack.layers] == [
        ("luks", "crypt-a"), ("luks", "crypt-b"), ("md", "sys"), ("vg", "vg3")]
    md = next(la for la in stack.layers if la.kind == "md")
    assert md.on == ("luks_crypt_a", "luks_crypt_b") and md.uuid == \
        "12121212:34343434:56565656:78787878"
    root = stack.device("lv_vg3_root")
    assert root.content.fstype == "ext4" and root.ref == "/dev/vg3/root"
    # every layer is large enough for what it holds
    assert stack.device("md_sys").size_mb >= root.size_mb
    assert stack.device("luks_crypt_a").size_mb >= stack.device("md_sys").size_mb


def test_plan_of_luks_on_lvm_and_btrfs_pool() -> None:
    stack = plan_stack(loads(LUKS_ON_LVM))
    assert [(la.kind, la.name) for la in stack.layers] == [("vg", "vg2"), ("luks", "cryptroot")]
    assert stack.layers[1].on == ("lv_vg2_crypt",)
    pool = plan_stack(loads(STORAGE["btrfs"])).layers[0]
    assert (pool.kind, pool.label, pool.level) == ("pool", "pool", "raid1")
    assert pool.content is not None
    assert [(m.mountpoint, m.subvolume) for m in pool.content.mounts] == [
        ("/", "@root"), ("/home", "@home")]


def test_plan_refuses_what_it_cannot_build() -> None:
    text = LVM_XFS.replace('device = "/dev/vg0/srv"', 'device = "/dev/vg0/home"')
    with pytest.raises(BuildError, match="is the device of both '/home' and '/srv'"):
        plan_stack(loads(text))
    text = STORAGE["raid"].replace('"PARTLABEL=raid-b"', '"LABEL=raid-b"')
    with pytest.raises(BuildError, match="a md member is found by its partition or disk"):
        plan_stack(loads(text))


@pytest.mark.parametrize("text", [LVM_RAID_LUKS, LUKS_ON_LVM, LVM_ON_LUKS, LVM_XFS,
                                  RESUME_PLAIN, *STORAGE.values()])
def test_job_script_parses(text: str, tmp_path: Path) -> None:
    stack = plan_stack(loads(text))
    script = tmp_path / "job.sh"
    script.write_text(job_script(stack, {}, {}))
    subprocess.run(["busybox", "sh", "-n", script], check=True)
    body = script.read_text()
    for tool in ("lvm", "mdadm", "cryptsetup", "mkswap", "mke2fs", "mkfs.xfs", "sfdisk"):
        assert f" {tool} " not in f" {body} ", tool  # only by absolute path
    assert "ext4" in job_modules(stack)
