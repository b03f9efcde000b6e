"""Bad input, as a hostile or careless user gives it: one table, one row per input.

Every row runs one bootgen command (in-process) in a fresh directory holding a good description,
the image a previous build wrote (prev.img) and whatever the row sets up (FIFOs, links, devices,
big or unreadable files), and asserts:

- the exit code (2: usage or description error, 1: build failure);
- stderr is exactly the error lines (one per problem, default one), each `error: ...`, the first
  matching the row's pattern, and no traceback;
- every file of the directory (prev.img, the description, each input) is byte-for-byte what it
  was, links still point where they pointed, and no temp file was left behind.

Rows that need a user without root's powers (unreadable files, read-only directories) skip as
root; CI runs the suite as a normal user.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from bootgen import paths
from bootgen.cli import main

from .conftest import KVER, PUBLIC_KEY

AS_ROOT = os.geteuid() == 0
PRIVATE_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n"
               "-----END OPENSSH PRIVATE KEY-----")
BASE = """\
[boot]
flavor = "scripted"
kernel_params = ["console=ttyS0"]

[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]

[rescue]
allow_passwordless = true
"""
ROOT = """
[[filesystems]]
mountpoint = "/"
device = "LABEL=root"
fstype = "ext4"
options = ["rw"]
"""
LUKS_ROOT = """
[[filesystems]]
mountpoint = "/"
device = "/dev/mapper/root"
fstype = "ext4"
"""


def toml(value: str) -> str:
    """A TOML string: as given when quoted already, else JSON's (valid TOML) quoting."""
    return value if value[:1] in "\"'" else json.dumps(value)


def fs(device: str = "LABEL=root", mountpoint: str = "/", options: str = '["rw"]') -> str:
    """The root filesystem with one value replaced (TOML strings given as TOML)."""
    extra = "" if mountpoint == "/" else ROOT
    return extra + f"""
[[filesystems]]
mountpoint = {toml(mountpoint)}
device = {toml(device)}
fstype = "ext4"
options = {options}
"""


def luks(**values: str) -> str:
    body = {"name": '"root"', "device": '"PARTLABEL=cryptroot"', **values}
    return LUKS_ROOT + "\n[[luks]]\n" + "".join(f"{k} = {v}\n" for k, v in body.items())


def ssh(keys: str = f'["{PUBLIC_KEY}"]', host_keys: str = '["{d}/host_key"]') -> str:
    return ROOT + f"""
[network]
enable = true

[[network.interfaces]]
name = "eth0"
dhcp = true

[network.ssh]
enable = true
authorized_keys = {keys}
host_keys = {host_keys}
"""


def extra_file(source: str = "{d}/data", target: str = '"/etc/data"', mode: str = "") -> str:
    return ROOT + f"""
[[extra.files]]
source = "{source}"
target = {target}
""" + (f"mode = {mode}\n" if mode else "")


# --- what a row may set up in its directory ----------------------------------------------------

Setup = Callable[[Path, pytest.MonkeyPatch], None]


def fifo(name: str) -> Setup:
    return lambda d, mp: os.mkfifo(d / name)


def sparse(name: str, size: int) -> Setup:
    def make(d: Path, mp: pytest.MonkeyPatch) -> None:
        with open(d / name, "wb") as f:
            f.truncate(size)
    return make


def write(name: str, data: bytes | str, mode: int = 0o644) -> Setup:
    def make(d: Path, mp: pytest.MonkeyPatch) -> None:
        p = d / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        p.chmod(mode)
    return make


def symlink(name: str, target: str) -> Setup:
    return lambda d, mp: os.symlink(target.format(d=d), d / name)


def mkdir(name: str, mode: int = 0o755) -> Setup:
    def make(d: Path, mp: pytest.MonkeyPatch) -> None:
        (d / name).mkdir()
        (d / name).chmod(mode)
    return make


def env(name: str, value: str) -> Setup:
    return lambda d, mp: mp.setenv(name, value)


def running_kernel(d: Path, mp: pytest.MonkeyPatch) -> None:
    """prev.img plays the running kernel's initrd: /boot is the test directory."""
    mp.setattr(paths, "BOOT_DIR", d)
    os.link(d / "prev.img", d / f"initrd.img-{os.uname().release}")


def zstd_bomb(name: str, size: int, content_size: bool, byte: bytes = b"\0") -> Setup:
    def make(d: Path, mp: pytest.MonkeyPatch) -> None:
        c = zstandard.ZstdCompressor(level=1, write_content_size=content_size).compressobj()
        chunk = byte * (1 << 20)
        with open(d / name, "wb") as f:
            for _ in range(size >> 20):
                f.write(c.compress(chunk))
            f.write(c.flush())
    return make


