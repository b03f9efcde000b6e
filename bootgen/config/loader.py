"""Load a host description (TOML) into frozen dataclasses, collecting every problem at once.

Generic over the sections it is given: the core sections of `Host` (bootgen.config.schema) and
the features' sections (`Section` handles from the feature registry; bootgen.description binds
the two). Type and value checks come from the settings' declarations; checks across settings
are functions of the whole Host that add to a `Report`: the core ones live here, each
feature's in its own module.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..archive.compress import LEVEL_RANGES
from ..errors import BootgenError, DescriptionError
from ..paths import read_regular
from .schema import Host, Section

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


class Report:
    """Problems found by the checks across settings of one description."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[BootgenError] = []
        # block devices stage one creates (e.g. /dev/mapper/<name>) -> who creates it
        self.provided: dict[str, str] = {}
        # every block device reference of the description: (settings key, reference)
        self.references: list[tuple[str, str]] = []

    def add(self, key: str, msg: str, hint: str = "") -> None:
        _problem(self.problems, self.name, key, msg, hint)


Checks = Callable[[Host, Report], None]


MAX_DESCRIPTION = 1 << 20  # bytes: a host description is a page or two of TOML
MAX_DEPTH = 32  # arrays and tables nested deeper than any description needs


def load(path: str | Path, sections: Sequence[Section[Any]] = (),
         checks: Checks | None = None) -> Host:
    """Read and validate a host description; raise DescriptionError listing all problems."""
    name = str(path)
    try:
        data = read_regular(path, limit=MAX_DESCRIPTION, error=BootgenError)
    except BootgenError as e:
        hint = "give the path of a host .toml" if e.message == "no such file" else e.hint
        raise DescriptionError([BootgenError(e.message, location=name, hint=hint)]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DescriptionError([BootgenError(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line}", location=name,
            hint="a description is TOML, which is UTF-8: convert it (iconv -f latin1 -t utf-8)"
        )]) from None
    return loads(text, name, sections, checks)


def loads(text: str, name: str = "<string>", sections: Sequence[Section[Any]] = (),
          checks: Checks | None = None) -> Host:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DescriptionError([BootgenError(f"not valid TOML: {e}", location=name)]) from None
    except RecursionError:
        raise DescriptionError([BootgenError("not valid TOML: nested too deeply",
                                             location=name)]) from None
    deep = _too_deep(raw, MAX_DEPTH)
    if deep is not None:
        raise DescriptionError([BootgenError(f"nested more than {MAX_DEPTH} levels deep",
                                             location=f"{name}: {deep}")])
    problems: list[BootgenError] = []
    values = _sections(raw, sections, name, problems)
    host = dataclasses.replace(_build(Host, raw, "", name, problems,
                                      extra=[s.key for s in sections if "." not in s.key]),
                               sections=values, source=name)
    # Checks across settings run even after value errors, but say nothing more about a setting
    # (or its entry) that already has a problem: its value there is only a placeholder.
    report = Report(name)
    core_checks(host, report)
    if checks is not None:
        checks(host, report)
    bad = [p.location.split("[")[0] if "[" not in p.location else
           p.location[: p.location.index("]") + 1] for p in problems]
    problems += [c for c in report.problems
                 if not any(c.location.startswith(b) or b.startswith(c.location) for b in bad)]
    if problems:
        raise DescriptionError(problems)
    return host


def _sections(raw: dict[str, Any], sections: Sequence[Section[Any]], name: str,
              problems: list[BootgenError]) -> dict[str, Any]:
    """Take each feature section out of `raw` (nested ones first) and build it."""
    values: dict[str, Any] = {}
    for section in sorted(sections, key=lambda s: -s.key.count(".")):
        *parents, leaf = section.key.split(".")
        table: Any = raw
        for part in parents:
            table = table.get(part) if isinstance(table, dict) else None
        if not isinstance(table, dict) or leaf not in table:
            values[section.key] = section.default()
            continue
        value = table.pop(leaf)
        if section.many:
            values[section.key] = _convert(tuple[section.type, ...], value,  # type: ignore
                                           section.key, name, problems, {})
            if values[section.key] is _BAD:
                values[section.key] = ()
        else:
            values[section.key] = _build(section.type, value, section.key, name, problems,
                                         extra=[s.key.split(".")[-1] for s in sections
                                                if s.key.startswith(section.key + ".")])
    return {s.key: values[s.key] for s in sections}


