"""Template loading: units/ and scripts-legacy/ ship inside the package (bootgen/data/...).

In a source checkout (editable install) the top-level directories are used directly; an installed
wheel carries them as package data, found through importlib.resources.
"""

from __future__ import annotations

import functools
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ..errors import BuildError

TEMPLATE_DIRS = ("units", "scripts-legacy", "qemu")


@functools.cache
def data_root() -> Path:
    """The directory holding units/, scripts-legacy/ and qemu/."""
    packaged = resources.files("bootgen") / "data"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent.parent
    if (checkout / "units").is_dir():
        return checkout
    raise BuildError("bootgen's templates are missing", hint="reinstall bootgen")


def shell_quote(value: Any) -> str:
    """Quote a value for POSIX sh."""
    return shlex.quote(str(value))


def unit_quote(value: Any) -> str:
    """Quote a value for a systemd unit's command line."""
    s = str(value)
    if s and all(c.isalnum() or c in "/._-=:,@+" for c in s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_root())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["sh"] = shell_quote
    env.filters["unitq"] = unit_quote
    return env


def render(name: str, view: dict[str, Any]) -> str:
    """Render a template by its path relative to the data root, e.g. 'units/x.service.j2'."""
    try:
        return environment().get_template(name).render(**view)
    except jinja2.TemplateNotFound:
        raise BuildError(f"template not found: {name}", hint=f"looked in {data_root()}") from None
    except jinja2.UndefinedError as e:
        raise BuildError(f"template {name}: {e.message}") from None
