"""console: the keymap and font of the Linux console (the VTs) in stage one, both flavours.

So that a passphrase with non-US characters can be typed at the prompt. The XKB layout is
compiled at build time into busybox's binary keymap (`ckbcomp | loadkeys -u -b`, see
bootgen.image.keymap) and loaded with busybox `loadkmap` before any prompt: a pre-udev hook in
the scripted flavour, bootgen-console.service (before cryptsetup and the password agents) in
the systemd flavour; Debian's systemd has no systemd-vconsole-setup. A font is a PSF file
(console-setup's /usr/share/consolefonts, gzip'ed ones unpacked at build time) loaded with
busybox `loadfont`. The keymap changes what the keyboard types on the VTs only: a serial
console receives characters, not key presses.
"""

from __future__ import annotations

from dataclasses import dataclass

from .api import (
    Context,
    Contribution,
    Feature,
    Generated,
    Hook,
    Host,
    HostFile,
    Program,
    Report,
    Symlink,
    Table,
    matching,
    setting,
)
from .common import UNIT_DIR

XKB_SYMBOLS = "/usr/share/X11/xkb/symbols"
FONT_DIR = "/usr/share/consolefonts"
KEYMAP = "/etc/bootgen/keymap.bmap"
FONT = "/etc/bootgen/font.psf"
UNIT = "bootgen-console.service"

check_layout = matching(r"[a-z][a-z0-9_]{0,31}", "an XKB layout name",
                        "e.g. 'de', 'fr', 'us' (see /usr/share/X11/xkb/symbols)")
check_variant = matching(r"[a-z0-9][a-z0-9_-]{0,63}", "an XKB variant name",
                         "e.g. 'nodeadkeys' (ckbcomp -variant)")
check_font = matching(r"(/[A-Za-z0-9._+-]+)+|[A-Za-z0-9._+-]+", "a console font",
                      f"a name in {FONT_DIR} such as 'Lat2-Terminus16', or a .psf path")


@dataclass(frozen=True)
class Console:
    """The Linux console (VTs) in stage one: keymap and font."""

    keymap: str | None = setting("Keyboard layout (XKB name, as in /etc/default/keyboard).",
                                 None, check=check_layout, example='"de"')
    keymap_variant: str | None = setting("XKB variant of the layout.", None,
                                         check=check_variant, example='"nodeadkeys"')
    font: str | None = setting(
        f"Console font: a name in {FONT_DIR} (.psf or .psf.gz) or the path of a PSF file.",
        None, check=check_font, example='"Lat2-Terminus16"')


CONSOLE = Table("console", Console)


def font_source(font: str) -> str:
    return font if font.startswith("/") else f"{FONT_DIR}/{font}.psf.gz"


def check(host: Host, report: Report) -> None:
    c = CONSOLE.of(host)
    if c.keymap_variant and not c.keymap:
        report.add("console.keymap_variant", "a variant needs a keymap", "set console.keymap")


def contribute(host: Host, ctx: Context) -> Contribution:
    c = CONSOLE.of(host)
    files = []
    applets = []
    if c.keymap:
        files.append(HostFile(f"{XKB_SYMBOLS}/{c.keymap}", target=KEYMAP, mode=0o644,
                              convert="keymap" + (f":{c.keymap_variant}" if c.keymap_variant
                                                  else ""), reason="console.keymap"))
        applets.append("loadkmap")
    if c.font:
        source = font_source(c.font)
        files.append(HostFile(source, target=FONT, mode=0o644, reason="console.font",
                              convert="gunzip" if source.endswith(".gz") else None))
        applets.append("loadfont")
    view = {"keymap": KEYMAP if c.keymap else "", "font": FONT if c.font else "",
            "name": c.keymap or "", "font_name": c.font or ""}
    links = [Symlink(f"/usr/bin/{a}", "busybox") for a in applets]
    if ctx.flavor == "scripted":
        return Contribution(files=tuple(files), symlinks=tuple(links),
                            hooks=(Hook("pre-udev", "scripts-legacy/console.sh.j2", view=view),))
    return Contribution(
        programs=(Program("/usr/bin/busybox"),),
        files=tuple(files),
        symlinks=(*links, Symlink(f"{UNIT_DIR}/sysinit.target.wants/{UNIT}", f"../{UNIT}")),
        generated=(Generated(f"{UNIT_DIR}/{UNIT}", template="units/bootgen-console.service.j2",
                             view=view),),
    )


FEATURE = Feature(
    name="console",
    doc="[console]: keymap and font of the VTs, loaded before any passphrase prompt",
    applies=lambda host, ctx: bool(CONSOLE.of(host).keymap or CONSOLE.of(host).font),
    contribute=contribute,
    sections=(CONSOLE,),
    check=check,
)
