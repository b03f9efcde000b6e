"""The host description schema: one table of typed, documented settings.

Each section is a frozen dataclass; each field carries its documentation and its checks in
`metadata`. The same table drives loading (bootgen.config), the reference (docs/config.md via
bootgen.docs) and the defaults users get. Add a setting here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A checker returns None when the value is fine, else (message, hint).
Check = Callable[[Any], "tuple[str, str] | None"]

COMPRESSIONS = ("zstd", "gzip", "xz", "lz4", "none")
FLAVORS = ("systemd", "scripted")
FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs", "vfat", "f2fs", "squashfs", "tmpfs")
DEVICE_PREFIXES = ("LABEL=", "UUID=", "PARTUUID=", "PARTLABEL=")


def setting(
    doc: str,
    default: Any = None,
    *,
    choices: tuple[str, ...] = (),
    check: Check | None = None,
    example: str = "",
    factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare one setting: its documentation, default, allowed values and extra check."""
    meta = {"doc": doc, "choices": choices, "check": check, "example": example}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- value checks -------------------------------------------------------------------------

_UUID_RE = re.compile(r"^[0-9A-Fa-f]+(-[0-9A-Fa-f]+)*$")


def check_device(value: str) -> tuple[str, str] | None:
    """A block device reference: /dev/... or LABEL=, UUID=, PARTUUID=, PARTLABEL=."""
    if value.startswith("/dev/") and len(value) > 5:
        return None
    for prefix in DEVICE_PREFIXES:
        if value.startswith(prefix):
            rest = value[len(prefix) :]
            if not rest:
                return (f"'{value}' has nothing after '{prefix}'", f"write {prefix}<value>")
            if prefix in ("UUID=", "PARTUUID=") and not _UUID_RE.match(rest):
                return (f"'{rest}' is not a UUID", "use the value blkid prints")
            return None
    return (
        f"'{value}' is not a device reference",
        "use /dev/..., LABEL=, UUID=, PARTUUID= or PARTLABEL=",
    )


def check_abs_path(value: str) -> tuple[str, str] | None:
    if not value.startswith("/"):
        return (f"'{value}' is not an absolute path", f"write '/{value}'")
    if "//" in value or (value != "/" and value.endswith("/")) or "/../" in value + "/":
        return (f"'{value}' is not a normalized path", "remove duplicate or trailing slashes")
    return None


def check_unit_name(value: str) -> tuple[str, str] | None:
    """A unit file or drop-in name relative to /etc/systemd/system."""
    parts = value.split("/")
    units = (".service", ".target", ".mount", ".socket", ".path", ".timer", ".swap",
             ".automount", ".slice")
    ok = (len(parts) == 1 and value.endswith(units)) or (
        len(parts) == 2 and parts[0].endswith(tuple(u + ".d" for u in units))
        and parts[1].endswith(".conf"))
    if not ok:
        return (f"'{value}' is not a unit or drop-in name",
                "e.g. 'hello.service' or 'sysroot.mount.d/override.conf'")
    return None


def check_port(value: int) -> tuple[str, str] | None:
    if not 1 <= value <= 65535:
        return (f"port {value} is out of range", "use 1-65535")
    return None


def check_positive(value: int) -> tuple[str, str] | None:
    if value < 0:
        return (f"{value} is negative", "use 0 or more")
    return None


def check_tries(value: int) -> tuple[str, str] | None:
    if value < 1:
        return (f"{value} tries would never ask", "use 1 or more")
    return None


def check_hash(value: str) -> tuple[str, str] | None:
    if not re.match(r"^\$(1|5|6|y|2[aby]|7|gy)\$", value):
        return ("not a crypt(3) password hash", "generate one with: mkpasswd -m sha-512")
    return None


def check_cidr(value: str) -> tuple[str, str] | None:
    m = re.match(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})/(\d{1,2})$", value)
    if not m or any(int(x) > 255 for x in m.groups()[:4]) or int(m.group(5)) > 32:
        return (f"'{value}' is not an IPv4 address with prefix", "e.g. '10.0.2.15/24'")
    return None


