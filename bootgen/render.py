"""Stage `render`: turn every templated Generated item of an ImageSpec into literal content.

Pure apart from reading the packaged templates. Script hooks are rendered first and handed to
every template as `hooks[<point>]` (a list of rendered fragments, in order), so the scripted
init can place them without knowing which features exist.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from .spec import Generated, ImageSpec
from .templates import render as render_template

HOOK_POINTS = ("pre-udev", "post-udev", "pre-mount", "post-mount", "pre-pivot", "cleanup")


def render_hooks(spec: ImageSpec) -> dict[str, list[str]]:
    hooks: dict[str, list[str]] = defaultdict(list)
    for hook in sorted(spec.hooks, key=lambda h: (h.point, h.order, h.reason, h.template)):
        if hook.point not in HOOK_POINTS:
            raise ValueError(f"unknown hook point {hook.point!r} ({hook.reason})")
        text = render_template(hook.template, dict(hook.view))
        hooks[hook.point].append(f"# --- {hook.reason}: {hook.template}\n{text.rstrip()}\n")
    return {p: hooks.get(p, []) for p in HOOK_POINTS}


def modules_to_load(spec: ImageSpec) -> list[str]:
    """Names of the modules loaded at start, each once, in declaration order."""
    seen: dict[str, None] = {}
    for m in spec.modules:
        if m.load:
            seen.setdefault(m.name.replace("-", "_"), None)
    return list(seen)


def render(spec: ImageSpec) -> tuple[Generated, ...]:
    """All generated files of the spec with `content` filled in."""
    hooks = render_hooks(spec)
    out: list[Generated] = []
    for g in spec.generated:
        if g.content is not None:
            out.append(g)
            continue
        assert g.template is not None, f"{g.path}: neither template nor content"
        view: dict[str, Any] = {
            "hooks": hooks,
            "flavor": spec.flavor,
            "kver": spec.kver,
            "modules_load": modules_to_load(spec),
        }
        view.update(g.view)
        text = render_template(g.template, view)
        out.append(dataclasses.replace(g, content=text.encode()))
    return tuple(out)
