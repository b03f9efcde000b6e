"""base: the layout every image has, the device nodes, /etc/initrd-release, kernel modules."""

from __future__ import annotations

from .. import __version__
from ..schema import Host
from ..spec import Contribution, DevNode, Dir, Generated, HostFile, Module, Symlink
from . import Context, Feature

# Kernel modules a filesystem type needs (the fs module's own dependencies follow from modules.dep).
FS_MODULES: dict[str, tuple[str, ...]] = {
    "ext4": ("ext4",),
    "ext3": ("ext4",),
    "ext2": ("ext4",),
    "xfs": ("xfs",),
    "btrfs": ("btrfs",),
    "vfat": ("vfat", "nls_cp437", "nls_iso8859_1"),
    "f2fs": ("f2fs",),
    "squashfs": ("squashfs",),
    "tmpfs": (),
}

# The usr-merged layout of Debian: top-level directories are links into /usr.
MERGED_USR = ("/bin", "/sbin", "/lib", "/lib64")


def initrd_release(flavor: str) -> bytes:
    return (
        'NAME="bootgen"\n'
        "ID=bootgen\n"
        f'VERSION_ID="{__version__}"\n'
        f'PRETTY_NAME="bootgen initrd ({flavor} stage one)"\n'
        f"VARIANT_ID={flavor}\n"
    ).encode()


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
    )


FEATURE = Feature(
    name="base",
    doc="Directory layout (usr-merged), /dev nodes, /etc/initrd-release, kernel modules",
    applies=lambda host, ctx: True,
    contribute=contribute,
)
