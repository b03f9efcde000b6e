"""Features: each declares, in one module, what it adds to an image and what it owns.

The registry below is the only list of features: the planner asks them in this order, the
loader reads their sections, the reference documents them. To add a capability, write a module
(see api.py and docs/architecture.md) and add it here.
"""

from __future__ import annotations

from typing import Any

from ..config.schema import Section
from . import base, console, extra, fsck, luks, network, rescue, scripted, ssh, systemd, udev, uki
from .api import Feature

FEATURES: tuple[Feature, ...] = (
    base.FEATURE,
    scripted.FEATURE,
    systemd.FEATURE,
    udev.FEATURE,
    console.FEATURE,
    luks.FEATURE,
    network.FEATURE,
    ssh.FEATURE,
    fsck.FEATURE,
    rescue.FEATURE,
    extra.FEATURE,
    uki.FEATURE,
)

NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

# Every section of the description beyond the core, with the feature that owns it.
SECTIONS: tuple[tuple[Section[Any], str], ...] = tuple(
    (s, f.name) for f in FEATURES for s in f.sections)


def by_name(name: str) -> Feature:
    return next(f for f in FEATURES if f.name == name)
