"""Test disks: layout planning (pure), real image builds (e2fsprogs, sfdisk) and the test root's
init script run on the host against a fake /proc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bootgen import description as config
from bootgen.config.schema import Host
from bootgen.errors import BuildError
from bootgen.vm import disks
from bootgen.vm.diskbuild import build_disks
from bootgen.vm.disks import BuiltDisk, DiskSpec, FsImage, Partition, plan_disks

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "qemu" / "testroot-init.sh"
HEAD = '[kernel]\nmodules = ["virtio_blk"]\n'
U1 = "0b3f1c2a-5d6e-4f70-8a9b-0c1d2e3f4a5b"
U2 = "c0ffee00-1234-4abc-9def-0123456789ab"


def host(*filesystems: str, luks: str = "") -> Host:
    text = HEAD + luks + "".join(f"[[filesystems]]\n{f}\n" for f in filesystems)
    return config.loads(text)


def fs(mountpoint: str, device: str, fstype: str = "ext4", boot: bool = False) -> str:
    nfb = "needed_for_boot = true\n" if boot else ""
    return f'mountpoint = "{mountpoint}"\ndevice = "{device}"\nfstype = "{fstype}"\n{nfb}'


def whole(name: str, guest: str, image: FsImage, luks: str | None = None) -> DiskSpec:
    size = image.size_mb + (16 if luks else 0)
    return DiskSpec(name=name, table="none", size_mb=size, serial=f"bootgen-{name}",
                    guest_name=guest,
                    partitions=(Partition(0, None, None, size, image, luks),))


ROOT = FsImage("ext4", "root", None, "/", 64, "testroot")


# --- planning ----------------------------------------------------------------------------------


def test_plan_minimal_example() -> None:
    h = config.load(REPO / "examples" / "minimal.toml")
    assert plan_disks(h) == (whole("disk0", "/dev/vda", ROOT),)


def test_plan_uuid_whole_disk() -> None:
    (d,) = plan_disks(host(fs("/", f"UUID={U1}")))
    assert d.table == "none" and d.size_mb == 64
    assert d.partitions[0].fs == FsImage("ext4", None, U1, "/", 64, "testroot")


def test_plan_partuuid_makes_gpt() -> None:
    (d,) = plan_disks(host(fs("/", f"PARTUUID={U2}")))
    assert d.table == "gpt"
    assert d.size_mb == 64 + 2
    (p,) = d.partitions
    assert (p.number, p.uuid, p.name, p.size_mb) == (1, U2, None, 64)
    assert p.fs == FsImage("ext4", None, None, "/", 64, "testroot")


def test_plan_partlabel_and_by_label_paths() -> None:
    d0, d1 = plan_disks(host(fs("/", "PARTLABEL=system"),
                             fs("/srv", "/dev/disk/by-label/my\\\\x2fdata")))
    assert d0.table == "gpt" and d0.partitions[0].name == "system"
    assert d0.partitions[0].number == 1
    assert d1.table == "none" and d1.guest_name == "/dev/vdb"
    assert d1.partitions[0].fs == FsImage("ext4", "my/data", None, "/srv", 16, "marker")


def test_plan_positions_are_honoured() -> None:
    specs = plan_disks(host(fs("/", "LABEL=root"), fs("/var", "/dev/vda", boot=True),
                            fs("/home", "/dev/vdc2"), fs("/opt", "/dev/vdc1")))
    assert [(d.name, d.guest_name, d.table) for d in specs] == [
        ("disk0", "/dev/vda", "none"), ("disk1", "/dev/vdb", "none"),
        ("disk2", "/dev/vdc", "gpt")]
    assert specs[0].partitions[0].fs == FsImage("ext4", None, None, "/var", 16, "marker")
    assert specs[1].partitions[0].fs == ROOT
    gpt = specs[2]
    assert [(p.number, p.fs.mountpoint if p.fs else None) for p in gpt.partitions] == [
        (1, "/opt"), (2, "/home")]
    assert gpt.size_mb == 16 + 16 + 2


def test_plan_fills_gaps_with_empty_disks() -> None:
    specs = plan_disks(host(fs("/", "/dev/vdc")))
    assert [d.partitions for d in specs[:2]] == [(), ()]
    assert specs[2].partitions[0].fs == FsImage("ext4", None, None, "/", 64, "testroot")


def test_plan_second_boot_filesystem_and_expected() -> None:
    h = host(fs("/", "LABEL=root"), fs("/var", "LABEL=var", boot=True), fs("/srv", "LABEL=srv"),
             'mountpoint = "/tmp"\ndevice = "/dev/null"\nfstype = "tmpfs"\n'
             "needed_for_boot = true\n")
    specs = plan_disks(h)
    assert [d.partitions[0].fs.label for d in specs if d.partitions[0].fs] == [
        "root", "var", "srv"]
    assert disks.expected_mounts(h) == ("/ ext4", "/tmp tmpfs", "/var ext4")


def test_plan_luks_containers() -> None:
    lk = ('[[luks]]\nname = "cryptroot"\ndevice = "PARTLABEL=cryptroot"\n'
          f'[[luks]]\nname = "data"\ndevice = "UUID={U1}"\n'
          '[[luks]]\nname = "swap"\ndevice = "/dev/vdc"\n')
    specs = plan_disks(host(fs("/", "/dev/mapper/cryptroot"), fs("/data", "/dev/mapper/data"),
                            luks=lk))
    d0, d1, d2 = specs
    (p,) = d0.partitions
    assert (d0.table, p.number, p.name, p.luks, p.size_mb) == ("gpt", 1, "cryptroot",
                                                               "cryptroot", 64 + 16)
    assert p.fs == FsImage("ext4", None, None, "/", 64, "testroot")
    assert d1.table == "none" and d1.partitions[0].luks_uuid == U1
    assert d1.partitions[0].fs is not None and d1.partitions[0].fs.uuid is None
    assert d2.guest_name == "/dev/vdc" and d2.partitions[0].fs is None
    assert d2.partitions[0].luks == "swap"


def test_plan_luks_example() -> None:
    (d,) = plan_disks(config.load(REPO / "examples" / "luks.toml"))
    assert d.partitions[0].luks == "cryptroot" and d.partitions[0].name == "cryptroot"


@pytest.mark.parametrize(("filesystems", "message"), [
    ((fs("/", "/dev/vda"), fs("/var", "/dev/vda")),
     "/dev/vda is given to '/' as a whole disk and to '/var' as a whole disk"),
    ((fs("/", "/dev/vda"), fs("/var", "/dev/vda2")),
     "/dev/vda is given to '/' as a whole disk and to '/var' but /dev/vda2 too"),
    ((fs("/", "/dev/vdb1"), fs("/var", "/dev/vdb1")),
     "/dev/vdb1 is the device of both '/' and '/var'"),
    ((fs("/", "LABEL=x"), fs("/var", "/dev/disk/by-label/x")),
     "LABEL=x is the device of both '/' and '/var'"),
    ((fs("/", "/dev/sda1"),), "'/': cannot place '/dev/sda1' on a test disk"),
    ((fs("/", "PARTUUID=0a1b2c3d-01"),),
     "'/': '0a1b2c3d-01' is not a GPT partition UUID"),
    ((fs("/", "LABEL=a-very-long-label-indeed"),),
     "'/': label 'a-very-long-label-indeed' is too long for ext4"),
])
def test_plan_contradictions(filesystems: tuple[str, ...], message: str) -> None:
    with pytest.raises(BuildError) as e:
        plan_disks(host(*filesystems))
    assert e.value.message == message
    assert e.value.hint


def test_plan_two_filesystems_on_one_mapper() -> None:
    lk = '[[luks]]\nname = "c"\ndevice = "LABEL=c"\n'
    with pytest.raises(BuildError, match=r"^'/var' and '/' are both on /dev/mapper/c$"):
        plan_disks(host(fs("/", "/dev/mapper/c"), fs("/var", "/dev/mapper/c"), luks=lk))


# --- building ----------------------------------------------------------------------------------

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) or os.path.exists(f"/usr/sbin/{t}")
            for t in ("mke2fs", "debugfs", "sfdisk", "blkid", "busybox")),
    reason="e2fsprogs, util-linux and busybox are needed")


def sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def probe(path: Path, offset: int = 0) -> dict[str, str]:
    out = subprocess.run([sbin("blkid"), "-p", "-O", str(offset), "-o", "export", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def cat(image: Path, path: str) -> str:
    return cat_bytes(image, path).decode()


def cat_bytes(image: Path, path: str) -> bytes:
    proc = subprocess.run([sbin("debugfs"), "-R", f"cat {path}", str(image)],
                          capture_output=True, check=True)
    return proc.stdout


def extract(disk: BuiltDisk, number: int, dest: Path) -> Path:
    """The bytes of one partition, as a file debugfs can open."""
    start = 1 + sum(p.size_mb for p in disk.spec.partitions if p.number < number)
    size = next(p.size_mb for p in disk.spec.partitions if p.number == number)
    with open(disk.path, "rb") as fi, open(dest, "wb") as fo:
        fi.seek(start << 20)
        fo.write(fi.read(size << 20))
    return dest


@needs_tools
def test_build_minimal_cold_and_warm(tmp_path: Path) -> None:
    h = config.load(REPO / "examples" / "minimal.toml")
    messages: list[str] = []
    built, root = build_disks(h, tmp_path / "work", cache_dir=tmp_path / "cache",
                              progress=messages.append)
    assert messages == ["building disk0 (ext4 LABEL=root, 64 MiB)"]
    (d,) = built
    assert d.spec == plan_disks(h)[0] and d.path.stat().st_size == 64 << 20
    assert d.path.parent.parent == tmp_path / "cache"
    info = probe(d.path)
    assert (info["TYPE"], info["LABEL"]) == ("ext4", "root")
    assert info["UUID"] == disks.fs_uuid(d.spec, d.spec.partitions[0])
    assert root.expected == ("/ ext4",)
    assert cat(d.path, "/etc/bootgen-expected") == "/ ext4\n"
    assert cat(d.path, "/etc/bootgen-disk-id") == root.disk_id + "\n"
    assert "ID=bootgen-testroot" in cat(d.path, "/etc/os-release")
    assert cat(d.path, "/sbin/init").encode() == SCRIPT.read_bytes()
    assert cat(d.path, "/sbin/altinit").encode() == SCRIPT.read_bytes()
    assert cat_bytes(d.path, "/bin/busybox") == disks.find_busybox().read_bytes()
    listing = subprocess.run([sbin("debugfs"), "-R", "ls -l /bin", str(d.path)],
                             capture_output=True, text=True, check=True).stdout
    assert " sh" in listing and "busybox" in listing
    stat = subprocess.run([sbin("debugfs"), "-R", "stat /sbin/init", str(d.path)],
                          capture_output=True, text=True, check=True).stdout
    assert "User:     0   Group:     0" in stat and "Mode:  0755" in stat
    for name in ("proc", "sys", "dev", "run", "tmp"):
        assert f" {name}\n" in subprocess.run(
            [sbin("debugfs"), "-R", "ls -l /", str(d.path)], capture_output=True, text=True,
            check=True).stdout
    # warm: same paths, nothing rebuilt, fast
    mtime = d.path.stat().st_mtime_ns
    t0 = time.monotonic()
    again, root2 = build_disks(h, tmp_path / "work", cache_dir=tmp_path / "cache",
                               progress=messages.append)
    assert time.monotonic() - t0 < 1.0
    assert messages == ["building disk0 (ext4 LABEL=root, 64 MiB)"]
    assert again == built and root2 == root and d.path.stat().st_mtime_ns == mtime
    assert not os.access(d.path, os.W_OK) or os.geteuid() == 0  # read-only for non-root
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


@needs_tools
def test_build_is_byte_reproducible(tmp_path: Path) -> None:
    h = host(fs("/", f"PARTUUID={U2}"), fs("/var", "LABEL=var", boot=True))
    a, ra = build_disks(h, tmp_path / "w1", cache_dir=tmp_path / "c1")
    time.sleep(1.1)  # a different second: timestamps must not leak in
    b, rb = build_disks(h, tmp_path / "w2", cache_dir=tmp_path / "c2")
    assert ra == rb
    for x, y in zip(a, b, strict=True):
        assert x.path.read_bytes() == y.path.read_bytes(), x.spec.name


@needs_tools
def test_build_gpt_and_markers(tmp_path: Path) -> None:
    h = host(fs("/", f"PARTUUID={U2}"), fs("/var", "/dev/vdb2", boot=True),
             fs("/var/log", "/dev/vdb1", boot=True), fs("/srv", f"UUID={U1}"),
             fs("/boot", "PARTLABEL=boot"))
    built, root = build_disks(h, tmp_path / "work", cache_dir=tmp_path / "cache")
    assert [d.spec.guest_name for d in built] == ["/dev/vda", "/dev/vdb", "/dev/vdc",
                                                  "/dev/vdd"]
    assert root.expected == ("/ ext4", "/var ext4", "/var/log ext4")
    rootdisk, vdb, srv, boot = built
    table = json.loads(subprocess.run([sbin("sfdisk"), "--json", str(rootdisk.path)],
                                      capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["id"] == disks.table_id(rootdisk.spec).upper()
    (p,) = table["partitions"]
    assert (p["start"], p["size"], p["uuid"]) == (2048, 64 << 11, U2.upper())
    assert p["type"] == disks.LINUX_FS_GUID
    info = probe(rootdisk.path, 1 << 20)
    assert info["TYPE"] == "ext4" and "LABEL" not in info
    img = extract(rootdisk, 1, tmp_path / "root.fs")
    assert cat(img, "/etc/bootgen-expected") == "/ ext4\n/var ext4\n/var/log ext4\n"
    for mp in ("/var", "/srv", "/boot"):
        assert "Type: directory" in subprocess.run(
            [sbin("debugfs"), "-R", f"stat {mp}", str(img)], capture_output=True, text=True,
            check=True).stdout
    # /dev/vdb: partition 1 holds /var/log, partition 2 /var (which has the log directory)
    parts = json.loads(subprocess.run([sbin("sfdisk"), "--json", str(vdb.path)],
                                      capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    assert [(q["node"][-1], q["start"]) for q in parts] == [("1", 2048), ("2", 2048 + (16 << 11))]
    assert [q["uuid"] for q in parts] == [disks.part_uuid(vdb.spec, q).upper()
                                          for q in vdb.spec.partitions]
    log = extract(vdb, 1, tmp_path / "log.fs")
    var = extract(vdb, 2, tmp_path / "var.fs")
    assert cat(log, "/bootgen-marker") == "/var/log\n"
    assert cat(var, "/bootgen-marker") == "/var\n"
    assert "Type: directory" in subprocess.run([sbin("debugfs"), "-R", "stat /log", str(var)],
                                               capture_output=True, text=True).stdout
    assert probe(srv.path)["UUID"] == U1 and cat(srv.path, "/bootgen-marker") == "/srv\n"
    boot_table = json.loads(subprocess.run([sbin("sfdisk"), "--json", str(boot.path)],
                                           capture_output=True, text=True, check=True).stdout)
    assert boot_table["partitiontable"]["partitions"][0]["name"] == "boot"
    assert probe(boot.path, 1 << 20)["TYPE"] == "ext4"


@needs_tools
def test_build_btrfs(tmp_path: Path) -> None:
    if not shutil.which("mkfs.btrfs") and not os.path.exists("/usr/sbin/mkfs.btrfs"):
        with pytest.raises(BuildError, match="not supported by the test-disk builder yet"):
            build_disks(host(fs("/", "LABEL=r", "btrfs")), tmp_path, cache_dir=tmp_path / "c")
        return
    (d,), _ = build_disks(host(fs("/", "LABEL=r", "btrfs")), tmp_path / "w",
                          cache_dir=tmp_path / "c")
    info = probe(d.path)
    assert (info["TYPE"], info["LABEL"]) == ("btrfs", "r") and d.spec.size_mb == 128


@needs_tools
def test_build_replaces_an_incomplete_cache_entry(tmp_path: Path) -> None:
    h = host(fs("/", "LABEL=root"), fs("/var", "LABEL=var", boot=True))
    built, _ = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c")
    built[1].path.unlink()
    messages: list[str] = []
    again, _ = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c", progress=messages.append)
    assert again == built and built[1].path.is_file() and len(messages) == 2
    assert [p.name for p in (tmp_path / "c").iterdir()] == [built[0].path.parent.name]


def test_build_wants_a_static_busybox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTGEN_BUSYBOX", "/bin/ls")
    with pytest.raises(BuildError, match="^/bin/ls is dynamically linked"):
        build_disks(host(fs("/", "LABEL=r")), tmp_path, cache_dir=tmp_path / "c")


def test_build_refuses_unsupported(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"^xfs \('/'\) is not supported by the test-disk "):
        build_disks(host(fs("/", "LABEL=r", "xfs")), tmp_path, cache_dir=tmp_path / "c")
    lk = '[[luks]]\nname = "c"\ndevice = "LABEL=c"\n'
    with pytest.raises(BuildError, match=r"^xfs \('/'\) is not supported by the test-disk "):
        build_disks(host(fs("/", "/dev/mapper/c", "xfs"), luks=lk), tmp_path,
                    cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


@needs_tools
def test_build_concurrently_into_one_cache(tmp_path: Path) -> None:
    h = host(fs("/", "LABEL=root"), fs("/var", "PARTLABEL=var", boot=True))
    results: list[object] = []

    def work(i: int) -> None:
        try:
            results.append(build_disks(h, tmp_path / f"w{i}", cache_dir=tmp_path / "cache"))
        except Exception as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, tuple) for r in results), results
    assert results[0] == results[1] == results[2]
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    for d in results[0][0]:  # type: ignore[index]
        assert d.path.is_file()


# --- the test root's init ----------------------------------------------------------------------


def test_shellcheck() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    subprocess.run(["shellcheck", "-s", "sh", str(SCRIPT)], check=True)


def fake_root(tmp_path: Path, mounts: str, markers: dict[str, str]) -> dict[str, str]:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cmdline").write_text("console=ttyS0 bootgen.token=t0k3n quiet root=LABEL=*\n")
    (proc / "uptime").write_text("3.14 5.00\n")
    (proc / "mounts").write_text(mounts)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "sbin").mkdir()
    (root / "etc/bootgen-disk-id").write_text("d15k\n")
    (root / "etc/bootgen-expected").write_text("/ ext4\n/var ext4\n/var/log ext4\n/tmp tmpfs\n")
    for mp, text in markers.items():
        (root / mp[1:]).mkdir(parents=True, exist_ok=True)
        (root / mp[1:] / "bootgen-marker").write_text(text + "\n")
    shutil.copy(SCRIPT, root / "sbin/init")
    os.symlink("init", root / "sbin/altinit")
    return dict(os.environ, BOOTGEN_PROC=str(proc), BOOTGEN_ROOT=str(root),
                BOOTGEN_NO_POWEROFF="1")


MOUNTS = """rootfs / rootfs rw 0 0
/dev/vda / ext4 {root},relatime 0 0
proc /proc proc rw,nosuid 0 0
/dev/vdb /var ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
"""


def run_init(env: dict[str, str], name: str = "init") -> subprocess.CompletedProcess[str]:
    sh = shutil.which("busybox")
    argv = [sh, "sh"] if sh else ["sh"]
    return subprocess.run([*argv, f"{env['BOOTGEN_ROOT']}/sbin/{name}"], env=env,
                          capture_output=True, text=True, timeout=30)


def test_init_pass(tmp_path: Path) -> None:
    env = fake_root(tmp_path, MOUNTS.format(root="ro") + "/dev/vdc /var/log ext4 rw 0 0\n",
                    {"/var": "/var", "/var/log": "/var/log"})
    proc = run_init(env, "altinit")
    assert proc.stdout.splitlines() == [
        "BOOTGEN-UPTIME 3.14",
        "BOOTGEN-RESULT token=t0k3n disk=d15k init=altinit root=ro mounts=ok verdict=PASS net=none "
        "detail=/:ext4:/dev/vda,/var:ext4:/dev/vdb,/var/log:ext4:/dev/vdc,/tmp:tmpfs:tmpfs"]
    assert proc.returncode == 0 and proc.stderr == ""


def test_init_fail(tmp_path: Path) -> None:
    # /var/log is not mounted, and /var is the wrong filesystem (marker of another one)
    env = fake_root(tmp_path, MOUNTS.format(root="rw"), {"/var": "/srv"})
    proc = run_init(env)
    assert proc.stdout.splitlines()[-1] == (
        "BOOTGEN-RESULT token=t0k3n disk=d15k init=init root=rw "
        "mounts=missing:/var,/var/log verdict=FAIL net=none "
        "detail=/:ext4:/dev/vda,/var:ext4:/dev/vdb,/var/log:none:none,/tmp:tmpfs:tmpfs")
    assert len(proc.stdout.splitlines()) == 2 and proc.returncode == 1
    assert "/var/log is not mounted" in proc.stderr
    assert "/var holds the wrong filesystem" in proc.stderr


def test_init_wrong_fstype_and_no_token(tmp_path: Path) -> None:
    env = fake_root(tmp_path, MOUNTS.format(root="rw").replace("/var ext4", "/var ext2")
                    + "/dev/vdc /var/log ext4 rw 0 0\n", {"/var": "/var", "/var/log": "/var/log"})
    Path(env["BOOTGEN_PROC"], "cmdline").write_text("console=ttyS0")  # no newline, no token
    proc = run_init(env)
    assert proc.stdout.splitlines()[-1] == (
        "BOOTGEN-RESULT token=none disk=d15k init=init root=rw mounts=missing:/var verdict=FAIL "
        "net=none detail=/:ext4:/dev/vda,/var:ext2:/dev/vdb,/var/log:ext4:/dev/vdc,"
        "/tmp:tmpfs:tmpfs")
    assert "/var is mounted as ext2, expected ext4" in proc.stderr


def test_init_checks_the_btrfs_subvolume(tmp_path: Path) -> None:
    env = fake_root(tmp_path, "/dev/vda / btrfs rw,relatime,subvolid=256,subvol=/@root 0 0\n"
                    "/dev/vda /home btrfs rw,relatime,subvolid=257,subvol=/@other 0 0\n",
                    {"/home": "/home"})
    Path(env["BOOTGEN_ROOT"], "etc/bootgen-expected").write_text(
        "/ btrfs subvol=@root\n/home btrfs subvol=@home\n")
    proc = run_init(env)
    assert proc.stdout.splitlines()[-1].endswith(
        "mounts=missing:/home verdict=FAIL net=none "
        "detail=/:btrfs:/dev/vda:/@root,/home:btrfs:/dev/vda:/@other")
    assert "/home is mounted with rw,relatime,subvolid=257,subvol=/@other, expected " \
        "subvol=@home" in proc.stderr
