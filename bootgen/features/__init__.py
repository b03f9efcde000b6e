"""Features: each declares, in one place, what it adds to an image.

A feature is a name, a one-line description, a predicate saying when it applies (for a host and a
flavour) and a function returning a Contribution (programs, libraries, files, generated files,
script hooks, kernel modules...). The planner (bootgen.plan) unions the contributions of every
feature that applies. To add a capability, add a module here and list it in FEATURES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..schema import Host
from ..spec import Contribution


@dataclass(frozen=True)
class Context:
    """What a feature may know besides the host description."""

    flavor: str
    kver: str


@dataclass(frozen=True)
class Feature:
    name: str
    doc: str
    applies: Callable[[Host, Context], bool]
    contribute: Callable[[Host, Context], Contribution]


def _registry() -> tuple[Feature, ...]:
    from . import base, extra, fsck, luks, network, rescue, scripted, ssh, systemd, udev

    return (
        base.FEATURE,
        scripted.FEATURE,
        systemd.FEATURE,
        udev.FEATURE,
        luks.FEATURE,
        network.FEATURE,
        ssh.FEATURE,
        fsck.FEATURE,
        rescue.FEATURE,
        extra.FEATURE,
    )


FEATURES: tuple[Feature, ...] = _registry()


def by_name(name: str) -> Feature:
    return next(f for f in FEATURES if f.name == name)