def compressed(name: str, tool: str, size: int) -> Setup:
    def make(d: Path, mp: pytest.MonkeyPatch) -> None:
        data = subprocess.run([tool, "-c"], input=b"\0" * size, capture_output=True,
                              check=True).stdout
        (d / name).write_bytes(data)
    return make


# a zstd frame whose header says 3 GiB (and holds nothing): rejected before unpacking a byte
ZSTD_3G = b"\x28\xb5\x2f\xfd\xc0\x58" + (3 << 30).to_bytes(8, "little") + b"\x01\x00\x00"
GOOD_KEYS = write("keys.pub", PUBLIC_KEY + "\n")


def HOST_KEY(d: Path, mp: pytest.MonkeyPatch) -> None:  # noqa: N802 - a setup like the others
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hostile",
                    "-f", d / "host_key"], check=True)
    (d / "host_key.pub").unlink()


@dataclass(frozen=True)
class Row:
    name: str
    description: str  # appended to BASE; "{d}" is the row's directory
    args: tuple[str, ...]  # "{d}", "{host}" and "{img}" are filled in
    code: int
    pattern: str  # the first error line must match (re.search)
    setup: tuple[Setup, ...] = ()
    lines: int = 1  # error lines expected (at least, when more than 1)
    not_root: bool = False  # needs permissions root does not have
    kernel: bool = True  # needs the installed kernel (commands that plan an image)
    extra: dict[str, str] = field(default_factory=dict)


BUILD = ("build", "{host}", "-o", "{img}")
CHECK = ("check", "{host}")


def bad(name: str, description: str, pattern: str, *setup: Setup, code: int = 2,
        args: tuple[str, ...] = CHECK, lines: int = 1, kernel: bool = False,
        not_root: bool = False) -> Row:
    return Row(name, description, args, code, pattern, setup, lines, not_root, kernel)


def build(name: str, description: str, pattern: str, *setup: Setup, code: int = 2,
          args: tuple[str, ...] = (), lines: int = 1, not_root: bool = False) -> Row:
    return Row(name, description, BUILD + args, code, pattern, setup, lines, not_root, True)


def cmd(name: str, args: tuple[str, ...], pattern: str, *setup: Setup, code: int = 2,
        not_root: bool = False, kernel: bool = False) -> Row:
    return Row(name, ROOT, args, code, pattern, setup, 1, not_root, kernel)


