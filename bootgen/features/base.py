"""base: the layout every image has, its device nodes, /etc/initrd-release, the root account
and the standard groups, and the kernel modules the description names."""

from __future__ import annotations

from .. import __version__
from .api import (
    Context,
    Contribution,
    DevNode,
    Dir,
    Feature,
    Generated,
    Group,
    Host,
    HostFile,
    Module,
    Symlink,
    User,
)
from .common import FS_MODULES

# The usr-merged layout of Debian: top-level directories are links into /usr.
MERGED_USR = ("/bin", "/sbin", "/lib", "/lib64")

# The groups udev rules name (50-udev-default.rules), with Debian's ids.
GROUPS = (("root", 0), ("tty", 5), ("disk", 6), ("lp", 7), ("kmem", 15), ("dialout", 20),
          ("cdrom", 24), ("floppy", 25), ("tape", 26), ("audio", 29), ("video", 44),
          ("utmp", 43), ("input", 105), ("sgx", 106), ("kvm", 107), ("render", 108))


def initrd_release(flavor: str) -> bytes:
    return (
        'NAME="bootgen"\n'
        "ID=bootgen\n"
        f'VERSION_ID="{__version__}"\n'
        f'PRETTY_NAME="bootgen initrd ({flavor} stage one)"\n'
        f"VARIANT_ID={flavor}\n"
    ).encode()


def root_password(host: Host) -> str:
    """root's shadow field: the rescue password hash, empty (no password) or locked."""
    return {"password": host.rescue.root_password_hash or "", "open": ""}.get(
        host.rescue.access, "*")


def contribute(host: Host, ctx: Context) -> Contribution:
    fs_modules = sorted({m for fs in host.boot_filesystems for m in FS_MODULES[fs.fstype]})
    return Contribution(
        dirs=tuple(Dir(p) for p in ("/dev", "/proc", "/sys", "/run", "/sysroot", "/etc", "/root",
                                     "/usr/bin", "/usr/sbin", "/usr/lib", "/var"))
        + (Dir("/tmp", 0o1777),),
        files=tuple(HostFile(p) for p in MERGED_USR),
        symlinks=(Symlink("/var/run", "../run"),),
        devnodes=(
            DevNode("/dev/console", "c", 5, 1, 0o600),
            DevNode("/dev/null", "c", 1, 3, 0o666),
            DevNode("/dev/kmsg", "c", 1, 11, 0o644),
        ),
        generated=(
            Generated("/etc/initrd-release", content=initrd_release(ctx.flavor)),
            Generated("/etc/os-release", content=initrd_release(ctx.flavor)),
        ),
        modules=tuple(Module(m, load=True) for m in host.kernel.modules)
        + tuple(Module(m, load=False) for m in host.kernel.available_modules)
        + tuple(Module(m, load=True) for m in fs_modules),
        users=(User("root", 0, 0, "root", "/root", "/bin/sh", password=root_password(host)),),
        groups=tuple(Group(name, gid) for name, gid in GROUPS),
    )


FEATURE = Feature(
    name="base",
    doc="Directory layout (usr-merged), /dev nodes, /etc/initrd-release, root account, kernel "
        "modules",
    applies=lambda host, ctx: True,
    contribute=contribute,
)
