"""Stage `plan`: Host + flavour + kernel version -> ImageSpec. Pure: no disk access.

Asks every feature of the registry, in order, whether it applies; each that does contributes
(knowing which others apply), and every item it adds is tagged with its name. Hooks are put in
the order the scripted init runs them (registry order, `after` names respected); the users and
groups features ask for become /etc/passwd, /etc/group and /etc/shadow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..config.schema import FLAVORS, Host
from ..errors import BuildError
from ..features import FEATURES, provided, references
from ..features.api import HOOK_POINTS, Context, Contribution, Feature, Generated, Group, Hook, User
from .spec import ImageSpec

INIT = {"systemd": "/usr/lib/systemd/systemd", "scripted": "/init"}
SHADOW_DATES = "19000:0:99999:7:::"  # last change (days since 1970), min, max, warn, ...


def plan(host: Host, *, flavor: str | None = None, kver: str,
         features: Sequence[Feature] = FEATURES) -> ImageSpec:
    flavor = flavor or host.boot.flavor
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavour {flavor!r}")
    probe = Context(flavor=flavor, kver=kver)
    used = [f for f in features if f.applies(host, probe)]
    made = provided(host, references(host, features), features)
    ctx = Context(flavor=flavor, kver=kver, features=frozenset(f.name for f in used),
                  devices={path: feature for path, (feature, _who) in made.items()})
    parts: dict[str, list[Any]] = {f.name: [] for f in dataclasses.fields(Contribution)}
    for feature in used:
        contribution = feature.contribute(host, ctx)
        for kind in parts:
            for item in getattr(contribution, kind):
                parts[kind].append(dataclasses.replace(
                    item, reason=item.reason or feature.name, feature=feature.name))
    names = [f.name for f in features]
    users, groups = _accounts(parts["users"], parts["groups"])
    return ImageSpec(
        flavor=flavor,
        kver=kver,
        compression=host.boot.compression,
        compression_level=host.boot.compression_level,
        features=tuple(f.name for f in used),
        init=INIT[flavor],
        programs=tuple(parts["programs"]),
        libraries=tuple(parts["libraries"]),
        files=tuple(parts["files"]),
        generated=tuple(parts["generated"]) + account_files(users, groups),
        hooks=order_hooks(parts["hooks"], names),
        symlinks=tuple(parts["symlinks"]),
        dirs=tuple(parts["dirs"]),
        devnodes=tuple(parts["devnodes"]),
        modules=tuple(parts["modules"]),
        users=users,
        groups=groups,
        description=host.source,
    )


def order_hooks(hooks: Sequence[Hook], names: Sequence[str]) -> tuple[Hook, ...]:
    """Hooks grouped by point (HOOK_POINTS order); within a point, registry order of their
    features, each hook after the hooks of the features its `after` names."""
    out: list[Hook] = []
    for hook in hooks:
        if hook.point not in HOOK_POINTS:
            raise BuildError(f"{hook.feature}: unknown hook point {hook.point!r}",
                             hint="one of " + ", ".join(HOOK_POINTS))
        for name in hook.after:
            if name not in names:
                raise BuildError(f"{hook.feature}: hook {hook.template} is ordered after "
                                 f"'{name}', which is not a feature")
    for point in HOOK_POINTS:
        pending = sorted((h for h in hooks if h.point == point),
                         key=lambda h: names.index(h.feature))
        while pending:
            waiting = {h.feature for h in pending}
            ready = next((h for h in pending if not waiting & (set(h.after) - {h.feature})),
                         None)
            if ready is None:
                cycle = ", ".join(f"{h.feature} after {'/'.join(h.after)}" for h in pending)
                raise BuildError(f"hooks at {point} wait for each other: {cycle}")
            out.append(ready)
            pending.remove(ready)
    return tuple(out)


def _accounts(users: Sequence[User], groups: Sequence[Group]
              ) -> tuple[tuple[User, ...], tuple[Group, ...]]:
    """Each name once; two features asking for one name must agree on its id."""
    by_user: dict[str, User] = {}
    for u in users:
        old = by_user.setdefault(u.name, u)
        if (old.uid, old.gid) != (u.uid, u.gid):
            raise BuildError(f"user {u.name}: {old.feature} wants uid/gid {old.uid}/{old.gid}, "
                             f"{u.feature} {u.uid}/{u.gid}")
    by_group: dict[str, Group] = {}
    for g in groups:
        old_g = by_group.setdefault(g.name, g)
        if old_g.gid != g.gid:
            raise BuildError(f"group {g.name}: {old_g.feature} wants gid {old_g.gid}, "
                             f"{g.feature} {g.gid}")
    return tuple(by_user.values()), tuple(by_group.values())


def account_files(users: Sequence[User], groups: Sequence[Group]) -> tuple[Generated, ...]:
    """/etc/passwd, /etc/group and /etc/shadow (users with a password field only)."""
    if not users and not groups:
        return ()
    owners = ", ".join(dict.fromkeys([u.feature for u in users] + [g.feature for g in groups]))
    reason = f"accounts ({owners})"
    feature = users[0].feature if users else groups[0].feature
    passwd = "".join(f"{u.name}:x:{u.uid}:{u.gid}:{u.gecos}:{u.home}:{u.shell}\n" for u in users)
    group = "".join(f"{g.name}:x:{g.gid}:\n" for g in groups)
    shadow = "".join(f"{u.name}:{u.password}:{SHADOW_DATES}\n" for u in users
                     if u.password is not None)
    return (Generated("/etc/passwd", content=passwd.encode(), reason=reason, feature=feature),
            Generated("/etc/group", content=group.encode(), reason=reason, feature=feature),
            Generated("/etc/shadow", content=shadow.encode(), mode=0o600, reason=reason,
                      feature=feature))