ROWS = [
    # --- 7. the description itself: never a traceback -------------------------------------------
    cmd("binary description", CHECK, r"not UTF-8 text: byte 0xff on line 1 ",
        write("host.toml", b"\xff\xfe[boot]\n\x00\x01")),
    cmd("latin-1 description", CHECK, r"not UTF-8 text: byte 0xe9 on line 2",
        write("host.toml", '[boot]\nflavor = "caf\u00e9"\n'.encode("latin-1"))),
    cmd("5000-deep array", CHECK, r"not valid TOML: nested too deeply",
        write("host.toml", "x = " + "[" * 5000 + "]" * 5000 + "\n")),
    cmd("40-deep array", CHECK, r"x.*: nested more than 32 levels deep",
        write("host.toml", "x = " + "[" * 40 + "]" * 40 + "\n")),
    cmd("description is a FIFO", CHECK, r"host.toml: is a FIFO, not a regular file",
        write("host.toml", ""), lambda d, mp: (os.unlink(d / "host.toml"),
                                               os.mkfifo(d / "host.toml"))),
    cmd("description is /dev/zero", ("check", "/dev/zero"),
        r"/dev/zero: is a character device, not a regular file"),
    cmd("description is huge", CHECK, r"host.toml: 2 MiB is more than the limit of 1 MiB",
        sparse("host.toml", 2 << 20)),
    cmd("description missing", ("check", "{d}/nothing.toml"),
        r"nothing.toml: no such file \(hint: give the path of a host .toml\)"),
    cmd("description unreadable", CHECK, r"host.toml: permission denied",
        lambda d, mp: (d / "host.toml").chmod(0), not_root=True),
    cmd("description empty", CHECK, r"no filesystem is mounted at '/'", write("host.toml", "")),
    cmd("description not TOML", CHECK, r"not valid TOML: ", write("host.toml", "[boot\n")),
    bad("NUL in a string", ROOT + '[extra]\nbinaries = ["a\\u0000b"]\n',
        r"extra.binaries\[0\]: holds the control character '\\x00'"),
    bad("NUL in a path", extra_file(source="/etc/\\u0000passwd"),
        r"extra.files\[0\].source: holds the control character '\\x00'"),
    bad("newline in a kernel parameter", ROOT, r"kernel_params\[0\]: holds the control character",
        write("host.toml", BASE.replace('"console=ttyS0"', '"console=ttyS0\\ninit=/bin/sh"')
              + ROOT)),
    bad("unknown nested table", "[boot.x]\n" + ROOT, r"boot.x: unknown setting"),
    bad("escape sequence in a label", fs(device='"LABEL=ro\\u001b[31mot"'),
        r"device: holds the control character '\\x1b'"),
    # --- 4. injection into generated files -----------------------------------------------------
    bad("newline in a mount option", fs(options='["rw\\nExecStart=/bin/sh"]'),
        r"options\[0\]: holds the control character '\\n'"),
    bad("comma in a mount option", fs(options='["rw,x-systemd.requires=evil.service"]'),
        r"options\[0\]: 'rw,x-systemd.requires=evil.service' holds a comma"),
    bad("space in a mount option", fs(options='["rw noatime"]'),
        r"'rw noatime' is not a mount option"),
    bad("quote in a mount option", fs(options="['rw\"']"), r"is not a mount option"),
    bad("specifier in a mount option", fs(options='["uid=%u"]'), r"'uid=%u' is not a mount option"),
    bad("dollar in a mount option", fs(options='["$(reboot)"]'), r"is not a mount option"),
    bad("space in a mountpoint", fs(mountpoint="/my data"),
        r"'/my data' holds characters other than"),
    bad("newline in a mountpoint", fs(mountpoint='"/var\\n[Service]"'),
        r"mountpoint: holds the control character"),
    bad("specifier in a mountpoint", fs(mountpoint="/var/%i"), r"holds characters other than"),
    bad("dot-dot in a mountpoint", fs(mountpoint="/var/../etc"), r"is not a normalized path"),
    bad("relative mountpoint", fs(mountpoint="var"), r"'var' is not an absolute path"),
    bad("double slash mountpoint", fs(mountpoint="//var"), r"is not a normalized path"),
    bad("newline in a device", fs(device='"/dev/vda\\nWhat=/dev/x"'),
        r"device: holds the control character '\\n'"),
    bad("space in a device path", fs(device="/dev/vd a"), r"is not a plain device path"),
    bad("command in a device path", fs(device="/dev/vda$(reboot)"),
        r"is not a plain device path"),
    bad("specifier in a device path", fs(device="/dev/%i"), r"is not a plain device path"),
    bad("dot-dot device path", fs(device="/dev/../etc/passwd"), r"is not a plain device path"),
    bad("quote in a label", fs(device="'LABEL=ro\"ot'"),
        r"'ro\"ot' holds a quote, a backslash, '\$' or '`'"),
    bad("backslash in a label", fs(device='"LABEL=ro\\\\ot"'), r"holds a quote, a backslash"),
    bad("command in a label", fs(device="LABEL=$(reboot)"), r"holds a quote, a backslash"),
    bad("backtick in a label", fs(device="LABEL=`reboot`"), r"holds a quote, a backslash"),
    bad("not a UUID", fs(device="UUID=not-a-uuid"), r"'not-a-uuid' is not a UUID"),
    bad("empty label", fs(device="LABEL="), r"'LABEL=' has nothing after 'LABEL='"),
    bad("bare device name", fs(device="sda1"), r"'sda1' is not a device reference"),
    bad("space in a LUKS name", luks(name='"my root"'), r"'my root' is not a device-mapper name"),
    bad("newline in a LUKS name", luks(name='"root\\nx"'), r"name: holds the control character"),
    bad("path in a LUKS name", luks(name='"../root"'), r"is not a device-mapper name"),
    bad("space in a LUKS device", luks(device='"LABEL=my disk"'),
        r"'LABEL=my disk' holds whitespace, which crypttab cannot carry"),
    bad("comma in a crypttab option", luks(options='["discard,keyfile-timeout=1s"]'),
        r"is not a crypttab option"),
    bad("space in a crypttab option", luks(options='["a b"]'), r"is not a crypttab option"),
    bad("colon in a key path", luks(key_file_device='"LABEL=keys"',
                                    key_file_path='"/a:b/key"'),
        r"'/a:b/key' is not a plain absolute path without ':'"),
    bad("relative key path", luks(key_file_device='"LABEL=keys"', key_file_path='"key"'),
        r"'key' is not a plain absolute path"),
    bad("space in a key device", luks(key_file_device='"LABEL=k k"', key_file_path='"/k"'),
        r"holds whitespace"),
    bad("no tries", luks(tries="0"), r"0 tries would never ask"),
    bad("a million tries", luks(tries="1000000"), r"1000000 tries"),
    bad("negative LUKS timeout", luks(timeout="-5"), r"-5 s is out of range"),
    bad("negative keyfile size", luks(key_file="'/k'", key_file_size="-1"), r"-1 is out of range"),
    bad("relative key file", luks(key_file='"root.key"'), r"'root.key' is not an absolute path"),
    bad("relative header", luks(header='"hdr"'), r"'hdr' is not an absolute path"),
    bad("interface name with space", ROOT + '[network]\nenable = true\n[[network.interfaces]]\n'
        'name = "eth0 x"\ndhcp = true\n', r"'eth0 x' is not an interface name"),
    bad("interface name too long", ROOT + '[network]\nenable = true\n[[network.interfaces]]\n'
        'name = "abcdefghijklmnop"\ndhcp = true\n', r"is not an interface name"),
    bad("newline in an interface name", ROOT + '[network]\nenable = true\n'
        '[[network.interfaces]]\nname = "eth0\\n[Match]"\ndhcp = true\n',
        r"name: holds the control character"),
    bad("MAC with a newline", ROOT + '[network]\nenable = true\n[[network.interfaces]]\n'
        'mac = "52:54:00:12:34:56\\n"\ndhcp = true\n', r"mac: holds the control character"),
    bad("MAC too short", ROOT + '[network]\nenable = true\n[[network.interfaces]]\n'
        'mac = "52:54:00:12:34"\ndhcp = true\n', r"is not a MAC address"),
    bad("address with a newline", ROOT + '[network]\nenable = true\n[[network.interfaces]]\n'
        'name = "eth0"\naddress = "10.0.2.15/24\\nDNS=1.1.1.1"\n',
        r"address: holds the control character"),
    bad("prefix 33", ROOT + '[network]\nenable = true\n[[network.interfaces]]\nname = "eth0"\n'
        'address = "10.0.2.15/33"\n', r"is not an IPv4 address with prefix"),
    bad("address without prefix", ROOT + '[network]\nenable = true\n[[network.interfaces]]\n'
        'name = "eth0"\naddress = "10.0.2.15"\n', r"is not an IPv4 address with prefix"),
    bad("gateway 256", ROOT + '[network]\nenable = true\n[[network.interfaces]]\nname = "e"\n'
        'address = "10.0.2.15/24"\ngateway = "10.0.2.256"\n', r"is not an IPv4 address"),
    bad("shell in DNS", ROOT + '[network]\nenable = true\n[[network.interfaces]]\nname = "e"\n'
        'address = "10.0.2.15/24"\ndns = ["8.8.8.8; reboot"]\n', r"is not an IPv4 address"),
    bad("MTU 10", ROOT + '[network]\nenable = true\n[[network.interfaces]]\nname = "e"\n'
        'dhcp = true\nmtu = 10\n', r"10 is out of range \(hint: use 68-65535\)"),
    bad("network timeout negative", ROOT + "[network]\ntimeout = -1\n", r"-1 s is out of range"),
    bad("colon in a password hash", ROOT, r"not a crypt\(3\) password hash",
        write("host.toml", BASE.replace("allow_passwordless = true",
                                        'root_password_hash = "$6$salt$x:0:0"') + ROOT)),
    bad("newline in a password hash", ROOT, r"root_password_hash: holds the control character",
        write("host.toml", BASE.replace("allow_passwordless = true",
                                        'root_password_hash = "$6$salt$x\\nroot::0"') + ROOT)),
    bad("plain text password", ROOT, r"not a crypt\(3\) password hash",
        write("host.toml", BASE.replace("allow_passwordless = true",
                                        'root_password_hash = "hunter2"') + ROOT)),
    bad("unit name escapes its directory", ROOT + '[systemd.units]\n"../../etc/passwd" = "x"\n',
        r"is not a unit or drop-in name"),
    bad("drop-in name escapes", ROOT + '[systemd.units]\n"a.service.d/../../x.conf" = "x"\n',
        r"is not a unit or drop-in name"),
    bad("specifier in a unit name", ROOT + '[systemd.units]\n"a%i.service" = "x"\n',
        r"'a%i.service' is not a unit or drop-in name"),
    bad("space in a unit name", ROOT + '[systemd.units]\n"a b.service" = "x"\n',
        r"is not a unit or drop-in name"),
    bad("hidden unit name", ROOT + '[systemd.units]\n".hidden.service" = "x"\n',
        r"is not a unit or drop-in name"),
    bad("NUL in a unit's text", ROOT + '[systemd.units]\n"a.service" = "[Unit]\\u0000"\n',
        r"systemd.units.a.service: holds the control character '\\x00'"),
    bad("escape in a unit's text", ROOT + '[systemd.units]\n"a.service" = "\\u001b[2J"\n',
        r"holds the control character '\\x1b'"),
    bad("newline in a wanted unit", ROOT + '[systemd]\nwants = ["a.service\\nb"]\n',
        r"wants\[0\]: holds the control character"),
    bad("space in a wanted unit", ROOT + '[systemd]\nwants = ["a b.service"]\n',
        r"is not a unit or drop-in name"),
    bad("newline in a module name", ROOT + "", r"modules\[0\]: holds the control character",
        write("host.toml", BASE.replace('modules = ["virtio_pci"', 'modules = ["ext4\\nx"')
              + ROOT)),
    bad("two modules in one", ROOT, r"'ext4 virtio' is not a kernel module name",
        write("host.toml", BASE.replace('modules = ["virtio_pci"', 'modules = ["ext4 virtio"')
              + ROOT)),
    bad("path as a module", ROOT, r"'../../etc/x' is not a kernel module name",
        write("host.toml", BASE.replace('modules = ["virtio_pci"', 'modules = ["../../etc/x"')
              + ROOT)),
    bad("kernel version escapes /lib/modules", ROOT, r"'../../../etc' is not a kernel release",
        write("host.toml", BASE.replace("[kernel]", '[kernel]\nversion = "../../../etc"') + ROOT)),
    cmd("kernel version option escapes", ("build", "{host}", "-o", "{img}", "--kernel-version",
                                          "../../etc"),
        r"--kernel-version: '../../etc' is not a kernel release"),
    bad("relative init", ROOT, r"'sbin/init' is not an absolute path",
        write("host.toml", BASE.replace("[boot]", '[boot]\ninit = "sbin/init"') + ROOT)),
    bad("newline in init", ROOT, r"init: holds the control character",
        write("host.toml", BASE.replace("[boot]", '[boot]\ninit = "/sbin/init\\nx"') + ROOT)),
    bad("negative device timeout", ROOT, r"-1 s is out of range",
        write("host.toml", BASE.replace("[boot]", "[boot]\ndevice_timeout = -1") + ROOT)),
    bad("endless device timeout", ROOT, r"1000000000000 s is out of range",
        write("host.toml", BASE.replace("[boot]", "[boot]\ndevice_timeout = 1000000000000")
              + ROOT)),
    bad("compression level 99", ROOT, r"99 is not a zstd level",
        write("host.toml", BASE.replace("[boot]", "[boot]\ncompression_level = 99") + ROOT)),
    bad("relative program path", ROOT + '[extra]\nbinaries = ["../bin/sh"]\n',
        r"neither a bare program name nor an absolute path"),
    bad("shell in a program name", ROOT + '[extra]\nbinaries = ["sh;reboot"]\n',
        r"neither a bare program name nor an absolute path"),
    bad("space in a library", ROOT + '[extra]\nlibraries = ["libc.so.6 x"]\n',
        r"neither a soname nor an absolute path"),
    bad("relative extra target", extra_file(target='"etc/data"'),
        r"'etc/data' is not an absolute path"),
    bad("space in an extra target", extra_file(target='"/etc/my data"'),
        r"holds characters other than"),
    bad("dot-dot in an extra target", extra_file(target='"/etc/../x"'),
        r"is not a normalized path"),
    bad("relative extra source", extra_file(source="data"), r"'data' is not an absolute path"),
    bad("relative host key", ssh(host_keys='["keys/host_key"]'),
        r"host_keys\[0\]: 'keys/host_key' is not an absolute path"),
    bad("space in a host key name", ssh(host_keys='["/etc/my key"]'),
        r"holds characters other than A-Za-z0-9_.@\+-"),
    bad("two host keys, one name", ssh(host_keys='["/a/host_key", "/b/host_key"]'),
        r"its file name 'host_key' is also host_keys\[0\]'s"),
    bad("private key as authorized key", ssh(keys=f'["{PRIVATE_KEY}"]'),
        r"this is a private key, which must never go into an image"),
    bad("garbage authorized key", ssh(keys='["hello"]'),
        r"the key text is not a public key line"),
    bad("authorized key not base64", ssh(keys='["ssh-ed25519 AAAA!!!! me"]'),
        r"is not a public key line|not valid base64"),
    bad("authorized key of the wrong type", ssh(
        keys=f'["{PUBLIC_KEY.replace("ssh-ed25519", "ssh-rsa")}"]'),
        r"has a key whose data is not a ssh-rsa key"),
    bad("home-relative authorized keys", ssh(keys='["~/.ssh/id_ed25519.pub"]'),
        r"the key text is not a public key line"),
    bad("SSH port 0", ssh() + "port = 0\n", r"port 0 is out of range"),
    # --- 6. extra.files.mode ----------------------------------------------------------------------
    bad("mode with symlink type bits", extra_file(mode="0o120644"),
        r"0o120644 is not a permission mode"),
    bad("mode with file type bits", extra_file(mode="0o100644"),
        r"0o100644 is not a permission mode \(hint: use 0o0 to 0o7777"),
    bad("mode 0o20644", extra_file(mode="0o20644"), r"0o20644 is not a permission mode"),
    bad("setuid world-writable", extra_file(mode="0o4777"),
        r"0o4777 is setuid or setgid and writable by everyone"),
    bad("setgid world-writable", extra_file(mode="0o2666"), r"is setuid or setgid and writable"),
    bad("negative mode", extra_file(mode="-1"), r"-1 is not a permission mode"),
    bad("huge mode", extra_file(mode="9223372036854775807"), r"is not a permission mode"),
    bad("mode as a string", extra_file(mode='"0644"'), r"expected an integer, got a string"),
    # --- 3. and 8. files the description names: read only when regular, bounded ----------------
    bad("extra file is a FIFO", extra_file(), r"extra.files\[0\].source: .*/data: is a FIFO, "
        r"not a regular file", fifo("data"), kernel=True),
    bad("extra file is /dev/zero", extra_file(source="/dev/zero"),
        r"/dev/zero: is a character device, not a regular file", kernel=True),
    bad("extra file is a directory", extra_file(source="/etc"), r"/etc: is a directory",
        kernel=True),
    bad("extra file missing", extra_file(), r"extra.files\[0\].source: .*/data: no such file",
        kernel=True),
    bad("extra file too big", extra_file(), r"300 MiB is more than the limit of 256 MiB",
        sparse("data", 300 << 20), kernel=True),
    bad("extra file unreadable", extra_file(), r"data: permission denied",
        write("data", "x", 0), kernel=True, not_root=True),
    bad("key file is a FIFO", luks(key_file='"{d}/key"'), r"luks\[0\].key_file: .*key: is a "
        r"FIFO", fifo("key"), kernel=True),
    bad("key file is /dev/zero", luks(key_file='"/dev/zero"'), r"is a character device",
        kernel=True),
    bad("key file too big", luks(key_file='"{d}/key"'), r"9 MiB is more than the limit of 8 MiB",
        sparse("key", 9 << 20), kernel=True),
    bad("header is a directory", luks(header='"{d}"'), r"luks\[0\].header: .*: is a directory",
        kernel=True),
    bad("key file unreadable", luks(key_file='"{d}/key"'), r"key: permission denied",
        write("key", "k", 0), kernel=True, not_root=True),
    bad("host key is a FIFO", ssh(), r"host_keys\[0\]: .*host_key: is a FIFO", GOOD_KEYS,
        fifo("host_key"), kernel=True),
    bad("authorized keys file holds a private key", ssh(keys='["{d}/keys.pub"]'),
        r"authorized_keys: .*keys.pub: holds a private key", HOST_KEY,
        write("keys.pub", PRIVATE_KEY.replace("\\n", "\n") + "\n"), kernel=True),
    bad("authorized keys file is a FIFO", ssh(keys='["{d}/keys.pub"]'),
        r"authorized_keys: .*keys.pub: is a FIFO", HOST_KEY, fifo("keys.pub"), kernel=True),
    bad("authorized keys file is binary", ssh(keys='["{d}/keys.pub"]'),
        r"keys.pub: is not UTF-8 text", HOST_KEY, write("keys.pub", b"\xff\xfe\x00"),
        kernel=True),
    bad("authorized keys file with garbage", ssh(keys='["{d}/keys.pub"]'),
        r"keys.pub: line 2 is not a public key line", HOST_KEY,
        write("keys.pub", PUBLIC_KEY + "\nrm -rf /\n"), kernel=True),
    bad("authorized keys file is /dev/zero", ssh(keys='["/dev/zero"]'),
        r"/dev/zero: is a character device", HOST_KEY, kernel=True),
    bad("every missing file at once", ROOT + '[extra]\nbinaries = ["no-such-program-x"]\n'
        '[[extra.files]]\nsource = "/nonexistent/a"\ntarget = "/a"\n'
        '[[extra.files]]\nsource = "/nonexistent/b"\ntarget = "/b"\n',
        r"extra.files\[0\].source: /nonexistent/a: no such file", lines=3, kernel=True),
    build("build reports every missing file", ROOT + '[[extra.files]]\nsource = "/nonexistent/a"'
          '\ntarget = "/a"\n[[extra.files]]\nsource = "/nonexistent/b"\ntarget = "/b"\n',
          r"extra.files\[0\].source: /nonexistent/a: no such file", lines=2),
    build("unknown module at build", ROOT + "", r"unknown kernel module 'no_such_mod_x'",
          write("host.toml", BASE.replace('modules = ["virtio_pci"',
                                          'modules = ["no_such_mod_x", "virtio_pci"') + ROOT),
          code=1),
    # --- 2. and 10. output paths ------------------------------------------------------------------
    build("output over the description", ROOT, r"-o .*host.toml: is an input of this command",
          args=("-o", "{host}")),
    build("output over an input file", extra_file(), r"-o .*data: is an input of this command",
          write("data", "hello\n"), args=("-o", "{d}/data")),
    build("output over /dev/null", ROOT, r"-o /dev/null: is a character device; bootgen writes "
          r"only regular files", args=("-o", "/dev/null")),
    build("output over a FIFO", ROOT, r"-o .*fifo: is a FIFO", fifo("fifo"),
          args=("-o", "{d}/fifo")),
    build("output over a symlink", ROOT, r"-o .*link.img: is a symbolic link; bootgen does not "
          r"replace links \(hint: give the path it points to", symlink("link.img", "{d}/prev.img"),
          args=("-o", "{d}/link.img")),
    build("output over a dangling symlink", ROOT, r"is a symbolic link",
          symlink("link.img", "{d}/nowhere.img"), args=("-o", "{d}/link.img")),
    build("output over a socket", ROOT, r"-o .*sock: is a socket",
          lambda d, mp: __import__("socket").socket(1).bind(str(d / "sock")),
          args=("-o", "{d}/sock")),
    build("manifest is the image", ROOT, r"-o .*prev.img: is also --manifest",
          args=("--manifest", "{img}")),
    build("secrets are the image", ROOT, r"-o .*prev.img: is also --secrets-out",
          args=("--secrets-out", "{img}")),
    build("manifest is the secrets", ROOT, r"--manifest .*: is also --secrets-out",
          args=("--manifest", "{d}/x", "--secrets-out", "{d}/x")),
    build("manifest through another name", ROOT, r"is also --manifest",
          mkdir("sub"), args=("--manifest", "{d}/sub/../prev.img")),
    build("manifest over the description", ROOT, r"--manifest .*host.toml: is an input",
          args=("--manifest", "{host}")),
    build("manifest over a symlink", ROOT, r"--manifest .*m.json: is a symbolic link",
          symlink("m.json", "{d}/prev.img"), args=("--manifest", "{d}/m.json")),
    build("output in a missing directory", ROOT, r"directory .*nowhere does not exist",
          args=("-o", "{d}/nowhere/i.img")),
    build("output into /proc", ROOT, r"-o /proc/bootgen.img: cannot write in /proc",
          args=("-o", "/proc/bootgen.img")),
    build("output into /sys", ROOT, r"cannot write in /sys/kernel", args=("-o",
                                                                          "/sys/kernel/x.img")),
    build("output into a read-only directory", ROOT, r"cannot write in .*ro: Permission denied",
          mkdir("ro", 0o555), args=("-o", "{d}/ro/i.img"), not_root=True),
    build("manifest into /proc", ROOT, r"--manifest /proc/m.json: cannot write in /proc",
          args=("--manifest", "/proc/m.json")),
    build("manifest in a missing directory", ROOT, r"--manifest .*: directory .* does not exist",
          args=("--manifest", "{d}/no/m.json")),
    build("secrets into a read-only directory", luks(), r"--secrets-out .*: cannot write in",
          mkdir("ro", 0o555), args=("--secrets-out", "{d}/ro/s.img"), not_root=True),
    build("secrets without secrets", ROOT, r"--secrets-out: the image has no secrets to write",
          args=("--secrets-out", "{d}/secrets.img")),
    build("running kernel's initrd", ROOT, r"is the initrd of the running kernel .*pass --force",
          running_kernel),
    cmd("NUL in an output path", ("build", "{host}", "-o", "{d}/a\0b"),
        r"error: a path contains a NUL byte", kernel=True),
    cmd("compare --svg over the description", ("compare", "{host}", "--svg", "{host}"),
        r"--svg .*host.toml: is an input of this command"),
    cmd("compare --svg over /dev/null", ("compare", "{host}", "--svg", "/dev/null"),
        r"--svg /dev/null: is a character device"),
    # --- 3. and 9. reading images: ls and diff ------------------------------------------------
    cmd("ls a FIFO", ("ls", "{d}/fifo"), r"fifo: is a FIFO, not a regular file", fifo("fifo")),
    cmd("ls /dev/zero", ("ls", "/dev/zero"), r"/dev/zero: is a character device"),
    cmd("ls an empty file", ("ls", "{d}/empty"), r"empty: empty file, not an initrd",
        write("empty", b"")),
    cmd("ls garbage", ("ls", "{d}/g"), r"g: unrecognised data at offset 0",
        write("g", b"hello world\n")),
    cmd("ls a truncated image", ("ls", "{d}/t"), r"t: truncated zstd stream at offset 0",
        lambda d, mp: (d / "t").write_bytes((d / "prev.img").read_bytes()[:5000])),
    cmd("ls a zstd frame that says 3 GiB", ("ls", "{d}/bomb"), r"bomb: zstd stream at offset 0 "
        r"unpacks to more than 2147483648 bytes", write("bomb", ZSTD_3G)),
    cmd("ls a zstd bomb that says its size", ("ls", "{d}/bomb"), r"bomb: zstd stream at offset 0 "
        r"unpacks to more than 16777216 bytes", zstd_bomb("bomb", 32 << 20, True, b"0"),
        env("BOOTGEN_MAX_UNPACKED", "16M")),
    cmd("ls a zstd bomb of NULs", ("ls", "{d}/bomb"), r"bomb: zstd stream at offset 0 unpacks "
        r"to NUL bytes only", zstd_bomb("bomb", 64 << 20, False)),
    cmd("ls a zstd bomb over the limit", ("ls", "{d}/bomb"), r"unpacks to more than 8388608",
        zstd_bomb("bomb", 64 << 20, False, b"0"), env("BOOTGEN_MAX_UNPACKED", "8M")),
    cmd("ls a gzip bomb", ("ls", "{d}/bomb"), r"gzip stream at offset 0 unpacks to NUL bytes",
        compressed("bomb", "gzip", 32 << 20)),
    cmd("ls an xz bomb", ("ls", "{d}/bomb"), r"xz stream at offset 0 unpacks to NUL bytes",
        compressed("bomb", "xz", 32 << 20)),
    cmd("ls an image over the limit", ("ls", "{img}"), r"prev.img: .* is more than the limit "
        r"of 1 KiB", env("BOOTGEN_MAX_UNPACKED", "1K")),
    cmd("ls with a bad limit", ("ls", "{img}"), r"BOOTGEN_MAX_UNPACKED='lots' is not a size",
        env("BOOTGEN_MAX_UNPACKED", "lots")),
    cmd("ls unreadable", ("ls", "{img}"), r"prev.img: permission denied",
        lambda d, mp: (d / "prev.img").chmod(0), not_root=True),
    cmd("diff with a missing file", ("diff", "{img}", "{d}/none.img"),
        r"none.img: no such file"),
    cmd("diff with a FIFO", ("diff", "{d}/fifo", "{img}"), r"fifo: is a FIFO", fifo("fifo")),
    cmd("diff with garbage", ("diff", "{img}", "{d}/g"), r"^error: .*/g: unrecognised data",
        write("g", b"\x01\x02garbage")),
    cmd("diff with an empty file", ("diff", "{d}/empty", "{img}"), r"empty: empty file",
        write("empty", b"")),
]


