"""Load a host description (TOML) into frozen dataclasses, collecting every problem at once.

Stage `load` of the pipeline: `load(path) -> Host`. Type and value checks come from the schema
table (bootgen.schema); checks that involve several settings live in `_cross_checks`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from .errors import BootgenError, DescriptionError
from .schema import Host

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def load(path: str | Path) -> Host:
    """Read and validate a host description; raise DescriptionError listing all problems."""
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise DescriptionError([BootgenError("no such file", location=name,
                                             hint="give the path of a host .toml")]) from None
    except OSError as e:
        raise DescriptionError([BootgenError(f"cannot read: {e.strerror}", location=name)]) from e
    return loads(text, name)


def loads(text: str, name: str = "<string>") -> Host:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DescriptionError([BootgenError(f"not valid TOML: {e}", location=name)]) from None
    problems: list[BootgenError] = []
    host = dataclasses.replace(_build(Host, raw, "", name, problems), source=name)
    # Checks across settings run even after value errors, but say nothing more about a setting
    # (or its entry) that already has a problem: its value there is only a placeholder.
    cross: list[BootgenError] = []
    _cross_checks(host, name, cross)
    bad = [p.location.split("[")[0] if "[" not in p.location else
           p.location[: p.location.index("]") + 1] for p in problems]
    problems += [c for c in cross
                 if not any(c.location.startswith(b) or b.startswith(c.location) for b in bad)]
    if problems:
        raise DescriptionError(problems)
    return host


# --- generic, schema-driven conversion -------------------------------------------------------


def _problem(problems: list[BootgenError], name: str, key: str, msg: str, hint: str = "") -> None:
    problems.append(BootgenError(msg, location=f"{name}: {key}" if key else name, hint=hint))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _build(cls: type, raw: Any, key: str, name: str, problems: list[BootgenError]) -> Any:
    if not isinstance(raw, dict):
        _problem(problems, name, key, f"expected a table, got {_tname(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in fields:
            close = difflib.get_close_matches(k, fields, n=1)
            _problem(problems, name, _join(key, k), "unknown setting",
                     f"did you mean '{close[0]}'?" if close else
                     "known: " + ", ".join(sorted(fields)))
            continue
        f = fields[k]
        values[k] = _convert(hints[k], v, _join(key, k), name, problems, f.metadata)
    try:
        return cls(**{k: v for k, v in values.items() if v is not _BAD})
    except TypeError as e:  # pragma: no cover - schema bug
        raise AssertionError(e) from e


_BAD = object()


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


# --- checks across settings: all of them live here ---------------------------------------------


def _cross_checks(host: Host, name: str, problems: list[BootgenError]) -> None:
    def add(key: str, msg: str, hint: str = "") -> None:
        _problem(problems, name, key, msg, hint)

    # required fields of list entries
    for i, fs in enumerate(host.filesystems):
        for req in ("mountpoint", "device", "fstype"):
            if not getattr(fs, req):
                add(f"filesystems[{i}].{req}", "missing", "every filesystem needs mountpoint, "
                    "device and fstype")
    for i, lk in enumerate(host.luks):
        for req in ("name", "device"):
            if not getattr(lk, req):
                add(f"luks[{i}].{req}", "missing", "every [[luks]] entry needs name and device")
    for i, ef in enumerate(host.extra.files):
        for req in ("source", "target"):
            if not getattr(ef, req):
                add(f"extra.files[{i}].{req}", "missing")

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

    # LUKS names, and filesystems on /dev/mapper/<name>
    names: dict[str, int] = {}
    for i, lk in enumerate(host.luks):
        if lk.name in names:
            add(f"luks[{i}].name", f"'{lk.name}' is also luks[{names[lk.name]}]")
        names.setdefault(lk.name, i)
        if lk.name and ("/" in lk.name or lk.name.startswith("-")):
            add(f"luks[{i}].name", f"'{lk.name}' is not a device-mapper name",
                "letters, digits, '-' and '_'")
        if (lk.key_file_device is None) != (lk.key_file_path is None):
            add(f"luks[{i}].key_file_device", "key_file_device and key_file_path go together",
                "set both, or neither")
        if lk.key_file and lk.key_file_device:
            add(f"luks[{i}].key_file", "key_file and key_file_device exclude each other",
                "embed a keyfile or read it from a device, not both")
        if lk.fallback_to_password and not (lk.key_file or lk.key_file_device):
            add(f"luks[{i}].fallback_to_password", "there is no keyfile to fall back from",
                "set key_file or key_file_device")
    for i, fs in enumerate(host.filesystems):
        if fs.device.startswith("/dev/mapper/"):
            mapped = fs.device.removeprefix("/dev/mapper/")
            if host.luks and mapped not in names:
                close = difflib.get_close_matches(mapped, names, n=1)
                add(f"filesystems[{i}].device", f"no [[luks]] entry is named '{mapped}'",
                    f"did you mean '/dev/mapper/{close[0]}'?" if close else
                    "add a [[luks]] entry with that name")

    # network and ssh
    net = host.network
    for i, itf in enumerate(net.interfaces):
        if (itf.name is None) == (itf.mac is None):
            add(f"network.interfaces[{i}]", "give exactly one of name and mac")
        if itf.dhcp and itf.address:
            add(f"network.interfaces[{i}].address", "dhcp and a static address exclude each other",
                "drop one")
        if not itf.dhcp and not itf.address:
            add(f"network.interfaces[{i}]", "neither dhcp nor address is set",
                "set dhcp = true or address = \"a.b.c.d/nn\"")
    if net.interfaces and not net.enable:
        add("network.enable", "interfaces are described but the network is disabled",
            "set enable = true")
    if net.ssh.enable:
        if not net.enable:
            add("network.ssh.enable", "SSH needs the network", "set network.enable = true")
        if not net.ssh.authorized_keys:
            add("network.ssh.authorized_keys", "nobody could log in", "add a public key")
        if not net.ssh.host_keys:
            add("network.ssh.host_keys", "no host key given",
                "generate one: ssh-keygen -t ed25519 -N '' -f /etc/bootgen/ssh_host_ed25519_key")

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
