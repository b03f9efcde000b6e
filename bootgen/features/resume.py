"""resume: resume from hibernation before anything is mounted read-write ([boot]
resume_device, resume_offset; `resume=`, `resume_offset=` and `noresume` on the command line
win), both flavours.

systemd flavour: systemd's own systemd-hibernate-resume@.service, which the upstream generator
instantiates for `resume=`, and bootgen's generator for the described device when the command
line names none. Scripted flavour: a pre-mount hook, after the device's stack (LUKS, RAID, LVM)
is open, writes its major:minor (and the offset of a swap file) to /sys/power/resume; the kernel
resumes from there or returns when there is no image.
"""

from __future__ import annotations

from .api import (
    Context,
    Contribution,
    Feature,
    Generated,
    Hook,
    Host,
    HostFile,
    Program,
)
from .common import UNIT_DIR, device_node, escape_path


def contribute(host: Host, ctx: Context) -> Contribution:
    device = host.boot.resume_device or ""
    node = device_node(device)
    view = {"device": device, "node": node, "offset": host.boot.resume_offset,
            "unit": f"systemd-hibernate-resume@{escape_path(node)}.service"}
    if ctx.flavor == "systemd":
        return Contribution(
            programs=(Program("/usr/lib/systemd/systemd-hibernate-resume"),
                      Program("/usr/lib/systemd/system-generators/"
                              "systemd-hibernate-resume-generator")),
            files=(HostFile(f"{UNIT_DIR}/systemd-hibernate-resume@.service"),),
            generated=(Generated("/usr/lib/systemd/system-generators/bootgen-resume-generator",
                                 template="units/resume-generator.sh.j2", mode=0o755,
                                 view=view),),
        )
    return Contribution(
        hooks=(Hook("pre-mount", "scripts-legacy/resume.sh.j2", view=view,
                    after=ctx.after([device], "resume")),),
    )


FEATURE = Feature(
    name="resume",
    doc="resume from hibernation before mounting ([boot] resume_device, resume=)",
    applies=lambda host, ctx: bool(host.boot.resume_device),
    contribute=contribute,
)
