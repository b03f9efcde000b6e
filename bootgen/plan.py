"""Stage `plan`: Host + flavour + kernel version -> ImageSpec. Pure: no disk access.

Every feature that applies contributes; the planner tags each item with the feature's name and
unions them in a stable order (feature order, then declaration order).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .features import FEATURES, Context
from .schema import FLAVORS, Host
from .spec import Contribution, ImageSpec

INIT = {"systemd": "/usr/lib/systemd/systemd", "scripted": "/init"}


def plan(host: Host, *, flavor: str | None = None, kver: str) -> ImageSpec:
    flavor = flavor or host.boot.flavor
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavour {flavor!r}")
    ctx = Context(flavor=flavor, kver=kver)
    parts: dict[str, list[Any]] = {f.name: [] for f in dataclasses.fields(Contribution)}
    used: list[str] = []
    for feature in FEATURES:
        if not feature.applies(host, ctx):
            continue
        used.append(feature.name)
        contribution = feature.contribute(host, ctx)
        for kind in parts:
            for item in getattr(contribution, kind):
                reason = item.reason or feature.name
                parts[kind].append(dataclasses.replace(item, reason=reason))
    return ImageSpec(
        flavor=flavor,
        kver=kver,
        compression=host.boot.compression,
        compression_level=host.boot.compression_level,
        features=tuple(used),
        init=INIT[flavor],
        **{kind: tuple(items) for kind, items in parts.items()},
    )
