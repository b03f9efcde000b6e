"""Loading host descriptions: the schema, every error at once, exact messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootgen.description import load, loads
from bootgen.errors import DescriptionError

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))

ROOT = """
[[filesystems]]
mountpoint = "/"
device = "LABEL=root"
fstype = "ext4"
"""


def errors(text: str) -> list[str]:
    with pytest.raises(DescriptionError) as exc:
        loads(text, "host.toml")
    return exc.value.format().splitlines()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    host = load(path)
    assert host.root.mountpoint == "/"
    assert host.source == str(path)


def test_minimal_defaults() -> None:
    host = loads(ROOT)
    assert host.boot.flavor == "systemd"
    assert host.boot.compression == "zstd"
    assert host.boot.device_timeout == 30
    assert host.rescue.shell_on_fail is True
    assert host.root.device == "LABEL=root"
    assert host.root.needed_for_boot is False


def test_frozen() -> None:
    host = loads(ROOT)
    with pytest.raises(AttributeError):
        host.boot.flavor = "scripted"  # type: ignore[misc]


BAD = [
    ("[boot]\nflavour = 'systemd'\n" + ROOT,
     ["error: host.toml: boot.flavour: unknown setting (hint: did you mean 'flavor'?)"]),
    ("[boot]\ncompression = 'zstdd'\n" + ROOT,
     ["error: host.toml: boot.compression: 'zstdd' is not one of zstd, gzip, xz, lz4, none "
      "(hint: did you mean 'zstd'?)"]),
    ("[boot]\ndevice_timeout = 'long'\n" + ROOT,
     ["error: host.toml: boot.device_timeout: expected an integer, got a string"]),
    ("[kernel]\nmodules = 'ext4'\n" + ROOT,
     ['error: host.toml: kernel.modules: expected an array, got a string '
      '(hint: write modules = ["ext4"])']),
    ("[[filesystems]]\nmountpoint = '/'\ndevice = 'LABL=root'\nfstype = 'ext4'\n",
     ["error: host.toml: filesystems[0].device: 'LABL=root' is not a device reference "
      "(hint: use /dev/..., LABEL=, UUID=, PARTUUID= or PARTLABEL=)"]),
    ("[[filesystems]]\nmountpoint = '/'\ndevice = 'UUID=xyz'\nfstype = 'ext4'\n",
     ["error: host.toml: filesystems[0].device: 'xyz' is not a UUID "
      "(hint: use the value blkid prints)"]),
    ("[[filesystems]]\nmountpoint = 'var'\ndevice = '/dev/vdb'\nfstype = 'ext4'\n" + ROOT,
     ["error: host.toml: filesystems[0].mountpoint: 'var' is not an absolute path "
      "(hint: write '/var')"]),
    ("[[filesystems]]\nmountpoint = '/'\ndevice = '/dev/vda'\nfstype = 'ext5'\n",
     ["error: host.toml: filesystems[0].fstype: 'ext5' is not one of ext4, ext3, ext2, xfs, "
      "btrfs, vfat, f2fs, squashfs, tmpfs (hint: did you mean 'ext4'?)"]),
    ("[[filesystems]]\nmountpoint = '/'\ndevice = '/dev/vda'\n",
     ["error: host.toml: filesystems[0].fstype: missing (hint: every filesystem needs "
      "mountpoint, device and fstype)"]),
    ("[boot]\n",
     ["error: host.toml: filesystems: no filesystem is mounted at '/' "
      '(hint: add [[filesystems]] with mountpoint = "/")']),
    (ROOT + "[[filesystems]]\nmountpoint = '/var'\ndevice = '/dev/vdb'\nfstype = 'ext4'\n"
     "[[filesystems]]\nmountpoint = '/var/lib'\ndevice = '/dev/vdc'\nfstype = 'ext4'\n"
     "needed_for_boot = true\n",
     ["error: host.toml: filesystems[2].needed_for_boot: '/var/lib' is needed for boot but lies "
      "on '/var', which is not (hint: set needed_for_boot on '/var')"]),
    ("[[luks]]\nname = 'cryptroot'\ndevice = 'PARTLABEL=c'\n"
     "[[filesystems]]\nmountpoint = '/'\ndevice = '/dev/mapper/cryptrot'\nfstype = 'ext4'\n",
     ["error: host.toml: filesystems[0].device: no [[luks]] entry is named 'cryptrot' "
      "(hint: did you mean '/dev/mapper/cryptroot'?)"]),
    ("[[luks]]\nname = 'c'\ndevice = '/dev/vda'\nfallback_to_password = true\n" + ROOT,
     ["error: host.toml: luks[0].fallback_to_password: there is no keyfile to fall back from "
      "(hint: set key_file or key_file_device)"]),
    ("[network.ssh]\nenable = true\n" + ROOT,
     ["error: host.toml: network.ssh.enable: SSH needs the network "
      "(hint: set network.enable = true)",
      "error: host.toml: network.ssh.authorized_keys: nobody could log in (hint: add a public key)",
      "error: host.toml: network.ssh.host_keys: no host key given (hint: generate one: "
      "ssh-keygen -t ed25519 -N '' -f /etc/bootgen/ssh_host_ed25519_key)"]),
    ("[rescue]\nroot_password_hash = 'secret'\n" + ROOT,
     ["error: host.toml: rescue.root_password_hash: not a crypt(3) password hash "
      "(hint: generate one with: mkpasswd -m sha-512)"]),
    ("[systemd]\nunits = { 'hello' = 'x' }\n" + ROOT,
     ["error: host.toml: systemd.units.hello: 'hello' is not a unit or drop-in name "
      "(hint: e.g. 'hello.service' or 'sysroot.mount.d/override.conf')"]),
    ("[boot\n", ["error: host.toml: not valid TOML: Expected ']' at the end of a table "
                 "declaration (at line 1, column 6)"]),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[e[0][:30] for e in BAD])
def test_bad_descriptions(text: str, expected: list[str]) -> None:
    assert errors(text) == expected


def test_all_errors_at_once() -> None:
    lines = errors("[boot]\nflavour = 1\ncompression = 'rar'\n"
                   "[[filesystems]]\nmountpoint = 'x'\ndevice = 'y'\nfstype = 'ext4'\n")
    assert len(lines) == 4
    assert [line.split(":")[2].strip() for line in lines] == [
        "boot.flavour", "boot.compression", "filesystems[0].mountpoint", "filesystems[0].device"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DescriptionError) as exc:
        load(tmp_path / "nope.toml")
    assert exc.value.format() == (f"error: {tmp_path / 'nope.toml'}: no such file "
                                  "(hint: give the path of a host .toml)")


def test_boot_filesystems_order() -> None:
    host = loads(ROOT + "[[filesystems]]\nmountpoint = '/var/log'\ndevice = '/dev/vdc'\n"
                 "fstype = 'ext4'\nneeded_for_boot = true\n"
                 "[[filesystems]]\nmountpoint = '/var'\ndevice = '/dev/vdb'\nfstype = 'ext4'\n"
                 "needed_for_boot = true\n"
                 "[[filesystems]]\nmountpoint = '/home'\ndevice = '/dev/vdd'\nfstype = 'ext4'\n")
    assert [f.mountpoint for f in host.boot_filesystems] == ["/", "/var", "/var/log"]
