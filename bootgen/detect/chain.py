"""From the mounted filesystems down to the disks: what stage one must bring up, as data.

    walk(root, kver) -> Found

For each filesystem stage one mounts (/, /usr, those fstab marks x-initrd.mount) and the resume
device: its block device, then each layer below it (dm-crypt, LVM, md, partition) to the disks,
and the drivers of the disks' device chains. Each layer is named the way the description names
it: a LUKS volume by its LUKS UUID, a member of an array or volume group by PARTUUID, a volume as
/dev/mapper/<name>, /dev/<vg>/<lv> or /dev/md/<name>, a filesystem by its UUID; /dev/sdX only
when nothing stable exists, with a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import FSTYPES
from ..config.settings import check_plain_path
from ..features.lvm import split_lv
from . import tables
from .sysfs import Block, Blocks, Probe, read, scan

# fstab options that are not mount options of the filesystem, or not for stage one
DROPPED_OPTIONS = ("defaults", "auto", "noauto", "nofail", "user", "nouser", "users", "owner",
                   "x-initrd.mount", "_netdev", "comment")


@dataclass
class Filesystem:
    mountpoint: str
    device: str
    fstype: str
    options: list[str]
    fsck: bool
    note: str


@dataclass
class Luks:
    name: str
    device: str
    note: str
    key_file: str | None = None
    key_file_device: str | None = None
    key_file_path: str | None = None
    settings: dict[str, int | bool] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)


@dataclass
class Raid:
    name: str
    uuid: str
    level: str
    devices: list[str]
    note: str


@dataclass
class VolumeGroup:
    name: str
    devices: list[str]
    volumes: list[str]


@dataclass
class Pool:  # a btrfs on several devices
    filesystem: str
    devices: list[str]
    profile: str | None


@dataclass
class Found:
    root: Path
    running_kernel: str | None
    filesystems: list[Filesystem] = field(default_factory=list)
    luks: list[Luks] = field(default_factory=list)
    raids: list[Raid] = field(default_factory=list)
    vgs: list[VolumeGroup] = field(default_factory=list)
    pools: list[Pool] = field(default_factory=list)
    resume: str | None = None
    resume_offset: int | None = None
    swaps: list[str] = field(default_factory=list)  # active swap not used for resume
    drivers: dict[str, list[str]] = field(default_factory=dict)  # module -> why
    builtin: list[str] = field(default_factory=list)  # drivers built into the running kernel
    console: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Walker:
    def __init__(self, root: Path, probe: Probe | None) -> None:
        self.root = root
        self.blocks: Blocks = scan(root, probe)
        self.found = Found(root, (read(root, "proc/sys/kernel/osrelease") or "").strip() or None)
        self.crypttab = {e.name: e for e in tables.crypttab(read(root, "etc/crypttab") or "")}
        self.seen: set[str] = set()

    def warn(self, text: str) -> None:
        if text not in self.found.warnings:
            self.found.warnings.append(text)

    # --- how the description names a device ----------------------------------------------

    def volume_ref(self, b: Block) -> str | None:
        """A device stage one creates: /dev/mapper/<luks>, /dev/<vg>/<lv>, /dev/md/<name>."""
        if b.kind == "crypt" and b.dm_name:
            return f"/dev/mapper/{b.dm_name}"
        if b.kind == "lvm":
            vg_lv = self.vg_lv(b)
            return f"/dev/{vg_lv[0]}/{vg_lv[1]}" if vg_lv else None
        if b.kind == "md":
            name = self.md_name(b)
            return f"/dev/md/{name}" if name else None
        return None

    def member_ref(self, b: Block, what: str) -> str:
        """A device below a layer: stable names first, /dev/<kernel name> last."""
        ref = self.volume_ref(b)
        if ref:
            return ref
        if b.fs_type == "crypto_LUKS" and b.fs_uuid:
            return f"UUID={b.fs_uuid}"
        if b.part_uuid:
            return f"PARTUUID={b.part_uuid}"
        if b.fs_uuid and b.fs_type not in ("linux_raid_member", "btrfs"):
            return f"UUID={b.fs_uuid}"
        by_id = [link for link in self.blocks.dev_links(b) if link.startswith("/dev/disk/by-id/")
                 and not link.startswith(("/dev/disk/by-id/dm-", "/dev/disk/by-id/md-"))]
        if by_id:
            return sorted(by_id, key=lambda s: (len(s), s))[0]
        self.warn(f"{what}: /dev/{b.name} has no stable name (no PARTUUID, UUID or by-id link); "
                  f"it is written as /dev/{b.name}, which can change between boots")
        return f"/dev/{b.name}"

    def fs_ref(self, b: Block, mountpoint: str, spec: str | None) -> str:
        ref = self.volume_ref(b)
        if ref:
            return ref
        if b.fs_uuid:
            return f"UUID={b.fs_uuid}"
        if spec and spec.startswith(("UUID=", "PARTUUID=", "LABEL=", "PARTLABEL=")) and (
                self.blocks.find(spec) == b or not b.udev.properties):
            return spec  # fstab's name, when udev's database does not contradict it
        return self.member_ref(b, mountpoint)

    def vg_lv(self, b: Block) -> tuple[str, str] | None:
        vg, lv = b.prop("DM_VG_NAME"), b.prop("DM_LV_NAME")
        if vg and lv:
            return vg, lv
        return split_lv(f"/dev/mapper/{b.dm_name}") if b.dm_name else None

    def md_name(self, b: Block) -> str | None:
        name = b.prop("MD_DEVNAME")
        if name:
            return name
        for link in self.blocks.dev_links(b):
            if link.startswith("/dev/md/"):
                return link.removeprefix("/dev/md/")
        self.warn(f"/dev/{b.name}: the array has no /dev/md/<name> (no MD_DEVNAME in the udev "
                  "database)")
        return None

    # --- the layers -----------------------------------------------------------------------

    def visit(self, b: Block, used_by: str) -> None:
        if b.name in self.seen:
            return
        self.seen.add(b.name)
        kind = b.kind
        if kind == "crypt":
            self.crypt(b, used_by)
        elif kind == "lvm":
            self.lvm(b, used_by)
        elif kind == "md":
            self.md(b, used_by)
        elif kind == "part" and b.disk:
            disk = self.blocks.by_name.get(b.disk)
            if disk:
                self.visit(disk, used_by)
        elif kind == "disk":
            self.disk(b, used_by)
        else:
            self.warn(f"{used_by}: /dev/{b.name} is a device-mapper device of a kind detect "
                      f"does not describe ({(b.dm_uuid or '?').split('-')[0]}); add it by hand")
        if kind in ("crypt", "lvm", "md", "dm"):
            for s in b.slaves:
                if s in self.blocks.by_name:
                    self.visit(self.blocks.by_name[s], used_by)

    def lower(self, b: Block, what: str) -> Block | None:
        if len(b.slaves) != 1 or b.slaves[0] not in self.blocks.by_name:
            self.warn(f"{what}: cannot tell which device is below /dev/{b.name}")
            return None
        return self.blocks.by_name[b.slaves[0]]

    def crypt(self, b: Block, used_by: str) -> None:
        name = b.dm_name or b.name
        if not (b.dm_uuid or "").startswith("CRYPT-LUKS"):
            self.warn(f"{used_by}: /dev/mapper/{name} is dm-crypt without LUKS "
                      f"({b.dm_uuid}); only LUKS is described")
            return
        below = self.lower(b, f"/dev/mapper/{name}")
        if below is None:
            return
        lk = Luks(name, self.member_ref(below, f"/dev/mapper/{name}"),
                  f"/dev/mapper/{name}: LUKS on /dev/{below.name}, used by {used_by}")
        entry = self.crypttab.get(name)
        if entry is None:
            self.warn(f"/dev/mapper/{name}: no /etc/crypttab line; it is described to ask for a "
                      "passphrase")
        else:
            self.crypttab_options(lk, entry)
        self.found.luks.append(lk)

    def crypttab_options(self, lk: Luks, e: tables.CrypttabEntry) -> None:
        where = f"/etc/crypttab: {lk.name}"
        if e.key not in ("", "none", "-"):
            path, sep, dev = e.key.partition(":")
            if sep and dev:
                lk.key_file_path, lk.key_file_device = path, dev
            elif e.key.startswith("/dev/"):
                self.warn(f"{where}: the key is a device ({e.key}); add key_file_device and "
                          "key_file_path by hand")
            else:
                lk.key_file = e.key  # by path: the file itself is never read
        numbers = {"tries": "tries", "keyfile-size": "key_file_size",
                   "keyfile-offset": "key_file_offset", "timeout": "timeout"}
        skip = ("luks", "initramfs", "noauto", "nofail", "headless", "headless=yes", "swap",
                "x-initrd.attach", "noearly")
        for opt in e.options:
            k, _, v = opt.partition("=")
            if k in numbers and v.rstrip("s").isdigit():
                lk.settings[numbers[k]] = int(v.rstrip("s"))
            elif opt == "discard":
                lk.settings["allow_discards"] = True
            elif k in ("try-empty-password",) and v in ("", "yes", "true", "1"):
                lk.settings["try_empty_passphrase"] = True
            elif k == "header":
                self.warn(f"{where}: a detached header ({v}); add header by hand")
            elif k in ("keyscript", "tpm2-device", "fido2-device", "pkcs11-uri"):
                self.warn(f"{where}: option {opt!r} is not described; the volume asks for a "
                          "passphrase instead")
            elif opt in skip or k in ("keyslot", "key-slot"):
                continue
            elif all(c.isalnum() or c in "_.:/=+-" for c in opt):
                lk.options.append(opt)
            else:
                self.warn(f"{where}: option {opt!r} dropped")

    def lvm(self, b: Block, used_by: str) -> None:
        vg_lv = self.vg_lv(b)
        if vg_lv is None:
            self.warn(f"{used_by}: cannot tell the volume group of /dev/mapper/{b.dm_name}")
            return
        vg = next((g for g in self.found.vgs if g.name == vg_lv[0]), None)
        if vg is None:
            vg = VolumeGroup(vg_lv[0], [], [])
            self.found.vgs.append(vg)
        vg.volumes.append(vg_lv[1])
        for s in b.slaves:
            pv = self.blocks.by_name.get(s)
            if pv is not None:
                ref = self.member_ref(pv, f"volume group {vg_lv[0]}")
                if ref not in vg.devices:
                    vg.devices.append(ref)

    def md(self, b: Block, used_by: str) -> None:
        name = self.md_name(b) or b.name
        uuid = b.prop("MD_UUID") or b.md_uuid
        level = (b.md_level or b.prop("MD_LEVEL") or "").strip()
        if not uuid:
            self.warn(f"/dev/{b.name}: the array's UUID is unknown (no MD_UUID); add it by hand")
            uuid = "00000000:00000000:00000000:00000000"
        members = [self.member_ref(self.blocks.by_name[s], f"/dev/md/{name}")
                   for s in b.slaves if s in self.blocks.by_name]
        self.found.raids.append(Raid(name, uuid, level, members,
                                     f"/dev/md/{name}: {level} of {len(members)} devices, used by "
                                     f"{used_by}"))

    def disk(self, b: Block, used_by: str) -> None:
        if not b.drivers:
            self.warn(f"/dev/{b.name}: no driver found in sysfs for it")
        for d in b.drivers:
            if d.module is None:  # no module link: built into the running kernel
                if d.driver not in self.found.builtin:
                    self.found.builtin.append(d.driver)
                continue
            why = f"{d.driver} driver of {d.device.rsplit('/', 1)[-1]} (under /dev/{b.name})"
            reasons = self.found.drivers.setdefault(d.module, [])
            if why not in reasons:
                reasons.append(why)

    # --- filesystems --------------------------------------------------------------------------

    def filesystem(self, m: tables.Mount, entry: tables.FstabEntry | None) -> None:
        where = m.mountpoint
        bad = check_plain_path(where)
        if bad is not None:
            # never a value that units, fstab and the init script could not carry as it is
            self.warn(f"{where}: left out: {bad[0]} ({bad[1]})")
            return
        if m.fstype not in FSTYPES:
            self.warn(f"{where}: filesystem type {m.fstype!r} is not one bootgen mounts; add "
                      "it by hand")
            return
        b = None if m.devno.startswith("0:") else self.blocks.by_devno(m.devno)
        b = b or self.blocks.find(m.source) or (self.blocks.find(entry.spec) if entry else None)
        if b is None:
            self.warn(f"{where}: its device {m.source} ({m.devno}) is not found in sysfs")
            return
        opts = [o for o in (entry.options if entry else m.options)
                if o not in DROPPED_OPTIONS and not o.startswith(("x-", "comment="))]
        if m.fstype == "btrfs" and not any(o.startswith(("subvol=", "subvolid=")) for o in opts):
            if m.root not in ("", "/"):
                opts.append(f"subvol={m.root.lstrip('/')}")
        device = self.fs_ref(b, where, entry.spec if entry else None)
        if m.fstype == "btrfs":
            device = self.btrfs(b, device, where)
        fsck = entry.passno > 0 if entry else True
        self.found.filesystems.append(Filesystem(
            where, device, m.fstype, opts, fsck,
            f"{where}: {m.fstype} on /dev/{b.name}"
            + (f" (fstab: {entry.spec})" if entry else " (not in /etc/fstab)")))
        self.visit(b, where)

    def btrfs(self, b: Block, device: str, where: str) -> str:
        uuid = b.fs_uuid
        if not uuid:
            return device
        members = []
        base = self.root / "sys" / "fs" / "btrfs" / uuid / "devices"
        try:
            members = sorted(os.listdir(base))
        except OSError:
            pass
        if len(members) < 2:
            return device
        ref = f"UUID={uuid}"
        if any(p.filesystem == ref for p in self.found.pools):
            return ref
        devs = []
        for name in members:
            mb = self.blocks.by_name.get(name)
            if mb is None:
                self.warn(f"{where}: btrfs member {name} is not found in sysfs")
                continue
            devs.append(self.member_ref(mb, f"btrfs {uuid}"))
            self.visit(mb, where)
        profile = None
        try:
            kinds = os.listdir(self.root / "sys" / "fs" / "btrfs" / uuid / "allocation" / "data")
            profile = next((k for k in ("raid10", "raid1", "raid0", "dup", "single")
                            if k in kinds), None)
        except OSError:
            pass
        self.found.pools.append(Pool(ref, devs, profile))
        return ref


def walk(root: Path, probe: Probe | None = None) -> Found:
    """Everything stage one must bring up on the system below `root` (`probe`: see scan)."""
    w = _Walker(root, probe)
    mounts = {m.mountpoint: m for m in tables.mountinfo(read(root, "proc/self/mountinfo") or "")}
    entries = {e.file: e for e in tables.fstab(read(root, "etc/fstab") or "")}
    if "/" not in mounts:
        w.warn("/proc/self/mountinfo has no / mount: nothing to describe")
    wanted = ["/"] + [p for p in ("/usr",) if p in mounts]
    wanted += sorted(p for p, e in entries.items()
                     if "x-initrd.mount" in e.options and p not in wanted)
    for point in wanted:
        if point in mounts:
            w.filesystem(mounts[point], entries.get(point))
        elif point != "/":
            w.warn(f"{point}: in /etc/fstab with x-initrd.mount but not mounted; add it by hand")
    params = tables.cmdline(read(root, "proc/cmdline") or "")
    # the last console= is /dev/console: keep each one's last place
    consoles = [f"console={v}" for k, v in params if k == "console" and v]
    w.found.console = list(reversed(dict.fromkeys(reversed(consoles))))
    root_fs = next((f for f in w.found.filesystems if f.mountpoint == "/"), None)
    mode = next((k for k, v in reversed(params) if k in ("rw", "ro") and v is None), None)
    if root_fs and mode and not {"rw", "ro"} & set(root_fs.options):
        root_fs.options.insert(0, mode)  # as the running kernel mounted it
    resume = tables.param(params, "resume")
    if resume:
        b = w.blocks.find(resume)
        if b is None:
            w.warn(f"resume={resume} (kernel command line): not found")
        else:
            w.found.resume = w.member_ref(b, "resume") if b.kind not in (
                "crypt", "lvm", "md") else w.volume_ref(b)
            offset = tables.param(params, "resume_offset")
            if offset and offset.isdigit():
                w.found.resume_offset = int(offset)
            w.visit(b, "resume")
    for swap in tables.swaps(read(root, "proc/swaps") or ""):
        b = w.blocks.find(swap)
        if b is None or b.name not in w.seen:
            w.found.swaps.append(swap)
    return w.found
