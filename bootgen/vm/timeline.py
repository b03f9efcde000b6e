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


# --- what stage one did, unit by unit (systemd) or step by step (scripted) ---------------------

# systemd 252 logs "<verb> <unit> - <description>" through kmsg with systemd.log_target=kmsg and
# systemd.log_level=info (TIMELINE_PARAMS); the scripted init says "bootgen: <what>" at each step.
TIMELINE_PARAMS = ("systemd.log_target=kmsg", "systemd.log_level=info")
_UNIT = re.compile(r"systemd\[1\]: (Starting|Started|Finished|Mounting|Mounted|Expecting device|"
                   r"Found device|Reached target|Listening on|Failed to start|Failed to mount|"
                   r"Timed out waiting for device) (\S+)")
_BEGINS = ("Starting", "Mounting", "Expecting device")
_ENDS = ("Started", "Finished", "Mounted", "Found device", "Failed to start", "Failed to mount",
         "Timed out waiting for device")
_STEP = re.compile(r"bootgen: (.+?)\s*$")


@dataclass(frozen=True)
class Span:
    """One unit (systemd) or step (scripted) of stage one, in guest seconds."""

    name: str
    start: float
    end: float  # == start for an event (a target reached, a socket listening)
    result: str = "done"  # done | failed | unfinished

    @property
    def seconds(self) -> float:
        return round(self.end - self.start, 3)


def spans(lines: Sequence[ConsoleLine]) -> list[Span]:
    """The units systemd started (with TIMELINE_PARAMS on the command line), or the steps of
    the scripted init, in the order they began. A unit still running when the log ends is
    "unfinished", up to the last timestamp seen."""
    begun: dict[str, float] = {}
    out: list[Span] = []
    steps: list[tuple[str, float]] = []
    last = 0.0
    for i, line in enumerate(lines):
        t = guest_time(lines, i) if _TS.match(line.text) else None
        if t is None:
            continue
        last = t
        m = _UNIT.search(line.text)
        if m:
            verb, unit = m.group(1), m.group(2).rstrip(".")
            if verb in _BEGINS:
                begun.setdefault(unit, t)
            elif verb in _ENDS:
                failed = verb.startswith(("Failed", "Timed out"))
                out.append(Span(unit, begun.pop(unit, t), t, "failed" if failed else "done"))
            else:
                out.append(Span(unit, t, t))
            continue
        s = _STEP.search(line.text)
        if s and "systemd[" not in line.text:
            steps.append((s.group(1), t))
    out += [Span(unit, t, last, "unfinished") for unit, t in begun.items()]
    if not out and steps:  # the scripted init: each step lasts until the next one
        ends = [t for _, t in steps[1:]] + [last]
        out = [Span(text, t, max(t, end)) for (text, t), end in zip(steps, ends, strict=True)]
    return sorted(out, key=lambda s: (s.start, s.end, s.name))


def slowest(found: Sequence[Span], count: int = 10) -> list[Span]:
    """The longest spans (events left out), longest first."""
    timed = [s for s in found if s.end > s.start]
    return sorted(timed, key=lambda s: (-s.seconds, s.start, s.name))[:count]
