"""lvm: volume groups activated in stage one ([[lvm]]), both flavours.

A filesystem, a LUKS container, a RAID member or the resume device may sit on a logical volume,
named `/dev/VG/LV` or `/dev/mapper/VG-LV`. systemd flavour: lvm2's own udev rules (pvscan and
event activation, as the host's lvm2 package does it) with an lvm.conf that autoactivates the
described VGs only; `rd.lvm.vg=`, `rd.lvm.lv=` and `rd.lvm=0` rewrite that list early (a
generator). Scripted flavour: a pre-mount hook waits for each VG's physical volumes (bounded,
naming what is missing), then runs `lvm vgchange -ay` for the described VGs, with the same
command-line parameters.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .api import (
    Context,
    Contribution,
    Feature,
    Generated,
    Hook,
    Host,
    HostFile,
    Module,
    Program,
    Report,
    Symlink,
    Tables,
    check_device,
    matching,
    setting,
)
from .common import DM_RULES

# LVM's own rules for names: letters, digits and "+_.-", not starting with "-"
check_name = matching(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}", "an LVM volume group name",
                      "letters, digits and '+_.-', not starting with '-'")
NOT_VGS = ("mapper", "disk", "md", "dri", "input", "net", "snd", "pts", "shm", "bus", "cpu")
RULES = ("56-lvm.rules", "69-lvm.rules")
# dm-mod for linear and striped LVs; mirrored, raid, thin or snapshot LVs need their targets
# listed in kernel.available_modules (dm_mirror, dm_raid, dm_thin_pool, dm_snapshot)
MODULES = ("dm_mod",)


@dataclass(frozen=True)
class Lvm:
    """An LVM volume group activated in stage one. Its logical volumes are named by the devices
    that use them: `/dev/<name>/<lv>` or `/dev/mapper/<name>-<lv>`."""

    name: str = setting("Name of the volume group.", "", check=check_name)
    devices: tuple[str, ...] = setting(
        "Its physical volumes: device references (a partition, a /dev/mapper/<luks> volume, a "
        "/dev/md/<array>...). Stage one waits for them and names any that is missing.",
        factory=tuple, check=check_device, example='["PARTLABEL=pv0"]')


LVM = Tables("lvm", Lvm)


def mapper_name(vg: str, lv: str) -> str:
    """Device-mapper's name of an LV: VG-LV with every "-" inside the names doubled."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


_MAPPER = re.compile(r"((?:[^-]|--)+)-((?:[^-]|--)+)\Z")
_DEV = re.compile(r"/dev/([^/]+)/([^/]+)\Z")


def split_lv(ref: str) -> tuple[str, str] | None:
    """(VG, LV) of a reference that names a logical volume by path, else None."""
    if ref.startswith("/dev/mapper/"):
        m = _MAPPER.match(ref.removeprefix("/dev/mapper/"))
        return (m.group(1).replace("--", "-"), m.group(2).replace("--", "-")) if m else None
    m = _DEV.match(ref)
    if m and m.group(1) not in NOT_VGS:
        return m.group(1), m.group(2)
    return None


