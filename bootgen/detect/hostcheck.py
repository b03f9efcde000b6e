"""`bootgen check HOST --host`: a description against the machine it is for, before a reboot.

    check_host(host, root, kver) -> [problem, ...]     one line each, "<key>: <what>"

Every device the description names exists and is what it says (filesystem type, LUKS, the
array's UUID, an active volume group), every kernel module exists for the target kernel, every
keyfile and header is readable, and the running kernel's command line (root=, rootfstype=,
resume=) does not contradict the description.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config.schema import Host
from ..features.btrfs import BTRFS
from ..features.luks import LUKS
from ..features.lvm import LVM
from ..features.mdraid import RAID, mdadm_uuid
from ..image import kmod
from . import tables
from .describe import target_kernel
from .sysfs import Block, Blocks, Probe, inside, read, scan


def _uuid(value: str) -> str:
    return value.replace("-", "").replace(":", "").lower()


class _Checker:
    def __init__(self, host: Host, root: Path, probe: Probe | None) -> None:
        self.host = host
        self.root = root
        self.blocks: Blocks = scan(root, probe)
        self.problems: list[str] = []

    def add(self, key: str, what: str) -> None:
        self.problems.append(f"{key}: {what}")

    def device(self, key: str, ref: str) -> Block | None:
        b = self.blocks.find(ref)
        if b is None:
            self.add(key, f"{ref} is not on this machine (not in sysfs or the udev database)")
        return b

    def filesystems(self) -> None:
        mounts = {m.mountpoint: m for m in tables.mountinfo(
            read(self.root, "proc/self/mountinfo") or "")}
        for i, fs in enumerate(self.host.filesystems):
            if fs.fstype == "tmpfs":
                continue
            key = f"filesystems[{i}].device"
            b = self.device(key, fs.device)
            if b is None:
                continue
            if b.fs_type and b.fs_type != fs.fstype:
                self.add(f"filesystems[{i}].fstype", f"{fs.device} (/dev/{b.name}) holds "
                         f"{b.fs_type}, not {fs.fstype}")
            m = mounts.get(fs.mountpoint)
            if m is not None and not m.devno.startswith("0:") and m.devno != b.devno:
                self.add(key, f"{fs.mountpoint} is mounted from {m.source} now, not from "
                         f"{fs.device} (/dev/{b.name})")
            elif m is not None and m.fstype != fs.fstype:
                self.add(f"filesystems[{i}].fstype", f"{fs.mountpoint} is mounted as {m.fstype} "
                         f"now, not {fs.fstype}")

    def luks(self) -> None:
        for i, lk in enumerate(LUKS.of(self.host)):
            b = self.device(f"luks[{i}].device", lk.device)
            if b is not None and b.fs_type is not None and b.fs_type != "crypto_LUKS":
                self.add(f"luks[{i}].device", f"{lk.device} (/dev/{b.name}) is {b.fs_type}, "
                         "not a LUKS volume")
            opened = self.blocks.find(f"/dev/mapper/{lk.name}")
            if b is not None and opened is not None and opened.slaves != (b.name,):
                self.add(f"luks[{i}].device", f"/dev/mapper/{lk.name} is open from "
                         f"/dev/{', '.join(opened.slaves) or '?'} now, not from {lk.device} "
                         f"(/dev/{b.name})")
            for k in ("key_file", "header"):
                path = getattr(lk, k)
                if path:
                    self.readable(f"luks[{i}].{k}", path)
            if lk.key_file_device:
                self.device(f"luks[{i}].key_file_device", lk.key_file_device)

    def readable(self, key: str, path: str) -> None:
        real = inside(self.root, path)
        if real is None or not real.is_file():
            self.add(key, f"{path} does not exist")
        elif not os.access(real, os.R_OK):
            self.add(key, f"{path} is not readable by this user (build as root?)")

    def storage(self) -> None:
        for i, md in enumerate(RAID.of(self.host)):
            for j, ref in enumerate(md.devices):
                b = self.device(f"raid[{i}].devices[{j}]", ref)
                got = b.prop("MD_UUID") if b is not None else None
                if got and _uuid(got) != _uuid(md.uuid):
                    self.add(f"raid[{i}].devices[{j}]", f"{ref} belongs to array "
                             f"{mdadm_uuid(got)}, not {mdadm_uuid(md.uuid)}")
        for i, vg in enumerate(LVM.of(self.host)):
            for j, ref in enumerate(vg.devices):
                b = self.device(f"lvm[{i}].devices[{j}]", ref)
                if b is not None and b.fs_type and b.fs_type != "LVM2_member":
                    self.add(f"lvm[{i}].devices[{j}]", f"{ref} (/dev/{b.name}) is {b.fs_type}, "
                             "not an LVM physical volume")
            if not any(b.prop("DM_VG_NAME") == vg.name for b in self.blocks.by_name.values()):
                self.add(f"lvm[{i}].name", f"no volume of volume group {vg.name} is active")
        for i, pool in enumerate(BTRFS.of(self.host)):
            for j, ref in enumerate(pool.devices):
                b = self.device(f"btrfs[{i}].devices[{j}]", ref)
                if b is not None and b.fs_type and b.fs_type != "btrfs":
                    self.add(f"btrfs[{i}].devices[{j}]", f"{ref} (/dev/{b.name}) is "
                             f"{b.fs_type}, not btrfs")
        if self.host.boot.resume_device:
            b = self.device("boot.resume_device", self.host.boot.resume_device)
            if b is not None and b.fs_type and b.fs_type not in ("swap", "crypto_LUKS"):
                self.add("boot.resume_device", f"{self.host.boot.resume_device} is "
                         f"{b.fs_type}, not swap")

    def modules(self, kver: str | None) -> None:
        target, base = target_kernel(self.root, kver or self.host.kernel.version, None)
        if target is None:
            self.add("kernel.version", f"kernel {kver or self.host.kernel.version or '?'} has "
                     "no modules under /lib/modules")
            return
        for key in ("modules", "available_modules"):
            for j, name in enumerate(getattr(self.host.kernel, key)):
                if kmod.lookup(name, target, root=base)[0] == "unknown":
                    self.add(f"kernel.{key}[{j}]", f"{name} is neither a module nor built into "
                             f"kernel {target}")

    def cmdline(self) -> None:
        params = tables.cmdline(read(self.root, "proc/cmdline") or "")
        root = tables.param(params, "root")
        fs = next((f for f in self.host.filesystems if f.mountpoint == "/"), None)
        if root and fs is not None:
            mine, theirs = self.blocks.find(fs.device), self.blocks.find(root)
            if theirs is None:
                self.add("filesystems[/].device", f"the kernel command line's root={root} is "
                         "not on this machine")
            elif mine is not None and mine.devno != theirs.devno:
                self.add("filesystems[/].device", f"the kernel command line says root={root} "
                         f"(/dev/{theirs.name}), the description {fs.device} (/dev/{mine.name})")
        fstype = tables.param(params, "rootfstype")
        if fstype and fs is not None and fstype != fs.fstype:
            self.add("filesystems[/].fstype", f"the kernel command line says rootfstype="
                     f"{fstype}, the description {fs.fstype}")
        resume = tables.param(params, "resume")
        if resume and self.host.boot.resume_device:
            a = self.blocks.find(resume)
            b = self.blocks.find(self.host.boot.resume_device)
            if a is not None and b is not None and a.devno != b.devno:
                self.add("boot.resume_device", f"the kernel command line says resume={resume} "
                         f"(/dev/{a.name}), the description {self.host.boot.resume_device}")


def check_host(host: Host, root: Path, kver: str | None = None,
               probe: Probe | None = None) -> list[str]:
    """Every problem between the description and the machine below `root`, one line each
    (`probe`: see sysfs.scan; blkid for this machine)."""
    c = _Checker(host, root, probe)
    if not c.blocks.by_name:
        return [f"{root}: no block devices in sys/class/block (is sysfs mounted?)"]
    c.filesystems()
    c.luks()
    c.storage()
    c.modules(kver)
    c.cmdline()
    return c.problems