# --- generic, schema-driven conversion -------------------------------------------------------


def _problem(problems: list[BootgenError], name: str, key: str, msg: str, hint: str = "") -> None:
    problems.append(BootgenError(msg, location=f"{name}: {key}" if key else name, hint=hint))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _build(cls: type, raw: Any, key: str, name: str, problems: list[BootgenError],
           extra: Sequence[str] = ()) -> Any:
    if not isinstance(raw, dict):
        _problem(problems, name, key, f"expected a table, got {_tname(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in fields:
            known = [*fields, *extra]
            close = difflib.get_close_matches(k, known, n=1)
            _problem(problems, name, _join(key, k), "unknown setting",
                     f"did you mean '{close[0]}'?" if close else
                     "known: " + ", ".join(sorted(known)))
            continue
        f = fields[k]
        values[k] = _convert(hints[k], v, _join(key, k), name, problems, f.metadata)
    try:
        return cls(**{k: v for k, v in values.items() if v is not _BAD})
    except TypeError as e:  # pragma: no cover - schema bug
        raise AssertionError(e) from e


_BAD = object()


def _too_deep(value: Any, depth: int, key: str = "") -> str | None:
    """The key of a value nested more than `depth` arrays and tables deep, or None."""
    todo = [(value, key, 0)]
    while todo:
        v, k, d = todo.pop()
        if d > depth:
            return k or "(top level)"
        if isinstance(v, dict):
            todo += [(x, _join(k, str(n)), d + 1) for n, x in v.items()]
        elif isinstance(v, list):
            todo += [(x, f"{k}[{i}]", d + 1) for i, x in enumerate(v)]
    return None


def _control(value: str, multiline: bool) -> str | None:
    """The first control character a one-line setting must not hold (newline, NUL...)."""
    for c in value:
        if (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f) and not (multiline and c in "\n\t"):
            return c
    return None


_TOML_TYPES = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
               (list, "an array"), (dict, "a table"))  # bool before int: bool is an int


def _tname(v: Any) -> str:
    return next((name for t, name in _TOML_TYPES if isinstance(v, t)), type(v).__name__)