def _snapshot(d: Path) -> dict[str, str]:
    """What is in the directory: content digests, link targets, file types."""
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = Path(root, name)
            st = os.lstat(p)
            rel = str(p.relative_to(d))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > 64 << 20:  # sparse test files: size and time tell
                    out[rel] = f"file {st.st_size} {st.st_mtime_ns}"
                    continue
                p.chmod(st.st_mode | 0o400)  # a row may have made it unreadable
                out[rel] = f"{stat.S_IMODE(st.st_mode):o} " + hashlib.sha256(
                    p.read_bytes()).hexdigest()
                p.chmod(stat.S_IMODE(st.st_mode))
            else:
                out[rel] = paths.kind(st.st_mode)
    return out


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """An image a good build wrote: every row starts with it at prev.img."""
    if KVER is None:
        return b"not an image, but bytes to keep"
    d = tmp_path_factory.mktemp("prev")
    (d / "host.toml").write_text(BASE + ROOT)
    res = CliRunner().invoke(main, ["build", str(d / "host.toml"), "-o", str(d / "i.img")])
    assert res.exit_code == 0, res.output
    return (d / "i.img").read_bytes()


def test_the_table_is_big_enough() -> None:
    assert len(ROWS) >= 120
    assert len({r.name for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input(row: Row, previous: bytes, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    if row.not_root and AS_ROOT:
        pytest.skip("root reads and writes anyway; CI runs this as a normal user")
    if row.kernel and KVER is None:
        pytest.skip("no kernel modules under /lib/modules")
    d = tmp_path
    (d / "prev.img").write_bytes(previous)
    (d / "host.toml").write_text((BASE + row.description).replace("{d}", str(d)))
    for make in row.setup:
        make(d, monkeypatch)
    before = _snapshot(d)
    args = [a.format(d=d, host=d / "host.toml", img=d / "prev.img") for a in row.args]
    res = CliRunner().invoke(main, args)
    lines = [line for line in res.stderr.splitlines() if not line.startswith("  … ")]
    assert res.exit_code == row.code, (res.exit_code, res.stderr, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.stderr
    assert lines and all(line.startswith("error: ") for line in lines), res.stderr
    if row.lines > 1:
        assert len(lines) >= row.lines, lines
    else:
        assert len(lines) == 1, lines
    assert re.search(row.pattern, lines[0]), lines[0]
    assert res.stdout == "", res.stdout
    after = _snapshot(d)
    assert after == before, (before, after)  # every file as it was, no temp file left
    assert after["prev.img"].endswith(hashlib.sha256(previous).hexdigest())
