"""hostverify: verification mode, for `bootgen verify --host-disks` (both flavours).

With `bootgen.verify=stop-before-switch-root` on the kernel command line, stage one does all it
does on a real boot (modules, udev, LUKS, RAID, LVM), but mounts the root and the
needed-for-boot filesystems read-only without journal replay (`common.verify_options`) and skips
fsck; then, instead of switching root, `host-verify check` makes sure the real init is an
executable file in the root, reads the root's os-release, prints one verdict line and the
machine powers off. A failure prints the block devices that exist and a FAIL verdict instead.
The real init never runs. Without the parameter nothing of this is active.

Scripted flavour: the init reads the parameter (mount options, fsck, failures) and, where it
would switch root, runs the check and powers off. systemd flavour: a generator gives the mount
units read-only options, fsck units are skipped by a condition, `bootgen-host-verify.service`
(before initrd.target, so before initrd-cleanup and the switch) checks and powers off, and
`bootgen-host-verify-failed.service` reports a failure on the way to emergency.target.
"""

from __future__ import annotations

from .api import Context, Contribution, Feature, Generated, Host, Symlink
from .common import (
    UNIT_DIR,
    VERIFY_PARAM,
    VERIFY_SCRIPT,
    escape_path,
    verify_options,
)

SKIP_IN_VERIFY = f"[Unit]\nConditionKernelCommandLine=!{VERIFY_PARAM}\n".encode()


def mount_units(host: Host) -> list[dict[str, str]]:
    """The mount unit of each stage-one filesystem and its options in verification mode."""
    out = []
    for fs in host.boot_filesystems:
        where = "/sysroot" + (fs.mountpoint if fs.mountpoint != "/" else "")
        out.append({"unit": escape_path(where) + ".mount",
                    "options": ",".join(verify_options(fs.fstype, fs.options))})
    return out


def contribute(host: Host, ctx: Context) -> Contribution:
    script = Generated(VERIFY_SCRIPT, template="scripts-legacy/host-verify.sh.j2", mode=0o755,
                       view={"init": host.boot.init, "flavor": ctx.flavor,
                             "mountpoints": [fs.mountpoint for fs in host.boot_filesystems]})
    if ctx.flavor != "systemd":  # the init runs the script (scripts-legacy/init.sh.j2)
        return Contribution(generated=(script,))
    view = {"param": VERIFY_PARAM, "script": VERIFY_SCRIPT}
    generated = (
        script,
        Generated("/usr/lib/systemd/system-generators/bootgen-verify-generator",
                  template="units/verify-generator.sh.j2", mode=0o755,
                  view={"param": VERIFY_PARAM, "mounts": mount_units(host)}),
        Generated(f"{UNIT_DIR}/bootgen-host-verify.service",
                  template="units/host-verify.service.j2", view=view),
        Generated(f"{UNIT_DIR}/bootgen-host-verify-failed.service",
                  template="units/host-verify-failed.service.j2", view=view),
        Generated(f"{UNIT_DIR}/systemd-fsck@.service.d/bootgen-verify.conf",
                  content=SKIP_IN_VERIFY),
        Generated(f"{UNIT_DIR}/systemd-fsck-root.service.d/bootgen-verify.conf",
                  content=SKIP_IN_VERIFY),
    )
    links = (
        Symlink(f"{UNIT_DIR}/initrd.target.wants/bootgen-host-verify.service",
                "../bootgen-host-verify.service"),
        Symlink(f"{UNIT_DIR}/emergency.target.wants/bootgen-host-verify-failed.service",
                "../bootgen-host-verify-failed.service"),
    )
    return Contribution(generated=generated, symlinks=links)


FEATURE = Feature(
    name="hostverify",
    doc="Verification mode (verify --host-disks): check the root read-only, power off",
    applies=lambda host, ctx: True,
    contribute=contribute,
)
