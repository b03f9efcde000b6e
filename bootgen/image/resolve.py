"""Stage `resolve`: ImageSpec + rendered files -> Image, a sorted list of concrete entries.

Reads the build host (never writes): programs become their ELF closures, kernel module names
become module files with dependencies, firmware and a regenerated module index, host paths keep
their symlinks. Every entry says why it is there, as data: its feature and the chain that led
to it (feature, program, library).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import stat
import tempfile
from collections.abc import Iterable

from ..errors import BootgenError, BuildError, UsageError, raise_all
from ..features.api import Generated, HostFile, Program
from ..paths import check_regular, read_regular
from ..run import run
from . import elf, hostfs, keymap, kmod
from .spec import HOST_LIMIT, Entry, Image, ImageSpec

Chain = tuple[str, ...]


class _Collector:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        old = self.entries.get(entry.path)
        if old is None:
            self.entries[entry.path] = entry
            return
        if _same(old, entry):
            return
        raise BuildError(
            f"two different things want {entry.path}: {_describe(old)} and {_describe(entry)}",
            hint="remove one of them from the description",
        )

    def add_host(self, path: str, feature: str, chain: Chain, root: str) -> None:
        for item in hostfs.walk(path, root):
            self.add(_host_entry(item, feature, chain, root))


def _same(a: Entry, b: Entry) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind == "dir":
        return True
    if a.kind == "symlink":
        return a.target == b.target
    if a.kind in ("char", "block"):
        return a.rdev == b.rdev
    if a.source is not None and b.source is not None:
        return os.path.realpath(a.source) == os.path.realpath(b.source)
    return a.data is not None and a.data == b.data


def _describe(e: Entry) -> str:
    what = e.target if e.kind == "symlink" else (e.source or "generated content")
    return f"{e.kind} {what} ({e.reason})"


def _host_entry(item: hostfs.HostItem, feature: str, chain: Chain, root: str) -> Entry:
    if item.kind == "symlink":
        return Entry(item.path, "symlink", 0o777, target=item.target, feature=feature,
                     chain=chain)
    src = item.source or hostfs.host_path(item.path, root)  # a host path, root included
    mode = stat.S_IMODE(os.stat(src).st_mode)
    if item.kind == "dir":
        return Entry(item.path, "dir", mode, feature=feature, chain=chain)
    return Entry(item.path, "file", mode, source=src, feature=feature, chain=chain)


_RULE_PROGRAM = re.compile(r'(?:PROGRAM|IMPORT\{program\}|RUN\{program\}|RUN)\+?="([^"]+)"')


def udev_helpers(spec: ImageSpec, root: str) -> list[Program]:
    """Programs called by the udev rules in the image (absolute, or in /usr/lib/udev)."""
    helpers: list[Program] = []
    for f in spec.files:
        if not f.source.endswith(".rules"):
            continue
        path = os.path.join(root, f.source.lstrip("/"))
        if not os.path.isfile(path):
            continue
        with open(path, errors="replace") as fh:
            for line in fh:
                if line.lstrip().startswith("#"):
                    continue
                for cmd in _RULE_PROGRAM.findall(line):
                    prog = cmd.split()[0]
                    if "$" in prog or "%" in prog:
                        continue
                    if not prog.startswith("/"):
                        prog = f"/usr/lib/udev/{prog}"
                    helpers.append(Program(prog, reason=f"{f.reason} → {f.source}",
                                           optional=True, feature=f.feature))
    return helpers


def _programs(spec: ImageSpec, c: _Collector, root: str,
              problems: list[BootgenError]) -> None:
    why: dict[str, tuple[str, Chain]] = {}  # path -> (feature, chain)
    roots: list[str] = []
    pending = list(spec.programs) + udev_helpers(spec, root)
    missing = False
    while pending:
        prog = pending.pop(0)
        try:
            path = elf.find_program(prog.name, root)
        except BuildError as e:
            if not prog.optional:
                problems.append(e)
                missing = True
            continue
        if path in why:
            continue
        chain = (*prog.reason.split(" → "), path)
        why[path] = (prog.feature, chain)
        roots.append(path)
        interp = None if elf.is_elf(path, root) else elf.script_interpreter(path, root)
        if interp:
            pending.append(Program(interp, reason=f"{' → '.join(chain)} (#!)",
                                   feature=prog.feature))
    if missing:
        return  # the libraries of what was found would only add noise to the report
    closure = elf.closure(roots, root=root, preload=[lib.name for lib in spec.libraries])
    for path in closure.roots:
        if path not in why:  # a dlopen'd library, resolved from a path or soname
            lib = next((x for x in spec.libraries
                        if x.name in (path, os.path.basename(path))), None)
            why[path] = ((lib.feature, (lib.reason, f"dlopen {lib.name}")) if lib
                         else ("", (f"dlopen {path}",)))
        c.add_host(path, *why[path], root)
    for dep in closure.deps:
        feature, parent = why.get(dep.needed_by, ("", (f"needed by {dep.needed_by}",)))
        why.setdefault(dep.path, (feature, (*parent, os.path.basename(dep.soname or dep.path))))
        c.add_host(dep.path, *why[dep.path], root)


def _files(spec: ImageSpec, c: _Collector, root: str, problems: list[BootgenError],
           warnings: list[str]) -> None:
    for f in spec.files:
        try:
            _file(spec, f, c, root, warnings)
        except BootgenError as e:
            problems.append(e)


def _file(spec: ImageSpec, f: HostFile, c: _Collector, root: str, warnings: list[str]) -> None:
    host_path = os.path.join(root, f.source.lstrip("/")) if root != "/" else f.source
    if f.setting:
        # named by the description: a readable regular file of bounded size, or an error at
        # its key (a FIFO would hang the build, /dev/zero would fill the memory)
        where = f"{spec.description}: {f.setting}"
        st = check_regular(host_path, limit=f.max_size or HOST_LIMIT, error=UsageError,
                           location=where)
        if f.private and st.st_mode & 0o077:
            who = " and ".join(w for w, bits in (("its group", 0o070), ("others", 0o007))
                               if st.st_mode & bits)
            warnings.append(f"{where}: {f.source} is open to {who} on this host (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 {f.source}")
    elif not os.path.lexists(host_path):
        if f.optional:
            return
        raise BuildError(f"file not found: {f.source} ({f.reason})",
                         hint="install the package that provides it or fix the path")
    if f.target is None or f.target == f.source:
        if f.secret:
            raise BuildError(f"secret {f.source} needs a target path")
        c.add_host(f.source, f.feature, (f.reason,), root)
        return
    st = os.stat(host_path)
    if stat.S_ISDIR(st.st_mode):
        raise BuildError(f"{f.source} is a directory; give files one by one", hint=f.reason)
    mode = f.mode if f.mode is not None else stat.S_IMODE(st.st_mode)
    if f.convert:
        c.add(Entry(f.target, "file", mode, data=_convert(host_path, f.convert),
                    feature=f.feature, chain=(f.reason,), secret=f.secret))
        return
    c.add(Entry(f.target, "file", mode, source=os.path.realpath(host_path),
                feature=f.feature, chain=(f.reason,), secret=f.secret, max_size=f.max_size))


def _convert(path: str, how: str) -> bytes:
    """Transform a host file while reading it (a scratch file in a private temp dir)."""
    if how == "gunzip":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError) as e:
            raise BuildError(f"cannot unpack {path}: {e}") from None
    if how == "keymap" or how.startswith("keymap:"):  # an XKB symbols file → binary keymap
        variant = how.partition(":")[2] or None
        return keymap.compile_keymap(os.path.basename(path), variant)
    if how != "dropbear-key":
        raise ValueError(f"unknown conversion {how!r}")
    with tempfile.TemporaryDirectory(prefix="bootgen-key-") as tmp:
        out = os.path.join(tmp, "key")
        run(["dropbearconvert", "openssh", "dropbear", path, out])
        with open(out, "rb") as fh:
            return fh.read()


def _generated(spec: ImageSpec, g: Generated) -> bytes:
    data = g.content or b""
    where = f"{spec.description}: {g.include_setting}" if g.include_setting else ""
    problems: list[BootgenError] = []
    for path in g.include:
        try:
            extra = read_regular(path, limit=g.include_limit, error=UsageError,
                                 location=where or g.reason)
        except BootgenError as e:
            problems.append(e)
            continue
        bad = g.include_check(extra) if g.include_check is not None else None
        if bad is not None:
            problems.append(UsageError(f"{path}: {bad[0]}", location=where or g.reason,
                                       hint=bad[1]))
            continue
        data += extra if extra.endswith(b"\n") or not extra else extra + b"\n"
    raise_all(problems)
    return data


def _modules(spec: ImageSpec, c: _Collector, root: str, problems: list[BootgenError]
             ) -> tuple[list[str], list[str], list[str]]:
    requested: dict[str, tuple[str, str]] = {}  # module -> (feature, reason)
    for m in spec.modules:
        requested.setdefault(m.name.replace("-", "_"), (m.feature, m.reason))
    if not requested:
        return [], [], []
    unknown = kmod.unknown(list(requested), spec.kver, root=root)
    if unknown:
        problems.extend(unknown)
        return [], [], []
    closure = kmod.resolve(list(requested), spec.kver, root=root)
    base = f"/usr/lib/modules/{spec.kver}"
    for mod in closure.modules:
        feature, reason = requested.get(mod.name, ("", ""))
        chain = ((reason, f"module {mod.name}") if feature
                 else (f"module {mod.name} ({mod.reason})",))
        c.add_host(f"{base}/{mod.relpath}", feature, chain, root)
    for fw in closure.firmware:
        c.add_host(f"/usr/lib/firmware/{fw}", "", ("firmware of a module",), root)
    for name, data in sorted(kmod.index_files(closure, root=root).items()):
        c.add(Entry(f"{base}/{name}", "file", 0o644, data=data,
                    chain=("module index (depmod)",)))
    warnings = [f"firmware {fw} is declared by a module but missing on this host"
                for fw in closure.missing_firmware]
    return [m.name for m in closure.modules], list(closure.builtin), warnings


def _links(entries: dict[str, Entry]) -> dict[str, str]:
    return {p: e.target for p, e in entries.items() if e.kind == "symlink" and e.target}


def _canonical(entries: dict[str, Entry]) -> dict[str, Entry]:
    """Rewrite paths whose parent is a symlink in the image (e.g. /lib/x → /usr/lib/x)."""
    links = _links(entries)
    out: dict[str, Entry] = {}
    for path, entry in entries.items():
        new = _follow_parents(path, links)
        if new != path and new in out:
            continue
        out[new] = dataclasses.replace(entry, path=new) if new != path else entry
    return out


def _follow_parents(path: str, links: dict[str, str]) -> str:
    for _ in range(40):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            prefix = "/" + "/".join(parts[:i])
            if prefix in links:
                target = links[prefix]
                base = target if target.startswith("/") else os.path.join(
                    os.path.dirname(prefix), target)
                path = os.path.normpath(os.path.join(base, *parts[i:]))
                break
        else:
            return path
    raise BuildError(f"symlink loop in the image at {path}")


def resolve(spec: ImageSpec, rendered: Iterable[Generated], *, root: str = "/") -> Image:
    """The image's entries. Every missing file, program and module is found before giving up:
    one error per problem (Problems when there are several)."""
    c = _Collector()
    problems: list[BootgenError] = []
    notes: list[str] = []
    for d in spec.dirs:
        c.add(Entry(d.path, "dir", d.mode, feature=d.feature, chain=(d.reason,)))
    for n in spec.devnodes:
        c.add(Entry(n.path, "char" if n.kind == "c" else "block", n.mode,
                    rdev=(n.major, n.minor), feature=n.feature, chain=(n.reason,)))
    _files(spec, c, root, problems, notes)
    _programs(spec, c, root, problems)
    modules, builtin, warnings = _modules(spec, c, root, problems)
    for g in rendered:
        assert g.content is not None
        try:
            data = _generated(spec, g)
        except BootgenError as e:
            problems.append(e)
            continue
        c.add(Entry(g.path, "file", g.mode, data=data, feature=g.feature,
                    chain=(g.reason,), secret=g.secret))
    raise_all(problems)
    for s in spec.symlinks:
        if not s.weak:
            c.add(Entry(s.path, "symlink", 0o777, target=s.target, feature=s.feature,
                        chain=(s.reason,)))
    taken = set(_canonical(c.entries))
    for s in spec.symlinks:
        if s.weak and _follow_parents(s.path, _links(c.entries)) not in taken:
            c.add(Entry(s.path, "symlink", 0o777, target=s.target, feature=s.feature,
                        chain=(s.reason,)))
    entries = _canonical(c.entries)
    return Image(
        spec=spec,
        entries=tuple(entries[p] for p in sorted(entries)),
        modules=tuple(sorted(modules)),
        builtin_modules=tuple(sorted(builtin)),
        warnings=tuple(notes) + tuple(warnings) + spec.notes,
    )
