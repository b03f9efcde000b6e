"""Boot timelines from console output: when each stage of stage one was reached.

Pure: takes console lines (host seconds + text), returns guest uptimes per stage. A line with a
kernel timestamp ("[    2.345678] ...") gives guest time directly; other lines (systemd status
lines) are placed by the host clock relative to the nearest earlier timestamped line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .qemu import ConsoleLine

STAGES = ("kernel", "init", "root device", "root mounted", "switch root", "real init")

# stage -> regexes; the first line matching any of them marks the stage (both flavours)
MARKERS: dict[str, tuple[str, ...]] = {
    "kernel": (r"Linux version \d",),
    "init": (r"Run /init as init process", r"Run \S+ as init process"),
    "root device": (r"bootgen: root device \S+ is /dev/", r"Found device .*"),
    "root mounted": (r"bootgen: root mounted on /sysroot", r"Mounted sysroot\.mount",
                     r"Mounted /sysroot"),
    "switch root": (r"bootgen: switching to the root", r"Switching root\."),
    "real init": (r"BOOTGEN-UPTIME \d",),
}
_TS = re.compile(r"^\[\s*(\d+\.\d+)\]")
_UPTIME = re.compile(r"BOOTGEN-UPTIME (\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Mark:
    stage: str
    guest: float  # guest uptime in seconds
    host: float  # host seconds since QEMU started
    text: str


def guest_time(lines: Sequence[ConsoleLine], index: int) -> float | None:
    line = lines[index]
    m = _TS.match(line.text) or None
    if m:
        return float(m.group(1))
    u = _UPTIME.search(line.text)
    if u:
        return float(u.group(1))
    for j in range(index - 1, -1, -1):
        m = _TS.match(lines[j].text)
        if m:
            return round(float(m.group(1)) + (line.host_seconds - lines[j].host_seconds), 3)
    return None


def marks(lines: Sequence[ConsoleLine]) -> dict[str, Mark]:
    found: dict[str, Mark] = {}
    compiled = {s: [re.compile(p) for p in ps] for s, ps in MARKERS.items()}
    for i, line in enumerate(lines):
        for stage, patterns in compiled.items():
            if stage in found or not any(p.search(line.text) for p in patterns):
                continue
            g = guest_time(lines, i)
            if g is not None:
                found[stage] = Mark(stage, g, round(line.host_seconds, 3), line.text)
    return {s: found[s] for s in STAGES if s in found}
