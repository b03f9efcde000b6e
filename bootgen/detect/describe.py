"""`bootgen detect`: a commented host description of a running (or captured) system.

    detect(root, kver=None) -> Detected(text, warnings)

The text is TOML that `bootgen build` accepts as it is; every value in it comes from
chain.walk(), every string goes through emit (escaped), and each section says in a comment where
it was found. Kernel modules are the drivers of the disks' device chains, checked against the
target kernel's module index; the storage features add dm, md and filesystem modules
themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BootgenError, UsageError
from ..features.common import CHECKERS
from ..image import kmod
from .chain import Found, walk
from .emit import Document, NotExpressible, comment_text, string
from .network import Uplink, uplink
from .sysfs import Probe


@dataclass(frozen=True)
class Detected:
    text: str
    warnings: tuple[str, ...]
    found: Found


def target_kernel(root: Path, kver: str | None, running: str | None) -> tuple[str | None, str]:
    """The kernel the modules are checked against and where its modules live ("/" or root)."""
    for base in (str(root), "/"):
        for v in (kver, running):
            if v and os.path.isfile(os.path.join(base, "lib/modules", v, "modules.dep")):
                return v, base
    if kver:
        return None, "/"
    try:
        return kmod.newest_kernel(str(root)), str(root)
    except BootgenError:
        try:
            return kmod.newest_kernel("/"), "/"
        except BootgenError:
            return None, "/"


def modules(found: Found, kver: str | None, base: str) -> tuple[list[tuple[str, str]],
                                                                 list[str]]:
    """(module, why) to load, and warnings; built-in drivers are left out."""
    out: list[tuple[str, str]] = []
    warnings: list[str] = []
    for name, why in sorted(found.drivers.items()):
        reason = "; ".join(why)
        if kver is None:
            out.append((name, reason + " (not checked: no module index)"))
            continue
        kind, names = kmod.lookup(name, kver, root=base)
        if kind == "module":
            out += [(n, reason) for n in names if n not in {m for m, _ in out}]
        elif kind == "unknown":
            warnings.append(f"module {name} ({reason}) is neither a module nor built into "
                            f"kernel {kver}; left out")
    return out, warnings


def suggest_network(d: Document, link: Uplink) -> None:
    """Commented-out [network] for unlocking LUKS over SSH: values escaped as if live."""
    d.blank()
    d.comment(f"To unlock LUKS over SSH, uncomment and review (default route via {link.name}"
              + (f", gateway {link.gateway}" if link.gateway else "") + "):")
    lines = ["[network]", "enable = true", "", "[[network.interfaces]]",
             f"mac = {string(link.mac)}" if link.mac else f"name = {string(link.name)}",
             "dhcp = true", "", "[network.ssh]", "enable = true",
             'authorized_keys = ["/root/.ssh/authorized_keys"]']
    for line in lines:
        d.comment(line)
    if link.module:
        d.comment(f"and add {link.module} (driver of {link.name}) to kernel.available_modules")


def render(found: Found, mods: list[tuple[str, str]], kver: str | None, root: Path,
           link: Uplink | None = None) -> str:
    d = Document()
    d.comment(f"Host description written by `bootgen detect` from {root}"
              + (f" (running kernel {found.running_kernel})." if found.running_kernel else "."))
    d.comment("Review it before you build: the devices (stable names: UUID=, PARTUUID=), the")
    d.comment("kernel modules, the LUKS key settings and [rescue]. Then:")
    d.comment("  bootgen check host.toml --host && bootgen build host.toml -o initrd.img")
    d.table("boot")
    if found.console:
        d.set("kernel_params", found.console,
              "the console of the running kernel (for bootgen verify/shell)")
    if found.resume:
        d.set("resume_device", found.resume, "resume= of the running kernel")
        if found.resume_offset is not None:
            d.set("resume_offset", found.resume_offset)
    for swap in found.swaps:
        d.comment(f"swap {swap} is active: set resume_device to resume from hibernation on it")

    d.table("kernel")
    d.comment("version unset: the newest kernel under /lib/modules when building"
              + (f"; modules checked against {kver}" if kver else ""))
    for name, why in mods:
        d.comment(f"{name}: {why}")
    if found.builtin:
        d.comment(f"built into the running kernel: {', '.join(found.builtin)}")
    d.set("modules", [m for m, _ in mods])

    for lk in found.luks:
        d.table("luks", array=True, note=lk.note)
        d.set("name", lk.name)
        d.set("device", lk.device)
        if lk.key_file:
            d.set("key_file", lk.key_file,
                  "from /etc/crypttab; read at build time into the secrets archive")
        if lk.key_file_device and lk.key_file_path:
            d.set("key_file_device", lk.key_file_device)
            d.set("key_file_path", lk.key_file_path)
        for k, v in sorted(lk.settings.items()):
            d.set(k, v)
        if lk.options:
            d.set("options", lk.options, "from /etc/crypttab")
    for md in found.raids:
        d.table("raid", array=True, note=md.note)
        d.set("name", md.name)
        d.set("uuid", md.uuid)
        d.set("level", md.level)
        d.set("devices", md.devices)
    for vg in found.vgs:
        d.table("lvm", array=True,
                note=f"volume group {vg.name} (volumes in use: {', '.join(vg.volumes)}); its "
                "physical volumes as seen below those volumes")
        d.set("name", vg.name)
        d.set("devices", vg.devices)
    for pool in found.pools:
        d.table("btrfs", array=True, note=f"btrfs {pool.filesystem} on {len(pool.devices)} devices")
        d.set("filesystem", pool.filesystem)
        d.set("devices", pool.devices)
        if pool.profile:
            d.set("profile", pool.profile)
    if found.luks and link is not None:
        suggest_network(d, link)
    for fs in found.filesystems:
        d.table("filesystems", array=True, note=fs.note)
        d.set("mountpoint", fs.mountpoint)
        d.set("device", fs.device)
        d.set("fstype", fs.fstype)
        if fs.options:
            d.set("options", fs.options)
        if fs.mountpoint != "/":
            d.set("needed_for_boot", True)
        if not fs.fsck and fs.fstype in CHECKERS:
            d.set("fsck", False, "pass number 0 in /etc/fstab")
    d.table("rescue")
    d.comment("a rescue shell when stage one fails needs a password hash (or allow_passwordless)")
    d.set("shell_on_fail", True)
    return d.text()


def detect(root: Path, kver: str | None = None, probe: Probe | None = None) -> Detected:
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory", hint="--root takes a tree captured with "
                         "tools/capture-host.sh")
    found = walk(root, probe)
    target, base = target_kernel(root, kver, found.running_kernel)
    warnings = list(found.warnings)
    if target is None:
        warnings.append(f"no module index for kernel {kver or found.running_kernel}: the "
                        "modules are not checked")
    mods, more = modules(found, target, base)
    warnings += more
    try:
        text = render(found, mods, target, root, uplink(root))
    except NotExpressible as e:
        raise UsageError(f"cannot write the description: {e}",
                         hint="rename the device, volume or mount point to UTF-8") from None
    # one line each, whatever the names in them hold
    return Detected(text, tuple(comment_text(w) for w in warnings), found)
