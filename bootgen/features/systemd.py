"""systemd: the modern flavour, the host's systemd as PID 1 with the upstream initrd unit chain.

Upstream units are copied from the host unchanged; bootgen adds few files of its own, all from
units/: a generator that mounts the described root on /sysroot unless root= is on the command
line and turns rd.break= into breakpoints, mount units for the needed-for-boot filesystems, and
drop-ins for the emergency shell, the device timeout and journald forwarding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .api import (
    Context,
    Contribution,
    Feature,
    Filesystem,
    Generated,
    Host,
    HostFile,
    Program,
    Symlink,
    Table,
    setting,
)
from .common import CHECKERS, LOCKED_HINT, UNIT_DIR, device_node, escape_path

# What the emergency drop-in prints before the shell: a header, one line per failed unit (with
# this prefix), a footer. `bootgen verify` reads the list between them to say why a boot failed.
FAILED_HEADER = "bootgen: stage one failed; failed units:"
FAILED_UNIT_PREFIX = "bootgen:   "
FAILED_FOOTER = "bootgen: see journalctl -xb in the shell"


def check_unit_name(value: str) -> tuple[str, str] | None:
    """A unit file or drop-in name relative to /etc/systemd/system."""
    parts = value.split("/")
    units = (".service", ".target", ".mount", ".socket", ".path", ".timer", ".swap",
             ".automount", ".slice")
    ok = (len(parts) == 1 and value.endswith(units)) or (
        len(parts) == 2 and parts[0].endswith(tuple(u + ".d" for u in units))
        and parts[1].endswith(".conf"))
    # systemd's unit name characters (its \\ escapes are not needed for a name one types)
    if not ok or not all(re.fullmatch(r"[A-Za-z0-9:_.@-]+", p) for p in parts) \
            or any(p.startswith(".") for p in parts):
        return (f"'{value}' is not a unit or drop-in name",
                "e.g. 'hello.service' or 'sysroot.mount.d/override.conf'")
    return None


@dataclass(frozen=True)
class Systemd:
    """Additions to the systemd flavour."""

    units: tuple[tuple[str, str], ...] = setting(
        "Extra units or drop-ins: a table of file name (relative to /etc/systemd/system) to "
        "its text. The text is free-form by design (it is yours: bootgen writes it as given, "
        "and checks only that it holds no control characters but newlines and tabs).",
        factory=tuple, check=check_unit_name, multiline=True,
        example='{ "hello.service" = "[Service]\\n..." }')
    wants: tuple[str, ...] = setting("Units pulled in by initrd.target.", factory=tuple,
                                     check=check_unit_name)


SYSTEMD = Table("systemd", Systemd)

# The upstream initrd unit chain and what it pulls in.
UNITS = (
    "basic.target", "sysinit.target", "sockets.target", "paths.target", "timers.target",
    "slices.target", "local-fs.target", "local-fs-pre.target", "swap.target",
    "initrd.target", "initrd-root-device.target", "initrd-root-fs.target", "initrd-fs.target",
    "initrd-usr-fs.target", "initrd-switch-root.target", "initrd-parse-etc.service",
    "initrd-cleanup.service", "initrd-switch-root.service", "initrd-udevadm-cleanup-db.service",
    "emergency.target", "emergency.service", "rescue.target", "rescue.service",
    "shutdown.target", "final.target", "umount.target", "reboot.target", "poweroff.target",
    "halt.target", "systemd-reboot.service", "systemd-poweroff.service", "systemd-halt.service",
    "systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
    "systemd-modules-load.service", "systemd-fsck@.service", "systemd-fsck-root.service",
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
    "kmod-static-nodes.service", "debug-shell.service", "cryptsetup.target",
    "cryptsetup-pre.target", "remote-fs.target", "remote-fs-pre.target",
    "systemd-ask-password-console.path", "systemd-ask-password-console.service",
)

WANTS = {
    "sysinit.target": ("systemd-journald.service", "systemd-modules-load.service",
                       "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
                       "kmod-static-nodes.service", "systemd-ask-password-console.path"),
    "sockets.target": ("systemd-journald.socket", "systemd-journald-dev-log.socket"),
}

PROGRAMS = (
    "/usr/lib/systemd/systemd",
    "/usr/bin/systemctl",
    "/usr/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-modules-load",
    "/usr/lib/systemd/systemd-fsck",
    "/usr/lib/systemd/systemd-sulogin-shell",
    "/usr/lib/systemd/systemd-shutdown",
    "/usr/bin/systemd-tmpfiles",
    "/usr/bin/systemd-tty-ask-password-agent",
    "/usr/lib/systemd/system-generators/systemd-fstab-generator",
    "/usr/lib/systemd/system-generators/systemd-debug-generator",
    "/usr/bin/mount",
    "/usr/bin/umount",
    "/usr/bin/kmod",
    "/usr/sbin/modprobe",
    "/usr/bin/busybox",  # /bin/sh for the emergency and debug shells, and the generator
)

# busybox applets linked for the emergency shell, when nothing else in the image has the name
SHELL_APPLETS = (
    "sh", "cat", "ls", "cp", "mv", "rm", "mkdir", "ln", "grep", "sed", "awk", "head", "tail",
    "dmesg", "ps", "kill", "less", "vi", "find", "stat", "readlink", "sleep", "echo", "env",
    "tr", "cut", "sort", "uname", "df", "chroot", "xargs", "hexdump", "true", "false", "test",
)


def mount_view(fs: Filesystem, timeout: int) -> dict[str, object]:
    what = device_node(fs.device)
    where = "/sysroot" + (fs.mountpoint if fs.mountpoint != "/" else "")
    fsck = ""
    checkable = fs.fstype in CHECKERS
    if fs.fsck and checkable and what.startswith("/dev/"):
        fsck = f"systemd-fsck@{escape_path(what)}.service"
    return {
        "what": what,
        "where": where,
        "unit": escape_path(where) + ".mount",
        "device_unit": escape_path(what) + ".device" if what.startswith("/dev/") else "",
        "fstype": fs.fstype,
        "options": ",".join(fs.options),
        "fsck": fsck,
        "timeout": timeout,
        "target": "initrd-root-fs.target" if fs.mountpoint == "/" else "initrd-fs.target",
    }


def contribute(host: Host, ctx: Context) -> Contribution:
    timeout = host.boot.device_timeout
    root, *others = host.boot_filesystems
    root_view = mount_view(root, timeout)
    files = [HostFile(f"{UNIT_DIR}/{u}") for u in UNITS]
    generated = [
        Generated("/usr/lib/systemd/system-generators/bootgen-generator",
                  template="units/bootgen-generator.sh.j2", mode=0o755,
                  view={"root": root_view, "init": host.boot.init,
                        "network": "network" in ctx.features}),
        Generated(f"{UNIT_DIR}/bootgen-break@.service", template="units/bootgen-break@.service.j2",
                  view={"access": host.rescue.access, "locked_hint": LOCKED_HINT}),
        Generated(f"{UNIT_DIR}/emergency.service.d/bootgen.conf",
                  template="units/emergency-bootgen.conf.j2",
                  view={"access": host.rescue.access, "locked_hint": LOCKED_HINT,
                        "shell_on_fail": host.rescue.shell_on_fail, "header": FAILED_HEADER,
                        "prefix": FAILED_UNIT_PREFIX, "footer": FAILED_FOOTER}),
        Generated("/usr/lib/bootgen/stop", template="units/bootgen-stop.sh.j2", mode=0o755),
        Generated("/usr/lib/bootgen/init-check", template="units/bootgen-init-check.sh.j2",
                  mode=0o755, view={"init": host.boot.init}),
        Generated(f"{UNIT_DIR}/bootgen-init-check.service",
                  template="units/bootgen-init-check.service.j2"),
        Generated(f"{UNIT_DIR}/debug-shell.service.d/bootgen.conf",
                  template="units/debug-shell.conf.j2"),
        # initrd-parse-etc queues initrd-cleanup (its isolate starts the switch to the root),
        # ordered after initrd.target but not depending on it: when initrd.target fails late
        # (rd.neednet=1 and no network), the queued cleanup would switch root anyway and stop
        # the emergency target. With Requisite= it fails instead, and the emergency path stays.
        Generated(f"{UNIT_DIR}/initrd-cleanup.service.d/bootgen.conf",
                  content=b"# bootgen: never switch root after initrd.target failed\n"
                          b"[Unit]\nRequisite=initrd.target\n"),
        Generated("/etc/systemd/system.conf.d/bootgen.conf", template="units/system.conf.j2",
                  view={"device_timeout": timeout}),
        Generated("/etc/systemd/journald.conf.d/bootgen.conf", template="units/journald.conf.j2"),
        Generated("/etc/modules-load.d/bootgen.conf", template="units/modules-load.conf.j2"),
    ]
    if host.boot.init != "/sbin/init":
        generated.append(Generated(f"{UNIT_DIR}/initrd-switch-root.service.d/bootgen-init.conf",
                                   template="units/switch-root-init.conf.j2",
                                   view={"init": host.boot.init}))
    links = [Symlink("/init", "usr/lib/systemd/systemd"),
             Symlink(f"{UNIT_DIR}/initrd-switch-root.service.requires/"
                     "bootgen-init-check.service", "../bootgen-init-check.service"),
             Symlink("/usr/lib/systemd/systemd-udevd", "../../bin/udevadm"),
             Symlink("/etc/systemd/system/default.target", f"{UNIT_DIR}/initrd.target")]
    for target, units in WANTS.items():
        links += [Symlink(f"{UNIT_DIR}/{target}.wants/{u}", f"../{u}") for u in units]
    for fs in others:
        view = mount_view(fs, timeout)
        generated.append(Generated(f"{UNIT_DIR}/{view['unit']}", template="units/mount.j2",
                                   view={"m": view}))
        links.append(Symlink(f"{UNIT_DIR}/initrd-fs.target.requires/{view['unit']}",
                             f"../{view['unit']}"))
    extra = SYSTEMD.of(host)
    for name, text in extra.units:
        generated.append(Generated(f"/etc/systemd/system/{name}", content=text.encode(),
                                   reason="systemd.units"))
    for unit in extra.wants:
        links.append(Symlink(f"/etc/systemd/system/initrd.target.wants/{unit}",
                             f"../{unit}" if any(n == unit for n, _ in extra.units)
                             else f"{UNIT_DIR}/{unit}", reason="systemd.wants"))
    links += [Symlink(f"/usr/bin/{a}", "busybox", weak=True) for a in SHELL_APPLETS]
    return Contribution(
        programs=tuple(Program(p) for p in PROGRAMS),
        files=tuple(files),
        generated=tuple(generated),
        symlinks=tuple(links),
    )


FEATURE = Feature(
    name="systemd",
    doc="systemd as PID 1 with the upstream initrd units (modern flavour)",
    applies=lambda host, ctx: ctx.flavor == "systemd",
    contribute=contribute,
    sections=(SYSTEMD,),
)