def logical_volumes(host: Host, refs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The LVs of each described VG that the description uses, in first-use order."""
    vgs = {vg.name: [] for vg in LVM.of(host)}  # type: dict[str, list[str]]
    for _key, ref in refs:
        found = split_lv(ref)
        if found and found[0] in vgs and found[1] not in vgs[found[0]]:
            vgs[found[0]].append(found[1])
    return vgs


def references(host: Host) -> Iterator[tuple[str, str]]:
    for i, vg in enumerate(LVM.of(host)):
        for j, dev in enumerate(vg.devices):
            yield f"lvm[{i}].devices[{j}]", dev


def devices(host: Host, refs: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """/dev/VG/LV and /dev/mapper/VG-LV of every LV the description names."""
    for vg, lvs in logical_volumes(host, refs).items():
        for lv in lvs:
            yield f"/dev/{vg}/{lv}", f"[[lvm]] '{vg}'"
            yield f"/dev/mapper/{mapper_name(vg, lv)}", f"[[lvm]] '{vg}'"


def check(host: Host, report: Report) -> None:
    vgs = LVM.of(host)
    names: dict[str, int] = {}
    for i, vg in enumerate(vgs):
        if not vg.name:
            report.add(f"lvm[{i}].name", "missing", "every [[lvm]] entry needs a name")
        elif vg.name in names:
            report.add(f"lvm[{i}].name", f"'{vg.name}' is also lvm[{names[vg.name]}]")
        names.setdefault(vg.name, i)
        if not vg.devices:
            report.add(f"lvm[{i}].devices", "no physical volume is given",
                       "list the devices that hold the volume group")
        for j, dev in enumerate(vg.devices):
            lv = split_lv(dev)
            if lv and lv[0] == vg.name:
                report.add(f"lvm[{i}].devices[{j}]", f"'{dev}' is a volume of '{vg.name}' itself")
    # /dev/X/Y names volume group X: it must be described
    for key, ref in report.references:
        m = _DEV.match(ref)
        if not m or m.group(1) in NOT_VGS or key.startswith("lvm["):
            continue
        if m.group(1) not in names:
            close = difflib.get_close_matches(m.group(1), names, n=1)
            report.add(key, f"'{ref}' names volume group '{m.group(1)}', which no [[lvm]] "
                       "entry describes",
                       f"did you mean '/dev/{close[0]}/{m.group(2)}'?" if close
                       else f"add [[lvm]] with name = \"{m.group(1)}\" and its devices")


def lvm_conf(flavor: str, vgs: list[str]) -> bytes:
    """lvm.conf for stage one: no metadata backups (nothing to write to), no devices file (it
    would hide PVs the build host did not know), autoactivation of the described VGs only. The
    scripted flavour has no udev: lvm makes the device nodes itself."""
    listed = ", ".join(f'"{vg}"' for vg in vgs)
    udev = flavor == "systemd"
    return (
        "# bootgen: lvm.conf of stage one (from [[lvm]] in the host description)\n"
        "devices {\n    use_devicesfile = 0\n"
        f"    obtain_device_list_from_udev = {int(udev)}\n}}\n"
        "backup {\n    backup = 0\n    archive = 0\n}\n"
        "global {\n    use_lvmpolld = 0\n}\n"
        "activation {\n"
        f"    udev_sync = {int(udev)}\n    udev_rules = {int(udev)}\n"
        "    monitoring = 0\n"
        f"    auto_activation_volume_list = [ {listed} ]\n"
        "}\n"
    ).encode()


def contribute(host: Host, ctx: Context) -> Contribution:
    vgs = LVM.of(host)
    names = [vg.name for vg in vgs]
    view = {"vgs": [{"name": vg.name, "devices": list(vg.devices)} for vg in vgs]}
    common = Contribution(
        programs=(Program("/usr/sbin/lvm"),),
        generated=(Generated("/etc/lvm/lvm.conf", content=lvm_conf(ctx.flavor, names)),),
        modules=tuple(Module(m) for m in MODULES),
    )
    if ctx.flavor == "systemd":
        return Contribution(
            programs=(*common.programs, Program("/usr/bin/systemd-run"),
                      Program("/usr/sbin/dmsetup")),
            files=tuple(HostFile(f"/usr/lib/udev/rules.d/{r}") for r in (*DM_RULES, *RULES)),
            generated=(*common.generated,
                       Generated("/usr/lib/systemd/system-generators/bootgen-lvm-generator",
                                 template="units/lvm-generator.sh.j2", mode=0o755, view=view)),
            modules=common.modules,
        )
    return Contribution(
        programs=common.programs,
        generated=common.generated,
        symlinks=(Symlink("/usr/sbin/vgchange", "lvm"),),
        hooks=(Hook("pre-mount", "scripts-legacy/lvm.sh.j2", view=view,
                    after=ctx.after([d for vg in vgs for d in vg.devices], "lvm")),),
        modules=common.modules,
    )


FEATURE = Feature(
    name="lvm",
    doc="LVM volume groups activated in stage one ([[lvm]], rd.lvm.*)",
    applies=lambda host, ctx: bool(LVM.of(host)),
    contribute=contribute,
    sections=(LVM,),
    check=check,
    devices=devices,
    references=references,
)

