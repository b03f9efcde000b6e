"""`bootgen detect`: from captured systems (plain, LUKS, LVM, RAID, btrfs, booted in QEMU by
tools/capture-fixtures.py) and hand-built trees to a description the loader accepts, naming every
device stably, with the drivers of the disks; hostile names escaped; no secret in the output."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen.cli import main
from bootgen.description import loads
from bootgen.detect.describe import detect
from bootgen.detect.sysfs import scan
from bootgen.detect.tables import crypttab, fstab, mountinfo, udev_record
from bootgen.image import kmod

from .conftest import KVER
from .detect_trees import (
    HOSTILE_DIR,
    LUKS_UUID,
    Tree,
    available,
    captured,
    luks_lvm_tree,
    uplink,
)

LAYOUTS = available()


def _udev(tree: Path) -> dict[str, dict[str, str]]:
    return {p.name[1:]: udev_record(p.read_text()).properties
            for p in (tree / "run/udev/data").glob("b*")}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_captured_system_becomes_a_description_the_loader_accepts(layout: str,
                                                                    tmp_path: Path) -> None:
    tree = captured(layout, tmp_path / layout)
    r = detect(tree)
    host = loads(r.text, f"{layout}.toml")
    blocks = scan(tree)
    # every device reference names a device of the captured system, by a stable name
    refs = [fs.device for fs in host.filesystems]
    refs += [lk.device for lk in host.luks] + [d for md in host.raid for d in md.devices]
    refs += [d for vg in host.lvm for d in vg.devices] + [d for b in host.btrfs for d in b.devices]
    assert refs
    for ref in refs:
        assert blocks.find(ref) is not None, ref
        assert not ref.startswith(("/dev/vd", "/dev/sd", "/dev/dm-")), ref
    # the root is the device mounted on / in the capture
    root_devno = next(m.devno for m in mountinfo((tree / "proc/self/mountinfo").read_text())
                      if m.mountpoint == "/")
    root = blocks.find(host.root.device)
    assert root is not None
    if not root_devno.startswith("0:"):
        assert root.devno == root_devno
    # the disks' drivers, as modules of the kernel when it has them as modules
    if KVER is not None:
        for mod in ("virtio_blk", "virtio_pci"):
            if kmod.lookup(mod, KVER)[0] == "module":
                assert mod in host.kernel.modules
    # and the same tree finds nothing wrong with it
    assert _check(tree, r.text) == (0, [])


def _check(tree: Path, text: str) -> tuple[int, list[str]]:
    desc = tree.parent / f"{tree.name}-check.toml"
    desc.write_text(text)
    res = CliRunner().invoke(main, ["check", str(desc), "--host", "--root", str(tree)])
    lines = res.output.splitlines()
    return res.exit_code, [line.split(": ", 1)[1] for line in lines if "ok, and" not in line]


@pytest.mark.skipif("luks" not in LAYOUTS, reason="no luks capture")
def test_luks_is_named_by_its_uuid_with_crypttab_options(tmp_path: Path) -> None:
    tree = captured("luks", tmp_path / "luks")
    host = loads(detect(tree).text)
    [entry] = crypttab((tree / "etc/crypttab").read_text())
    [lk] = host.luks
    assert (lk.name, lk.device) == (entry.name, entry.device)
    assert lk.allow_discards == ("discard" in entry.options)
    assert host.root.device == f"/dev/mapper/{entry.name}"


@pytest.mark.skipif("lvm" not in LAYOUTS, reason="no lvm capture")
def test_lvm_volumes_and_their_physical_volumes(tmp_path: Path) -> None:
    tree = captured("lvm", tmp_path / "lvm")
    host = loads(detect(tree).text)
    udev = _udev(tree)
    lvs = {(p["DM_VG_NAME"], p["DM_LV_NAME"]) for p in udev.values() if "DM_LV_NAME" in p}
    assert {fs.device for fs in host.boot_filesystems} == {f"/dev/{vg}/{lv}" for vg, lv in lvs}
    pvs = {p["ID_PART_ENTRY_UUID"] for p in udev.values()
           if p.get("ID_FS_TYPE") == "LVM2_member"}
    assert [(vg.name, sorted(vg.devices)) for vg in host.lvm] == [
        (next(iter(lvs))[0], sorted(f"PARTUUID={u}" for u in pvs))]
    home = [e for e in fstab((tree / "etc/fstab").read_text()) if e.file != "/"]
    assert all(fs.needed_for_boot for fs in host.filesystems if fs.mountpoint != "/")
    assert {fs.mountpoint for fs in host.filesystems} == {"/"} | {e.file for e in home}


@pytest.mark.skipif("raid" not in LAYOUTS, reason="no raid capture")
def test_raid_by_its_uuid_and_members(tmp_path: Path) -> None:
    tree = captured("raid", tmp_path / "raid")
    host = loads(detect(tree).text)
    udev = _udev(tree)
    [md] = host.raid
    array = next(p for p in udev.values() if p.get("MD_DEVNAME"))
    assert (md.name, md.uuid, md.level) == (array["MD_DEVNAME"], array["MD_UUID"],
                                           array["MD_LEVEL"])
    members = {f"PARTUUID={p['ID_PART_ENTRY_UUID']}" for p in udev.values()
               if p.get("ID_FS_TYPE") == "linux_raid_member"}
    assert set(md.devices) == members and len(members) == 2
    assert host.root.device == f"/dev/md/{md.name}"


@pytest.mark.skipif("btrfs" not in LAYOUTS, reason="no btrfs capture")
def test_btrfs_over_two_devices_with_subvolumes(tmp_path: Path) -> None:
    tree = captured("btrfs", tmp_path / "btrfs")
    host = loads(detect(tree).text)
    [pool] = host.btrfs
    assert len(pool.devices) == 2
    profiles = {p.parent.name for p in tree.glob("sys/fs/btrfs/*/allocation/data/*/total_bytes")}
    assert profiles == {pool.profile}
    assert {fs.device for fs in host.filesystems} == {pool.filesystem}
    subvols = {fs.mountpoint: [o for o in fs.options if o.startswith("subvol=")]
               for fs in host.filesystems}
    expected = {e.file: [o for o in e.options if o.startswith("subvol=")]
                for e in fstab((tree / "etc/fstab").read_text())}
    assert subvols == expected and all(subvols.values())


# --- hand-built trees ---------------------------------------------------------------------------

def test_lvm_on_luks_with_a_keyfile_by_path_and_a_hostile_mount_point(tmp_path: Path) -> None:
    luks_lvm_tree(tmp_path)
    r = detect(tmp_path)
    assert "SECRET-KEY-MATERIAL" not in r.text
    data = tomllib.loads(r.text)
    assert data["luks"] == [{"name": "cryptlvm", "device": f"UUID={LUKS_UUID}",
                             "key_file": "/etc/keys/root key", "allow_discards": True,
                             "tries": 5, "options": ["no-read-workqueue"]}]
    assert data["lvm"] == [{"name": "vg-sys", "devices": ["/dev/mapper/cryptlvm"]}]
    assert data["filesystems"][0] == {"mountpoint": "/", "device": "/dev/vg-sys/root",
                                      "fstype": "ext4", "options": ["ro", "errors=remount-ro"]}
    # a mount point no generated file could carry as it is: left out, named in one warning line
    assert [fs["mountpoint"] for fs in data["filesystems"]] == ["/"]
    assert HOSTILE_DIR not in r.text
    assert data["boot"]["kernel_params"] == ["console=tty0", "console=ttyS0,115200"]
    assert set(data) == {"boot", "kernel", "luks", "lvm", "filesystems", "rescue"}
    assert len(r.warnings) == 1 and "left out" in r.warnings[0]
    assert r.warnings[0].startswith('/srv/we"ird \\dir\\n[boot]: left out:')
    assert "\n" not in r.warnings[0]
    loads(r.text)


def test_what_cannot_be_resolved_is_a_warning(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    t.disk("vda", 254)  # a whole-disk filesystem that udev knows nothing about
    t.mounts("254:0 / / rw - ext4 /dev/vda rw", "7:3 / /usr rw - ext4 /dev/loop3 rw",
             "254:0 / /opt rw - zfs tank/opt rw")
    t.write("etc/fstab", "/dev/vda / ext4 defaults 0 1\ntank/opt /opt zfs x-initrd.mount 0 0\n"
            "/dev/vdz /data ext4 x-initrd.mount 0 2\n")
    r = detect(tmp_path)
    text = "\n".join(r.warnings)
    assert "/dev/vda has no stable name" in text
    assert "/usr: its device /dev/loop3 (7:3) is not found" in text
    assert "'zfs' is not one bootgen mounts" in text
    assert "/data: in /etc/fstab with x-initrd.mount but not mounted" in text
    host = loads(r.text)
    assert [fs.device for fs in host.filesystems] == ["/dev/vda"]


def test_cli_writes_atomically_and_never_replaces_without_force(tmp_path: Path) -> None:
    luks_lvm_tree(tmp_path / "tree", keyfile=None)
    out = tmp_path / "host.toml"
    run = CliRunner()
    res = run.invoke(main, ["detect", "--root", str(tmp_path / "tree"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    first = out.read_text()
    loads(first)
    out.write_text("# reviewed by hand\n")
    res = run.invoke(main, ["detect", "--root", str(tmp_path / "tree"), "-o", str(out)])
    assert res.exit_code == 2 and "exists" in res.output and "--force" in res.output
    assert out.read_text() == "# reviewed by hand\n"
    res = run.invoke(main, ["detect", "--root", str(tmp_path / "tree"), "-o", str(out),
                            "--force"])
    assert res.exit_code == 0 and out.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.toml", "tree"]  # no temp left
    res = run.invoke(main, ["detect", "--root", str(tmp_path / "tree")])
    assert res.exit_code == 0 and res.stdout == first
    assert "no /etc/crypttab" not in res.output


def test_no_crypttab_line_asks_for_a_passphrase_with_a_warning(tmp_path: Path) -> None:
    luks_lvm_tree(tmp_path, keyfile=None)
    (tmp_path / "etc/crypttab").unlink()
    r = detect(tmp_path)
    assert any("/dev/mapper/cryptlvm: no /etc/crypttab line" in w for w in r.warnings)
    assert tomllib.loads(r.text)["luks"] == [{"name": "cryptlvm",
                                              "device": f"UUID={LUKS_UUID}"}]


def test_without_a_udev_database_the_probe_names_the_device(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    t.disk("vda", 254)
    (tmp_path / "run/udev/data/b254:0").unlink()
    t.mounts("254:0 / / rw - ext4 /dev/vda rw")
    probed: list[str] = []

    def probe(node: str) -> dict[str, str]:
        probed.append(node)
        return {"ID_FS_TYPE": "ext4", "ID_FS_UUID": "236b6d23-3fe4-4c6d-bec6-78a15018ee8c"}

    r = detect(tmp_path, probe=probe)
    assert probed == ["/dev/vda"]
    assert loads(r.text).root.device == "UUID=236b6d23-3fe4-4c6d-bec6-78a15018ee8c"
    assert r.warnings == ()


def test_a_driver_without_a_module_is_built_in_and_not_listed(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    t.disk("vda", 254, {"ID_FS_TYPE": "ext4", "ID_FS_UUID": "1234-abcd"})
    (tmp_path / "sys/bus/pci/drivers/virtio-pci/module").unlink()
    t.mounts("254:0 / / rw - ext4 /dev/vda rw")
    r = detect(tmp_path)
    assert "virtio_pci" not in loads(r.text).kernel.modules
    assert "# built into the running kernel: virtio-pci" in r.text.splitlines()
    assert r.warnings == ()


def test_with_luks_a_commented_network_for_ssh_unlock(tmp_path: Path) -> None:
    t = luks_lvm_tree(tmp_path, keyfile=None)
    uplink(t)
    text = detect(tmp_path).text
    assert "# To unlock LUKS over SSH, uncomment and review (default route via en\"p1s0, " \
        "gateway 10.0.2.2):" in text.splitlines()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "To unlock" in line) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("# and add"))
    live = tomllib.loads("\n".join(line.removeprefix("#").strip() for line in lines[start:end]))
    assert live["network"]["interfaces"] == [{"mac": "52:54:00:12:34:56", "dhcp": True}]
    assert "# and add virtio_net (driver of en\"p1s0) to kernel.available_modules" in text
    assert "[network]" not in tomllib.loads(text)  # only a suggestion
    (tmp_path / "etc/crypttab").unlink()
    for p in (tmp_path / "sys/class/block").iterdir():
        if p.name.startswith("dm-"):
            p.unlink()
    (tmp_path / "proc/self/mountinfo").write_text("20 1 263:1 / / rw - xfs /dev/vdb1 rw\n")
    assert "To unlock" not in detect(tmp_path).text  # no LUKS, no suggestion
