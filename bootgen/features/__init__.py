"""Features: each declares, in one module, what it adds to an image and what it owns.

The registry below is the only list of features: the planner asks them in this order, the
loader reads their sections, the reference documents them. To add a capability, write a module
(see api.py and docs/architecture.md) and add it here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config.schema import Host, Section
from . import (
    base,
    btrfs,
    console,
    extra,
    fsck,
    hostverify,
    luks,
    lvm,
    mdraid,
    network,
    rescue,
    resume,
    scripted,
    ssh,
    systemd,
    udev,
    uki,
)
from .api import Feature

FEATURES: tuple[Feature, ...] = (
    base.FEATURE,
    scripted.FEATURE,
    systemd.FEATURE,
    udev.FEATURE,
    console.FEATURE,
    luks.FEATURE,
    mdraid.FEATURE,
    lvm.FEATURE,
    btrfs.FEATURE,
    resume.FEATURE,
    network.FEATURE,
    ssh.FEATURE,
    fsck.FEATURE,
    rescue.FEATURE,
    extra.FEATURE,
    uki.FEATURE,
    hostverify.FEATURE,
)

NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

# Every section of the description beyond the core, with the feature that owns it.
SECTIONS: tuple[tuple[Section[Any], str], ...] = tuple(
    (s, f.name) for f in FEATURES for s in f.sections)


def by_name(name: str) -> Feature:
    return next(f for f in FEATURES if f.name == name)


def references(host: Host, features: Sequence[Feature] = FEATURES) -> list[tuple[str, str]]:
    """Every block device reference of a description: (settings key, reference), the
    filesystems' first (and the resume device), then each feature's in registry order."""
    refs = [(f"filesystems[{i}].device", fs.device) for i, fs in enumerate(host.filesystems)]
    refs.append(("boot.resume_device", host.boot.resume_device or ""))
    for f in features:
        if f.references is not None:
            refs += list(f.references(host))
    return [(k, r) for k, r in refs if r]


def provided(host: Host, refs: Sequence[tuple[str, str]],
             features: Sequence[Feature] = FEATURES) -> dict[str, tuple[str, str]]:
    """The block devices features create in stage one: path -> (feature, who, e.g.
    "[[luks]] 'root'"); the first feature to claim a path keeps it."""
    out: dict[str, tuple[str, str]] = {}
    for f in features:
        if f.devices is not None:
            for path, who in f.devices(host, refs):
                out.setdefault(path, (f.name, who))
    return out