def _convert(tp: Any, v: Any, key: str, name: str, problems: list[BootgenError],
             meta: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # X | None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(inner, v, key, name, problems, meta)
    if dataclasses.is_dataclass(tp):
        return _build(tp, v, key, name, problems)  # type: ignore[arg-type]
    if origin is tuple:
        elem = args[0]
        if typing.get_origin(elem) is tuple:  # table of string -> string
            if not isinstance(v, dict):
                _problem(problems, name, key, f"expected a table, got {_tname(v)}")
                return _BAD
            out = []
            for k2, v2 in sorted(v.items()):
                if not isinstance(v2, str):
                    _problem(problems, name, f"{key}.{k2}", f"expected a string, got {_tname(v2)}")
                    continue
                c = _control(k2, False) or _control(v2, bool(meta.get("multiline")))
                if c is not None:
                    _problem(problems, name, f"{key}.{k2}", f"holds the control character {c!r}",
                             "only newlines and tabs may be in a text")
                    continue
                if _check(k2, f"{key}.{k2}", name, problems, meta):
                    out.append((k2, v2))
            return tuple(out)
        if not isinstance(v, list):
            hint = f"write {key.split('.')[-1]} = [{json.dumps(v)}]" if isinstance(v, str) else ""
            _problem(problems, name, key, f"expected an array, got {_tname(v)}", hint)
            return _BAD
        items = []
        for i, item in enumerate(v):
            conv = _convert(elem, item, f"{key}[{i}]", name, problems, meta)
            if conv is not _BAD:
                items.append(conv)
        return tuple(items)
    # scalars
    if tp is int and isinstance(v, bool) or not isinstance(v, tp):
        _problem(problems, name, key, f"expected {_TYPE_NAMES.get(tp, tp.__name__)}, "
                 f"got {_tname(v)}")
        return _BAD
    if isinstance(v, str) and (c := _control(v, bool(meta.get("multiline")))) is not None:
        _problem(problems, name, key, f"holds the control character {c!r}",
                 "a setting is one line of text")
        return _BAD
    if not _check(v, key, name, problems, meta):
        return _BAD
    return v


def _check(v: Any, key: str, name: str, problems: list[BootgenError], meta: Any) -> bool:
    choices = meta.get("choices") or ()
    if choices and v not in choices:
        close = difflib.get_close_matches(str(v), choices, n=1)
        _problem(problems, name, key, f"'{v}' is not one of {', '.join(choices)}",
                 f"did you mean '{close[0]}'?" if close else "")
        return False
    check = meta.get("check")
    if check is not None:
        bad = check(v)
        if bad:
            _problem(problems, name, key, bad[0], bad[1])
            return False
    return True


# --- checks across the core settings (features check their own sections) -----------------


def core_checks(host: Host, report: Report) -> None:
    add = report.add
    for i, fs in enumerate(host.filesystems):
        for req in ("mountpoint", "device", "fstype"):
            if not getattr(fs, req):
                add(f"filesystems[{i}].{req}", "missing", "every filesystem needs mountpoint, "
                    "device and fstype")
    roots = [i for i, fs in enumerate(host.filesystems) if fs.mountpoint == "/"]
    if not roots:
        add("filesystems", "no filesystem is mounted at '/'",
            'add [[filesystems]] with mountpoint = "/"')
    seen: dict[str, int] = {}
    for i, fs in enumerate(host.filesystems):
        if fs.mountpoint in seen:
            add(f"filesystems[{i}].mountpoint", f"'{fs.mountpoint}' is also filesystems"
                f"[{seen[fs.mountpoint]}]", "each mountpoint once")
        seen.setdefault(fs.mountpoint, i)

    # needed-for-boot filesystems must hang below other stage-one mounts, not later ones
    boot = {fs.mountpoint for fs in host.filesystems if fs.mountpoint == "/" or fs.needed_for_boot}
    for i, fs in enumerate(host.filesystems):
        if fs.mountpoint in boot and fs.mountpoint != "/":
            parent = _mount_parent(fs.mountpoint, [f.mountpoint for f in host.filesystems])
            if parent is not None and parent not in boot:
                add(f"filesystems[{i}].needed_for_boot", f"'{fs.mountpoint}' is needed for boot "
                    f"but lies on '{parent}', which is not", f"set needed_for_boot on '{parent}'")

    level, method = host.boot.compression_level, host.boot.compression
    if level is not None and method in LEVEL_RANGES:
        lo, hi = LEVEL_RANGES[method]
        if not lo <= level <= hi:
            add("boot.compression_level", f"{level} is not a {method} level",
                f"use {lo}-{hi}")
    elif level is not None and method == "none":
        add("boot.compression_level", "compression is none", "drop compression_level")

    if host.rescue.allow_passwordless and host.rescue.root_password_hash:
        add("rescue.allow_passwordless", "a password hash is set too",
            "drop one of them: the hash wins otherwise")


def _mount_parent(mountpoint: str, all_mounts: list[str]) -> str | None:
    """The nearest other mountpoint that contains this one ('/' is never returned)."""
    best: str | None = None
    for m in all_mounts:
        if m not in ("/", mountpoint) and mountpoint.startswith(m + "/"):
            if best is None or len(m) > len(best):
                best = m
    return best
