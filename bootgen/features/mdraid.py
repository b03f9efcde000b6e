"""mdraid: Linux software RAID arrays assembled in stage one ([[raid]]), both flavours.

An array is `/dev/md/<name>`. Stage one gets an mdadm.conf that names the described arrays by
UUID and nothing else (`AUTO -all`). systemd flavour: mdadm's own udev rules assemble members
as they appear (`mdadm --incremental`), and mdadm's last-resort timer starts an array that is
still incomplete after `degraded_timeout` seconds, with a console line saying it is degraded.
Scripted flavour: a pre-mount hook waits up to `degraded_timeout` seconds for every member,
then assembles the array, degraded if members are missing and enough are there. `rd.md=0`
assembles nothing, `rd.md.uuid=<uuid>` (repeatable) only those arrays.
"""

from __future__ import annotations

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
    Tables,
    check_device,
    check_positive,
    matching,
    setting,
)
from .common import UNIT_DIR

LEVELS = ("raid1", "raid0", "raid10", "raid4", "raid5", "raid6", "linear")
MODULES = {"raid0": "raid0", "raid1": "raid1", "raid10": "raid10", "raid4": "raid456",
           "raid5": "raid456", "raid6": "raid456", "linear": "linear"}


def members_needed(level: str, count: int) -> int:
    """How many of `count` members a degraded array of `level` needs to start."""
    missing_ok = {"raid1": count - 1, "raid10": 1, "raid4": 1, "raid5": 1, "raid6": 2}
    return max(1, count - missing_ok.get(level, 0))

RULES = ("63-md-raid-arrays.rules", "64-md-raid-assembly.rules")
UNITS = ("mdadm-last-resort@.timer", "mdadm-last-resort@.service")

check_name = matching(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,31}", "an md array name",
                      "letters, digits, '_', '.', '+' and '-' (it becomes /dev/md/<name>)")
_UUID = re.compile(r"[0-9a-fA-F]{8}(:[0-9a-fA-F]{8}){3}|[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}"
                   r"-[0-9a-fA-F]{12}")


def check_uuid(value: str) -> tuple[str, str] | None:
    if not _UUID.fullmatch(value):
        return (f"'{value}' is not an md array UUID",
                "as mdadm --detail prints it (8:8:8:8 hex digits) or as blkid does")
    return None


def mdadm_uuid(value: str) -> str:
    """The UUID as mdadm writes it: four groups of 8 hex digits joined by ':'."""
    digits = value.replace("-", "").replace(":", "").lower()
    return ":".join(digits[i:i + 8] for i in range(0, 32, 8))


@dataclass(frozen=True)
class Raid:
    """A software RAID array (mdadm) assembled in stage one as /dev/md/<name>."""

    name: str = setting("Name of the array: it becomes /dev/md/<name>.", "", check=check_name)
    uuid: str = setting("The array's UUID (`mdadm --detail` or `blkid` of a member).", "",
                        check=check_uuid, example='"3f2c2a5e:8a4b1c9d:0e6f7a8b:9c0d1e2f"')
    level: str = setting("RAID level.", "raid1", choices=LEVELS)
    devices: tuple[str, ...] = setting(
        "Its member devices (device references; a /dev/mapper/<luks> volume works too).",
        factory=tuple, check=check_device, example='["PARTLABEL=raid-a", "PARTLABEL=raid-b"]')
    degraded_timeout: int = setting(
        "Seconds to wait for missing members before the array starts degraded; 0: never start "
        "a degraded array. At most boot.device_timeout - 15.", 10, check=check_positive)


RAID = Tables("raid", Raid)


def references(host: Host) -> Iterator[tuple[str, str]]:
    for i, md in enumerate(RAID.of(host)):
        for j, dev in enumerate(md.devices):
            yield f"raid[{i}].devices[{j}]", dev