def check_ipv4(value: str) -> tuple[str, str] | None:
    m = re.match(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$", value)
    if not m or any(int(x) > 255 for x in m.groups()):
        return (f"'{value}' is not an IPv4 address", "e.g. '10.0.2.2'")
    return None


def check_mac(value: str) -> tuple[str, str] | None:
    if not re.match(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$", value):
        return (f"'{value}' is not a MAC address", "e.g. '52:54:00:12:34:56'")
    return None


# --- sections -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    """How the image is built and booted."""

    flavor: str = setting("Stage-one flavour; `bootgen build --flavor` overrides.", "systemd",
                          choices=FLAVORS)
    compression: str = setting("Compression of the main archive.", "zstd", choices=COMPRESSIONS)
    compression_level: int | None = setting(
        "Compression level; default: the method's own default (zstd 3, gzip 9, xz 6).", None)
    kernel_params: tuple[str, ...] = setting(
        "Kernel command line for `bootgen verify` and `bootgen shell` (on a real machine the "
        "boot loader's command line is what counts).",
        factory=tuple, example='["console=ttyS0", "quiet"]')
    device_timeout: int = setting(
        "Seconds stage one waits for each needed device before failing.", 30,
        check=check_positive)
    init: str = setting("Program exec'd in the real root (`init=` overrides).", "/sbin/init",
                        check=check_abs_path)


@dataclass(frozen=True)
class Kernel:
    """Which kernel the image is for and which of its modules it carries."""

    version: str | None = setting(
        "Kernel release (`uname -r`); default: the newest under /lib/modules.", None,
        example='"6.1.0-56-amd64"')
    modules: tuple[str, ...] = setting(
        "Modules loaded at the start of stage one, with their dependencies.", factory=tuple,
        example='["virtio_pci", "virtio_blk", "ext4"]')
    available_modules: tuple[str, ...] = setting(
        "Modules included but only loaded on demand (udev, modprobe).", factory=tuple,
        example='["virtio_net"]')


@dataclass(frozen=True)
class Filesystem:
    """A filesystem of the host. `/` and those with `needed_for_boot` are mounted by stage one."""

    mountpoint: str = setting("Where it is mounted in the real root.", "", check=check_abs_path)
    device: str = setting("Block device: /dev/..., LABEL=, UUID=, PARTUUID=, PARTLABEL=.", "",
                          check=check_device)
    fstype: str = setting("Filesystem type.", "", choices=FSTYPES)
    options: tuple[str, ...] = setting("Mount options.", factory=tuple, example='["rw", "noatime"]')
    needed_for_boot: bool = setting(
        "Mount it in stage one (below /sysroot); always true for `/`.", False)
    fsck: bool = setting("Check it with the fstype's fsck before mounting, when one exists.", True)


@dataclass(frozen=True)
class Luks:
    """An encrypted (LUKS) block device opened by stage one as /dev/mapper/<name>."""

    name: str = setting("Name of the opened device (/dev/mapper/<name>).", "")
    device: str = setting("The encrypted device.", "", check=check_device)
    key_file: str | None = setting(
        "Keyfile on the build host, embedded in the separate secrets archive.", None,
        check=check_abs_path)
    key_file_device: str | None = setting(
        "Device holding a keyfile read at boot (with `key_file_path`).", None, check=check_device)
    key_file_path: str | None = setting("Path of the keyfile on `key_file_device`.", None,
                                        check=check_abs_path)
    key_file_size: int | None = setting("Bytes of the keyfile to use.", None, check=check_positive)
    key_file_offset: int | None = setting("Offset of the key in the keyfile.", None,
                                          check=check_positive)
    header: str | None = setting("Detached LUKS header file on the build host.", None,
                                 check=check_abs_path)
    allow_discards: bool = setting("Pass discards (TRIM) through.", False)
    fallback_to_password: bool = setting("Ask for the passphrase when the keyfile fails.", False)
    try_empty_passphrase: bool = setting("Try an empty passphrase before asking.", False)
    tries: int = setting("Passphrase attempts before giving up.", 3, check=check_tries)
    timeout: int = setting("Seconds to wait for the passphrase; 0 = forever.", 0,
                           check=check_positive)
    options: tuple[str, ...] = setting("Extra crypttab options.", factory=tuple)


@dataclass(frozen=True)
class Interface:
    """A network interface configured in stage one."""

    name: str | None = setting("Interface name, e.g. eth0.", None)
    mac: str | None = setting("Match by MAC address instead of name.", None, check=check_mac)
    dhcp: bool = setting("Get an IPv4 address by DHCP.", False)
    address: str | None = setting("Static IPv4 address with prefix.", None, check=check_cidr,
                                  example='"10.0.2.15/24"')
    gateway: str | None = setting("Default gateway.", None, check=check_ipv4)
    dns: tuple[str, ...] = setting("DNS servers.", factory=tuple)
    mtu: int | None = setting("MTU in bytes.", None, check=check_positive)


@dataclass(frozen=True)
class Ssh:
    """An SSH server in stage one, e.g. to type LUKS passphrases remotely."""

    enable: bool = setting("Start an SSH server in stage one.", False)
    port: int = setting("TCP port.", 22, check=check_port)
    server: str = setting("Which server to use.", "dropbear", choices=("dropbear", "openssh"))
    authorized_keys: tuple[str, ...] = setting(
        "Public keys (the key text, or an absolute path to a file of keys).", factory=tuple)
    host_keys: tuple[str, ...] = setting(
        "Host private keys on the build host (OpenSSH format), packed as secrets.",
        factory=tuple)


@dataclass(frozen=True)
class Network:
    """Networking in stage one."""

    enable: bool = setting("Bring the network up in stage one.", False)
    flush_before_switch: bool = setting("Remove addresses before switching to the real root.",
                                        True)
    timeout: int = setting("Seconds to wait for the network when it is needed.", 30,
                           check=check_positive)
    interfaces: tuple[Interface, ...] = setting("Interfaces to configure.", factory=tuple)
    ssh: Ssh = setting("SSH server.", factory=Ssh)


@dataclass(frozen=True)
class Rescue:
    """What happens when stage one fails, and who may use the rescue shell."""

    shell_on_fail: bool = setting("Offer a rescue shell when stage one fails.", True)
    root_password_hash: str | None = setting(
        "crypt(3) hash of the rescue shell's root password.", None, check=check_hash,
        example='"$6$..."')
    allow_passwordless: bool = setting(
        "Allow a rescue shell without a password when no hash is set.", False)


@dataclass(frozen=True)
class ExtraFile:
    """A file copied from the build host into the image."""

    source: str = setting("Path on the build host.", "", check=check_abs_path)
    target: str = setting("Path in the image.", "", check=check_abs_path)
    mode: int | None = setting("Permission bits; default: the source's.", None)


@dataclass(frozen=True)
class Systemd:
    """Additions to the systemd flavour."""

    units: tuple[tuple[str, str], ...] = setting(
        "Extra units or drop-ins: a table of file name (relative to /etc/systemd/system) to "
        "its text.", factory=tuple, check=check_unit_name,
        example='{ "hello.service" = "[Service]\\n..." }')
    wants: tuple[str, ...] = setting("Units pulled in by initrd.target.", factory=tuple)


@dataclass(frozen=True)
class Extra:
    """Anything else the image must carry."""

    binaries: tuple[str, ...] = setting("Extra programs (name or path); their libraries follow.",
                                        factory=tuple)
    libraries: tuple[str, ...] = setting("Extra libraries loaded with dlopen (path or soname).",
                                         factory=tuple)
    files: tuple[ExtraFile, ...] = setting("Extra files.", factory=tuple)


@dataclass(frozen=True)
class Host:
    """One host description."""

    boot: Boot = setting("", factory=Boot)
    kernel: Kernel = setting("", factory=Kernel)
    filesystems: tuple[Filesystem, ...] = setting("", factory=tuple)
    luks: tuple[Luks, ...] = setting("", factory=tuple)
    network: Network = setting("", factory=Network)
    rescue: Rescue = setting("", factory=Rescue)
    systemd: Systemd = setting("", factory=Systemd)
    extra: Extra = setting("", factory=Extra)
    source: str = field(default="<memory>", metadata={"internal": True})

    @property
    def root(self) -> Filesystem:
        return next(f for f in self.filesystems if f.mountpoint == "/")

    @property
    def boot_filesystems(self) -> tuple[Filesystem, ...]:
        """`/` and the needed-for-boot filesystems, parents before children."""
        chosen = [f for f in self.filesystems if f.mountpoint == "/" or f.needed_for_boot]
        return tuple(sorted(chosen, key=lambda f: (f.mountpoint != "/", f.mountpoint.count("/"),
                                                   f.mountpoint)))
