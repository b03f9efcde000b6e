"""Stage `render`: turn every templated Generated item of an ImageSpec into literal content.

Pure apart from reading the packaged templates. Script hooks are rendered first, in the order
the planner gave them, and handed to every template as `hooks[<point>]` (a list of rendered
fragments), so the scripted init places them without knowing which features exist. A hook that
no template placed is an error, never a silent omission.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import BuildError
from ..features.api import HOOK_POINTS, Generated
from .spec import ImageSpec
from .templates import render as render_template


def render_hooks(spec: ImageSpec) -> dict[str, list[str]]:
    hooks: dict[str, list[str]] = {p: [] for p in HOOK_POINTS}
    for hook in spec.hooks:
        text = render_template(hook.template, dict(hook.view))
        hooks[hook.point].append(f"# --- {hook.reason}: {hook.template}\n{text.rstrip()}\n")
    return hooks


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
    placed = ""
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
        placed += text
        out.append(dataclasses.replace(g, content=text.encode()))
    for hook, fragments in zip(spec.hooks, _fragments(hooks, spec), strict=True):
        if fragments not in placed:
            raise BuildError(f"{hook.feature}: its {hook.point} hook {hook.template} is placed "
                             f"by no template of the {spec.flavor} flavour",
                             hint="hooks are for the scripted init; the systemd flavour uses "
                             "units")
    return tuple(out)


def _fragments(hooks: dict[str, list[str]], spec: ImageSpec) -> list[str]:
    """The rendered fragment of each hook of the spec, in spec order."""
    index = {p: 0 for p in HOOK_POINTS}
    out = []
    for hook in spec.hooks:
        out.append(hooks[hook.point][index[hook.point]])
        index[hook.point] += 1
    return out