def devices(host: Host, refs: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for md in RAID.of(host):
        yield f"/dev/md/{md.name}", f"[[raid]] '{md.name}'"


def check(host: Host, report: Report) -> None:
    arrays = RAID.of(host)
    names: dict[str, int] = {}
    uuids: dict[str, int] = {}
    for i, md in enumerate(arrays):
        for req in ("name", "uuid"):
            if not getattr(md, req):
                report.add(f"raid[{i}].{req}", "missing", "every [[raid]] entry needs name, "
                           "uuid and devices")
        if md.name in names:
            report.add(f"raid[{i}].name", f"'{md.name}' is also raid[{names[md.name]}]")
        names.setdefault(md.name, i)
        if md.uuid and mdadm_uuid(md.uuid) in uuids:
            report.add(f"raid[{i}].uuid", f"the same UUID as raid[{uuids[mdadm_uuid(md.uuid)]}]")
        uuids.setdefault(mdadm_uuid(md.uuid) if md.uuid else "", i)
        need = 1 if md.level == "linear" else 2
        if len(md.devices) < need:
            report.add(f"raid[{i}].devices", f"{md.level} needs at least {need} devices",
                       "list every member device")
        if len(set(md.devices)) != len(md.devices):
            report.add(f"raid[{i}].devices", "a device is listed twice")
        # systemd waits boot.device_timeout for the array's device: a degraded start must come
        # well before (mdadm's last resort, then LVM or the mount on top of it)
        if md.degraded_timeout and md.degraded_timeout + 15 > host.boot.device_timeout:
            report.add(f"raid[{i}].degraded_timeout", f"{md.degraded_timeout} s leaves too little "
                       f"of boot.device_timeout ({host.boot.device_timeout} s) to start the "
                       "array degraded",
                       f"use at most {max(host.boot.device_timeout - 15, 0)} here, or raise "
                       "boot.device_timeout")
    for key, ref in report.references:
        if ref.startswith("/dev/md/") and ref not in report.provided:
            report.add(key, f"no [[raid]] entry makes {ref}",
                       "describe the array with [[raid]] (name = the part after /dev/md/)")


def mdadm_conf(arrays: Sequence[Raid]) -> bytes:
    lines = ["# bootgen: the [[raid]] arrays of the host description; nothing else assembles",
             "DEVICE partitions containers", "AUTO -all"]
    lines += [f"ARRAY /dev/md/{md.name} UUID={mdadm_uuid(md.uuid)}" for md in arrays]
    return ("\n".join(lines) + "\n").encode()


def contribute(host: Host, ctx: Context) -> Contribution:
    arrays = RAID.of(host)
    modules = (Module("md_mod"),) + tuple(
        dict.fromkeys(Module(MODULES[md.level]) for md in arrays))
    conf = Generated("/etc/mdadm/mdadm.conf", content=mdadm_conf(arrays))
    view = {"arrays": [{"name": md.name, "uuid": mdadm_uuid(md.uuid), "level": md.level,
                        "devices": list(md.devices), "timeout": md.degraded_timeout,
                        "need": members_needed(md.level, len(md.devices))} for md in arrays]}
    if ctx.flavor == "systemd":
        # one last-resort delay for all arrays: the shortest; 0 everywhere: never degraded
        timeout = min(md.degraded_timeout for md in arrays)
        last_resort = () if timeout == 0 else (
            Generated(f"{UNIT_DIR}/mdadm-last-resort@.timer.d/bootgen.conf",
                      template="units/md-last-resort-timer.conf.j2", view={"timeout": timeout}),
            Generated(f"{UNIT_DIR}/mdadm-last-resort@.service.d/bootgen.conf",
                      template="units/md-last-resort-service.conf.j2",
                      view={"timeout": timeout}))
        return Contribution(
            programs=(Program("/usr/sbin/mdadm"),),
            files=tuple(HostFile(f"/usr/lib/udev/rules.d/{r}") for r in RULES)
            + tuple(HostFile(f"{UNIT_DIR}/{u}") for u in UNITS if timeout),
            generated=(conf, *last_resort,
                       Generated("/usr/lib/systemd/system-generators/bootgen-md-generator",
                                 template="units/md-generator.sh.j2", mode=0o755, view=view)),
            modules=modules,
        )
    return Contribution(
        programs=(Program("/usr/sbin/mdadm"),),
        generated=(conf,),
        hooks=(Hook("pre-mount", "scripts-legacy/mdraid.sh.j2", view=view,
                    after=ctx.after([d for md in arrays for d in md.devices], "mdraid")),),
        modules=modules,
    )


FEATURE = Feature(
    name="mdraid",
    doc="software RAID arrays assembled in stage one ([[raid]], rd.md.*)",
    applies=lambda host, ctx: bool(RAID.of(host)),
    contribute=contribute,
    sections=(RAID,),
    check=check,
    devices=devices,
    references=references,
)
