"""LUKS2 test volumes built in userspace: AES-XTS plain64, cryptsetup on plain files (no
device-mapper: unlocking is checked with --test-passphrase, the data by decrypting it here)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bootgen import description as config
from bootgen.errors import BuildError, UsageError
from bootgen.vm import diskbuild, disks, luksdisk
from bootgen.vm.diskbuild import build_disks
from bootgen.vm.disks import BuiltDisk, FsImage, Keyfile, Partition, plan_disks
from bootgen.vm.luksdisk import TEST_PASSPHRASE, ExtraKey, Volume
from tests.test_disks import REPO, U1, U2, cat, fs, host, needs_tools, probe, sbin

needs_cryptsetup = pytest.mark.skipif(
    not (shutil.which("cryptsetup") or os.path.exists("/usr/sbin/cryptsetup")),
    reason="cryptsetup is needed")
KEY = hashlib.sha512(b"test key").digest()  # 64 bytes, two different AES-256 halves


def dump(container: Path, header: Path | None = None) -> dict:
    return luksdisk.metadata(container, header=header)


def text_dump(container: Path) -> str:
    return subprocess.run([sbin("cryptsetup"), "luksDump", str(container)], capture_output=True,
                          text=True, check=True).stdout


def passphrase_file(tmp_path: Path, text: str = TEST_PASSPHRASE) -> Path:
    path = tmp_path / f"pass-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    path.write_bytes(text.encode())
    return path


def ext_superblock(plain: bytes) -> tuple[int, str]:
    """(magic, volume label) of an ext2/3/4 filesystem image."""
    sb = plain[1024:2048]
    return int.from_bytes(sb[56:58], "little"), sb[120:136].rstrip(b"\0").decode(errors="replace")


def partition_bytes(disk: BuiltDisk, number: int) -> bytes:
    parts = disk.spec.partitions
    start = 0 if disk.spec.table == "none" else 1 + sum(
        p.size_mb for p in parts if p.number < number)
    size = next(p.size_mb for p in parts if p.number == number)
    with open(disk.path, "rb") as f:
        f.seek(start << 20)
        return f.read(size << 20)


def open_volume(disk: BuiltDisk, number: int, dest: Path) -> tuple[Path, Path]:
    """Copy a LUKS partition to `dest` and decrypt its data segment into dest.plain."""
    dest.write_bytes(partition_bytes(disk, number))
    part = next(p for p in disk.spec.partitions if p.number == number)
    header = disk.headers.get(part.luks or "")
    offset = luksdisk.data_offset(dest, header=header)
    plain = dest.with_suffix(".plain")
    data = dest.read_bytes()[offset:]
    plain.write_bytes(luksdisk.xts_decrypt(diskbuild.volume_key(disk.spec, part), data))
    return dest, plain


# --- AES-XTS plain64 ---------------------------------------------------------------------------


def test_xts_matches_direct_calls_and_round_trips() -> None:
    data = hashlib.shake_256(b"plaintext").digest(8 * 512)
    enc = luksdisk.xts_encrypt(KEY, data)
    assert len(enc) == len(data) and enc != data
    for s in (0, 5):  # tweak: the sector number as 16 bytes little-endian
        direct = Cipher(algorithms.AES(KEY), modes.XTS(s.to_bytes(16, "little"))).encryptor()
        assert enc[s * 512:(s + 1) * 512] == direct.update(data[s * 512:(s + 1) * 512])
    later = luksdisk.xts_encrypt(KEY, data, first_sector=100)
    direct = Cipher(algorithms.AES(KEY), modes.XTS((105).to_bytes(16, "little"))).encryptor()
    assert later[5 * 512:6 * 512] == direct.update(data[5 * 512:6 * 512])
    assert luksdisk.xts_decrypt(KEY, enc) == data
    assert luksdisk.xts_decrypt(KEY, later, first_sector=100) == data
    assert luksdisk.xts_decrypt(KEY, later) != data
    # the same plaintext in two sectors encrypts differently
    same = luksdisk.xts_encrypt(KEY, bytes(1024))
    assert same[:512] != same[512:]
    with pytest.raises(ValueError, match="whole 512-byte sectors"):
        luksdisk.xts_encrypt(KEY, bytes(100))
    with pytest.raises(ValueError, match="64 bytes"):
        luksdisk.xts_encrypt(KEY[:32], bytes(512))


def test_derived_keys() -> None:
    assert luksdisk.test_volume_key("disk0", "1") == luksdisk.test_volume_key("disk0", "1")
    assert luksdisk.test_volume_key("disk0", "1") != luksdisk.test_volume_key("disk0", "2")
    assert len(luksdisk.test_volume_key("x")) == 64
    long = luksdisk.derived_bytes(200, "k")
    assert long[:64] == luksdisk.derived_bytes(64, "k")  # a prefix: sizes can grow


def af_merge(split: bytes, key_size: int, stripes: int) -> bytes:
    """LUKS anti-forensic merge with sha256 diffusion (written from the LUKS1 spec)."""
    def diffuse(block: bytes) -> bytes:
        return b"".join(hashlib.sha256(i.to_bytes(4, "big") + block[at:at + 32]).digest()
                        [:len(block[at:at + 32])] for i, at in enumerate(range(0, len(block), 32)))

    d = bytes(key_size)
    for i in range(stripes - 1):
        d = diffuse(bytes(a ^ b for a, b in zip(d, split[i * key_size:(i + 1) * key_size],
                                                strict=True)))
    return bytes(a ^ b for a, b in zip(d, split[(stripes - 1) * key_size:], strict=True))


@needs_cryptsetup
def test_cryptsetup_keyslot_decrypts_with_our_xts(tmp_path: Path) -> None:
    """cryptsetup encrypts keyslot areas with aes-xts-plain64 too (512-byte sectors numbered
    from the area's start): reading one back with our XTS must give the volume key, which
    checks our cipher, key halves and IV convention against an independent implementation."""
    container = tmp_path / "c.img"
    container.write_bytes(bytes(20 << 20))
    luksdisk.format_volume(container, Volume(U1, None, KEY), tmp_path)
    slot = dump(container)["keyslots"]["0"]
    kdf, af, area = slot["kdf"], slot["af"], slot["area"]
    assert (kdf["type"], area["encryption"], af["hash"]) == ("pbkdf2", "aes-xts-plain64", "sha256")
    key = hashlib.pbkdf2_hmac(kdf["hash"], TEST_PASSPHRASE.encode(),
                              base64.b64decode(kdf["salt"]), kdf["iterations"], area["key_size"])
    size = slot["key_size"] * af["stripes"]
    raw = container.read_bytes()[int(area["offset"]):][:-(-size // 512) * 512]
    split = luksdisk.xts_decrypt(key, raw)[:size]
    assert af_merge(split, slot["key_size"], af["stripes"]) == KEY
    wrong = luksdisk.xts_decrypt(key, raw, first_sector=1)[:size]
    assert af_merge(wrong, slot["key_size"], af["stripes"]) != KEY


# --- containers --------------------------------------------------------------------------------


@needs_cryptsetup
@needs_tools
def test_volume_with_keyfile(tmp_path: Path) -> None:
    inner = tmp_path / "inner.fs"
    with open(inner, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run([sbin("mke2fs"), "-q", "-F", "-t", "ext4", "-L", "innerfs", str(inner)],
                   check=True)
    keyfile = tmp_path / "key"
    keyfile.write_bytes(hashlib.shake_256(b"keyfile").digest(100))
    container = tmp_path / "c.img"
    with open(container, "wb") as f:
        f.truncate(24 << 20)
    vol = Volume(U2, "my-volume", KEY, (ExtraKey(keyfile, size=32, offset=10),))
    offset = luksdisk.build_volume(container, vol, tmp_path, inner=inner)
    assert offset == 16 << 20
    assert not (tmp_path / "volume-key").exists() and not (tmp_path / "passphrase").exists()
    meta = dump(container)
    assert sorted(meta["keyslots"]) == ["0", "1"]
    for slot in meta["keyslots"].values():
        assert slot["kdf"]["type"] == "pbkdf2" and slot["kdf"]["iterations"] == 1000
    seg = meta["segments"]["0"]
    assert (seg["encryption"], seg["sector_size"], seg["offset"]) == (
        "aes-xts-plain64", 512, str(16 << 20))
    text = text_dump(container)
    assert f"UUID:          \t{U2}" in text and "Label:         \tmy-volume" in text
    assert "Version:       \t2" in text
    info = probe(container)
    assert (info["TYPE"], info["UUID"], info["LABEL"]) == ("crypto_LUKS", U2, "my-volume")
    # unlocking
    assert luksdisk.unlocks(container, passphrase_file(tmp_path))
    assert luksdisk.unlocks(container, keyfile, size=32, offset=10)
    assert not luksdisk.unlocks(container, keyfile)  # the whole file is not the key
    assert not luksdisk.unlocks(container, keyfile, size=32, offset=11)
    assert not luksdisk.unlocks(container, passphrase_file(tmp_path, TEST_PASSPHRASE + "\n"))
    assert not luksdisk.unlocks(container, passphrase_file(tmp_path, "wrong"))
    # the data segment, as the kernel will see it
    data = container.read_bytes()
    plain = luksdisk.xts_decrypt(KEY, data[offset:offset + (8 << 20)])
    assert plain == inner.read_bytes()
    assert ext_superblock(plain) == (0xEF53, "innerfs")
    assert ext_superblock(data[offset:])[0] != 0xEF53


@needs_cryptsetup
def test_volume_with_detached_header(tmp_path: Path) -> None:
    inner = tmp_path / "inner.fs"
    inner.write_bytes(hashlib.shake_256(b"data").digest(1 << 20))
    container, header = tmp_path / "c.img", tmp_path / "c.header"
    with open(container, "wb") as f:
        f.truncate(1 << 20)
    assert luksdisk.build_volume(container, Volume(U1, None, KEY), tmp_path, inner=inner,
                                 header=header) == 0
    assert container.stat().st_size == 1 << 20  # data only
    assert luksdisk.xts_decrypt(KEY, container.read_bytes()) == inner.read_bytes()
    assert dump(container, header)["segments"]["0"]["offset"] == "0"
    assert luksdisk.unlocks(container, passphrase_file(tmp_path), header=header)
    with pytest.raises(BuildError, match="does not fit"):
        luksdisk.encrypt_into(inner, container, 512, KEY)


# --- planning ----------------------------------------------------------------------------------


def luks(name: str, device: str, extra: str = "") -> str:
    return f'[[luks]]\nname = "{name}"\ndevice = "{device}"\n{extra}'


KEYS = 'key_file_device = "LABEL=keys"\nkey_file_path = "/keys/data.key"\n'


def test_plan_detached_header_takes_no_room() -> None:
    lk = luks("c", "LABEL=c", 'header = "/etc/c.header"\n') + luks("raw", "LABEL=raw",
                                                                    'header = "/etc/r.h"\n')
    d0, d1 = plan_disks(host(fs("/", "/dev/mapper/c"), luks=lk))
    assert d0.partitions[0].luks_header and d0.size_mb == 64
    assert d1.partitions[0].luks_header and d1.size_mb == 16


def test_plan_keyfile_device() -> None:
    lk = (luks("data", "PARTLABEL=data", KEYS + "key_file_size = 32\nkey_file_offset = 8\n")
          + luks("more", "LABEL=more", KEYS))
    specs = plan_disks(host(fs("/", "LABEL=root"), fs("/data", "/dev/mapper/data"), luks=lk))
    keys = specs[-1]  # after the described things, on a disk of its own
    assert keys.table == "none" and keys.guest_name == "/dev/vdd"
    assert keys.partitions[0].fs == FsImage(
        "ext4", "keys", None, "", 16, "keyfiles",
        (Keyfile("/keys/data.key", 8 + 32 + 64, ("data", "more")),))
    assert keys.partitions[0].luks is None


def test_plan_keyfile_on_described_filesystems() -> None:
    lk = (luks("cryptroot", "PARTLABEL=cryptroot")
          + luks("data", "LABEL=d", 'key_file_device = "/dev/mapper/cryptroot"\n'
                 'key_file_path = "/etc/keys/d"\n')
          + luks("swap", "LABEL=s", 'key_file_device = "/dev/disk/by-label/boot"\n'
                 'key_file_path = "/s.key"\n'))
    specs = plan_disks(host(fs("/", "/dev/mapper/cryptroot"), fs("/boot", "LABEL=boot"),
                            luks=lk))
    assert len(specs) == 4
    root = specs[0].partitions[0]
    assert root.luks == "cryptroot" and root.fs is not None
    assert root.fs.keyfiles == (Keyfile("/etc/keys/d", 64, ("data",)),)
    boot = specs[1].partitions[0].fs
    assert boot is not None and boot.content == "marker"
    assert boot.keyfiles == (Keyfile("/s.key", 64, ("swap",)),)


@pytest.mark.parametrize(("lk", "message"), [
    (luks("a", "LABEL=a", 'key_file_device = "LABEL=a"\nkey_file_path = "/k"\n'),
     "[[luks]] 'a': key_file_device: LABEL=a is the LUKS container of [[luks]] 'a', "
     "not a filesystem"),
    (luks("a", "LABEL=a", 'key_file_device = "/dev/mapper/a"\nkey_file_path = "/k"\n'),
     "[[luks]] 'a': key_file_device: /dev/mapper/a holds no described filesystem"),
    (luks("a", "LABEL=a", 'key_file_device = "/dev/sdb1"\nkey_file_path = "/k"\n'),
     "[[luks]] 'a': key_file_device: cannot place '/dev/sdb1' on a test disk"),
    (luks("a", "LABEL=a", 'key_file_device = "LABEL=k"\nkey_file_path = "/k"\n'
          "key_file_offset = 5000000\n"),
     "[[luks]] 'a': key_file_device: key_file_offset + key_file_size is too large for a test "
     "keyfile"),
    (luks("a", "LABEL=" + "x" * 48), "[[luks]] 'a': label '" + "x" * 48 + "' is too long for "
     "LUKS2"),
])
def test_plan_luks_errors(lk: str, message: str) -> None:
    with pytest.raises(BuildError) as e:
        plan_disks(host(fs("/", "LABEL=root"), luks=lk))
    assert e.value.message == message and e.value.hint


def test_plan_keyfile_inside_its_own_volume() -> None:
    lk = luks("c", "LABEL=c", 'key_file_device = "/dev/mapper/c"\nkey_file_path = "/k"\n')
    with pytest.raises(BuildError, match="the keyfile cannot be inside the volume it opens"):
        plan_disks(host(fs("/", "/dev/mapper/c"), luks=lk))


# --- building ----------------------------------------------------------------------------------


@needs_cryptsetup
@needs_tools
def test_build_luks_example(tmp_path: Path) -> None:
    h = config.load(REPO / "examples" / "luks.toml")
    messages: list[str] = []
    (d,), root = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c",
                             progress=messages.append)
    assert messages == ["building disk0 (GPT 1: LUKS 'cryptroot' holding ext4 "
                        "PARTLABEL=cryptroot, 82 MiB)"]
    assert d.headers == {} and root.expected == ("/ ext4",)
    (p,) = d.spec.partitions
    info = probe(d.path, 1 << 20)
    assert (info["TYPE"], info["UUID"]) == ("crypto_LUKS", disks.luks_uuid(d.spec, p))
    table = json.loads(subprocess.run([sbin("sfdisk"), "--json", str(d.path)],
                                      capture_output=True, text=True, check=True).stdout)
    assert table["partitiontable"]["partitions"][0]["name"] == "cryptroot"
    container, plain = open_volume(d, 1, tmp_path / "root.luks")
    assert luksdisk.unlocks(container, passphrase_file(tmp_path))
    assert not luksdisk.unlocks(container, passphrase_file(tmp_path, "bootgen"))
    assert sorted(dump(container)["keyslots"]) == ["0"]
    assert ext_superblock(plain.read_bytes())[0] == 0xEF53
    assert cat(plain, "/etc/bootgen-expected") == "/ ext4\n"
    assert cat(plain, "/etc/bootgen-disk-id") == root.disk_id + "\n"
    # warm
    t0 = time.monotonic()
    again = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c")
    assert again == ((d,), root) and time.monotonic() - t0 < 1.0


@needs_cryptsetup
@needs_tools
def test_build_two_volumes_and_host_keyfile(tmp_path: Path) -> None:
    keyfile = tmp_path / "var.key"
    keyfile.write_bytes(hashlib.shake_256(b"host key").digest(4096))
    lk = (luks("cryptroot", "PARTLABEL=cryptroot")
          + luks("cryptvar", f"UUID={U1}", f'key_file = "{keyfile}"\nkey_file_size = 512\n'))
    h = host(fs("/", "/dev/mapper/cryptroot"),
             fs("/var", "/dev/mapper/cryptvar", boot=True), luks=lk)
    rootdisk, vardisk = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c")[0]
    assert vardisk.spec.table == "none" and vardisk.spec.partitions[0].luks_uuid == U1
    assert vardisk.path.stat().st_mode & 0o777 == 0o400  # holds a keyslot of a host key
    assert rootdisk.path.stat().st_mode & 0o777 == 0o444
    info = probe(vardisk.path)
    assert (info["TYPE"], info["UUID"]) == ("crypto_LUKS", U1)
    container, plain = open_volume(vardisk, 0, tmp_path / "var.luks")
    assert sorted(dump(container)["keyslots"]) == ["0", "1"]
    assert luksdisk.unlocks(container, keyfile, size=512)
    assert not luksdisk.unlocks(container, keyfile)
    assert luksdisk.unlocks(container, passphrase_file(tmp_path))
    assert cat(plain, "/bootgen-marker") == "/var\n"
    assert probe(rootdisk.path, 1 << 20)["TYPE"] == "crypto_LUKS"
    # a new key file content means new disks
    keyfile.write_bytes(hashlib.shake_256(b"another key").digest(4096))
    _, vardisk2 = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c")[0]
    assert vardisk2.path != vardisk.path
    assert luksdisk.unlocks(vardisk2.path, keyfile, size=512)


@needs_cryptsetup
@needs_tools
def test_build_key_file_device(tmp_path: Path) -> None:
    lk = (luks("cryptroot", "PARTLABEL=cryptroot")
          + luks("data", "LABEL=cdata", KEYS + "key_file_size = 32\nkey_file_offset = 8\n")
          + luks("more", "/dev/vdc", KEYS))
    h = host(fs("/", "/dev/mapper/cryptroot"), fs("/data", "/dev/mapper/data"), luks=lk)
    built, _ = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c")
    assert [d.spec.guest_name for d in built] == ["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd"]
    keys = built[3]
    assert probe(keys.path)["LABEL"] == "keys"
    key = tmp_path / "data.key"
    key.write_bytes(subprocess.run([sbin("debugfs"), "-R", "cat /keys/data.key", str(keys.path)],
                                   capture_output=True, check=True).stdout)
    assert len(key.read_bytes()) == 8 + 32 + 64
    stat = subprocess.run([sbin("debugfs"), "-R", "stat /keys/data.key", str(keys.path)],
                          capture_output=True, text=True, check=True).stdout
    assert "User:     0   Group:     0" in stat and "Mode:  0600" in stat
    data = built[1]  # LABEL=cdata: a whole disk
    assert data.spec.partitions[0].luks == "data"
    assert probe(data.path)["LABEL"] == "cdata"
    assert luksdisk.unlocks(data.path, key, size=32, offset=8)
    assert not luksdisk.unlocks(data.path, key)
    more = built[2]
    assert more.spec.partitions[0].luks == "more"
    assert luksdisk.unlocks(more.path, key)  # the whole file
    assert not luksdisk.unlocks(more.path, key, size=32, offset=8)
    _, plain = open_volume(data, 0, tmp_path / "data.luks")
    assert cat(plain, "/bootgen-marker") == "/data\n"


@needs_cryptsetup
@needs_tools
def test_build_detached_header(tmp_path: Path) -> None:
    lk = luks("cryptroot", "PARTUUID=" + U2, 'header = "/etc/cryptroot.header"\n')
    h = host(fs("/", "/dev/mapper/cryptroot"), luks=lk)
    (d,), _ = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c")
    header = d.headers["cryptroot"]
    assert header.parent == d.path.parent and header.is_file()
    assert d.spec.partitions[0].luks_header and d.spec.size_mb == 64 + 2
    assert probe(header)["TYPE"] == "crypto_LUKS"
    container, plain = open_volume(d, 1, tmp_path / "root.data")
    assert dump(container, header)["segments"]["0"]["offset"] == "0"
    assert luksdisk.unlocks(container, passphrase_file(tmp_path), header=header)
    assert ext_superblock(plain.read_bytes())[0] == 0xEF53
    assert ext_superblock(container.read_bytes())[0] != 0xEF53  # encrypted from byte 0
    # the header is part of the cache entry: a lost one means a rebuild
    again = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c")[0]
    assert again == (d,)
    header.chmod(0o644)
    header.unlink()
    rebuilt = build_disks(h, tmp_path / "w", cache_dir=tmp_path / "c")[0]
    assert rebuilt == (d,) and header.is_file()


@needs_cryptsetup
@needs_tools
def test_build_data_is_reproducible_headers_are_not(tmp_path: Path) -> None:
    lk = luks("c", "LABEL=c")
    h = host(fs("/", "LABEL=root"), fs("/srv", "/dev/mapper/c", boot=True), luks=lk)
    a = build_disks(h, tmp_path / "w1", cache_dir=tmp_path / "c1")[0][1]
    b = build_disks(h, tmp_path / "w2", cache_dir=tmp_path / "c2")[0][1]
    x, y = a.path.read_bytes(), b.path.read_bytes()
    assert x[16 << 20:] == y[16 << 20:]  # the encrypted data: derived volume key
    assert x[:16 << 20] != y[:16 << 20]  # the header: random salts


@needs_tools
def test_build_says_cryptsetup_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr(luksdisk, "which", lambda name: None)
    with pytest.raises(BuildError, match="^cryptsetup is missing"):
        build_disks(host(fs("/", "/dev/mapper/c"), luks=luks("c", "LABEL=c")), tmp_path,
                    cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


@needs_tools
def test_build_unreadable_host_keyfile(tmp_path: Path) -> None:
    lk = luks("c", "LABEL=c", f'key_file = "{tmp_path}/missing"\n')
    with pytest.raises(UsageError, match=r"missing: no such file") as e:
        build_disks(host(fs("/", "/dev/mapper/c"), luks=lk), tmp_path, cache_dir=tmp_path / "c")
    assert e.value.location.endswith(": luks[0].key_file")
    os.mkfifo(tmp_path / "fifo")  # never read: it would block
    lk = luks("c", "LABEL=c", f'key_file = "{tmp_path}/fifo"\n')
    with pytest.raises(UsageError, match=r"fifo: is a FIFO, not a regular file"):
        build_disks(host(fs("/", "/dev/mapper/c"), luks=lk), tmp_path, cache_dir=tmp_path / "c")
    (tmp_path / "short").write_bytes(b"12345")
    lk = luks("c", "LABEL=c", f'key_file = "{tmp_path}/short"\nkey_file_size = 8\n')
    with pytest.raises(BuildError, match="the keyfile has 5 bytes, too few"):
        build_disks(host(fs("/", "/dev/mapper/c"), luks=lk), tmp_path, cache_dir=tmp_path / "c")


def test_partition_defaults_keep_old_plans() -> None:
    p = Partition(1, None, None, 16, None, None)
    assert not p.luks_header and FsImage("ext4", None, None, "/x", 16, "marker").keyfiles == ()
