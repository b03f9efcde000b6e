"""Kernel module closure: names → module files, dependencies, softdeps, firmware, indexes.

Lookup follows libkmod's order for a name: a module of that name in modules.dep ("-" and "_"
are the same), then "symbol:" names in modules.symbols, then modules.alias (exact and glob
patterns; every match is taken, since e.g. "crc32c" names both crc32c_intel and crc32c_generic
and only the generic one loads under TCG), then modules.builtin and the builtin aliases of
modules.builtin.modinfo. /etc/modprobe.d configuration is not read.

Softdeps come from modules.softdep and from each module's own .modinfo ("softdep=pre: a post:
b"; as in libkmod, words before "pre:"/"post:" are ignored). Softdeps that resolve to nothing or
to built-in code are optional and skipped; a hard dependency whose file is missing is an error.
"""

from __future__ import annotations

import difflib
import fnmatch
import gzip
import io
import lzma
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import zstandard

from ..errors import BuildError
from ..run import run, which
from . import hostfs
from .sections import section

MODULES_DIR = "/lib/modules"
FIRMWARE_DIR = "/lib/firmware"
_KO_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_FW_SUFFIXES = ("", ".zst", ".xz")
_WILD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Module:
    name: str  # canonical name with underscores, e.g. "virtio_pci"
    relpath: str  # relative to /lib/modules/<kver>, compressed suffix kept as found
    reason: str  # "requested" | "dependency of ext4" | "alias crc32c ← softdep of ext4" ...


@dataclass(frozen=True)
class ModuleClosure:
    kver: str
    modules: tuple[Module, ...]  # sorted by name
    builtin: tuple[str, ...]  # requested names that are built into the kernel
    firmware: tuple[str, ...]  # firmware files (relative to /lib/firmware) present on the host
    missing_firmware: tuple[str, ...]  # declared by a module but absent on the host


def modname(path_or_name: str) -> str:
    """Canonical module name: basename without .ko[.xz|.zst|.gz], "-" → "_"."""
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in _KO_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def _alias_normalize(alias: str) -> str:
    """libkmod's alias_normalize: "-" → "_" except inside [...] ranges."""
    if "[" not in alias:  # the common case, on the hot path of reading modules.alias
        return alias.replace("-", "_")
    out: list[str] = []
    depth = 0
    for ch in alias:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
        out.append("_" if ch == "-" and not depth else ch)
    return "".join(out)


def _version_key(v: str) -> tuple[object, ...]:
    # re.split with a capture group alternates text and digits, so positions compare alike
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", v)))


def modules_dir(kver: str) -> str:
    return f"{MODULES_DIR}/{kver}"


def newest_kernel(root: str = "/") -> str:
    """The newest kernel version with a modules.dep under /lib/modules (version-aware sort)."""
    base = hostfs.lookup(MODULES_DIR, root)
    versions: list[str] = []
    if base is not None and os.path.isdir(hostfs.host_path(base, root)):
        for entry in os.listdir(hostfs.host_path(base, root)):
            if hostfs.is_file(f"{base}/{entry}/modules.dep", root):
                versions.append(entry)
    if not versions:
        raise BuildError(
            f"no kernel modules found under {MODULES_DIR}",
            hint="install linux-image-amd64 (or run depmod for an installed kernel)",
        )
    return max(versions, key=_version_key)


# ---------------------------------------------------------------------------------------------
# Index files of one kernel


@dataclass
class _Index:
    root: str
    kver: str
    base: str  # resolved image path of /lib/modules/<kver>
    by_name: dict[str, str] = field(default_factory=dict)  # name → relpath
    deps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # relpath → dep relpaths
    builtin: set[str] = field(default_factory=set)
    builtin_aliases: dict[str, list[str]] = field(default_factory=dict)
    softdeps: dict[str, list[str]] = field(default_factory=dict)  # name → pre + post names
    _aliases: tuple[dict[str, list[str]], dict[str, list[tuple[str, str]]]] | None = None
    _symbols: dict[str, list[str]] | None = None

    def read_bytes(self, name: str) -> bytes:
        path = hostfs.lookup(f"{self.base}/{name}", self.root)
        if path is None:
            return b""
        with open(hostfs.host_path(path, self.root), "rb") as f:
            return f.read()

    def read(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8", errors="replace")

    def load(self) -> None:
        text = self.read("modules.dep")
        if not text:
            raise BuildError(
                f"{modules_dir(self.kver)}/modules.dep is missing or empty",
                hint=f"run depmod {self.kver} or reinstall the kernel package",
            )
        for line in text.splitlines():
            rel, sep, rest = line.partition(":")
            if sep:
                self.by_name.setdefault(modname(rel), rel)
                self.deps[rel] = tuple(rest.split())
        for line in self.read("modules.builtin").splitlines():
            if line.strip():
                self.builtin.add(modname(line.strip()))
        for rec in self.read("modules.builtin.modinfo").split("\0"):
            key, _, value = rec.partition("=")
            mod, _, attr = key.partition(".")
            if attr == "alias" and value:
                self.builtin.add(modname(mod))
                self.builtin_aliases.setdefault(_alias_normalize(value), []).append(modname(mod))
        for line in self.read("modules.softdep").splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "softdep":
                self.softdeps.setdefault(modname(words[1]), []).extend(_softdep_names(words[2:]))

    def aliases(self) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, str]]]]:
        """(exact alias → modules, literal-prefix bucket → [(glob pattern, module)])."""
        if self._aliases is None:
            exact: dict[str, list[str]] = {}
            wild: dict[str, list[tuple[str, str]]] = {}
            for line in self.read("modules.alias").splitlines():
                words = line.split()
                if len(words) != 3 or words[0] != "alias":
                    continue
                pattern, mod = _alias_normalize(words[1]), modname(words[2])
                m = _WILD.search(pattern)
                if m is None:
                    exact.setdefault(pattern, []).append(mod)
                else:
                    wild.setdefault(pattern[: min(m.start(), 4)], []).append((pattern, mod))
            self._aliases = (exact, wild)
        return self._aliases

    def symbols(self) -> dict[str, list[str]]:
        if self._symbols is None:
            self._symbols = {}
            for line in self.read("modules.symbols").splitlines():
                words = line.split()
                if len(words) == 3 and words[0] == "alias":
                    self._symbols.setdefault(words[1], []).append(modname(words[2]))
        return self._symbols

    def lookup(self, name: str) -> tuple[str, list[str]]:
        """("module", [names]) | ("builtin", [name]) | ("unknown", [])."""
        if "/" not in name and modname(name) in self.by_name:
            return "module", [modname(name)]
        found: list[str] = []
        if name.startswith("symbol:"):
            found += self.symbols().get(name, [])
        alias = _alias_normalize(name)
        exact, wild = self.aliases()
        found += exact.get(alias, [])
        for k in range(min(len(alias), 4) + 1):
            for pattern, mod in wild.get(alias[:k], ()):
                if fnmatch.fnmatchcase(alias, pattern):
                    found.append(mod)
        found = [m for m in dict.fromkeys(found) if m in self.by_name]
        if found:
            return "module", found
        if modname(name) in self.builtin or alias in self.builtin_aliases:
            return "builtin", [name]
        return "unknown", []


def _softdep_names(words: Sequence[str]) -> list[str]:
    out: list[str] = []
    mode = ""
    for w in words:
        if w in ("pre:", "post:"):
            mode = w
        elif mode:
            out.append(w)
    return out


_INDEXES: dict[tuple[str, str, int, int], _Index] = {}


def _index(kver: str, root: str) -> _Index:
    base = hostfs.lookup(modules_dir(kver), root)
    if base is None:
        raise BuildError(
            f"kernel {kver} has no {modules_dir(kver)}",
            hint="install its linux-image package or pick another kernel version",
        )
    try:
        st = os.stat(hostfs.host_path(f"{base}/modules.dep", root))
    except OSError:
        st = os.stat(hostfs.host_path(base, root))
    key = (root, kver, st.st_ino, st.st_mtime_ns)
    if key not in _INDEXES:
        idx = _Index(root, kver, base)
        idx.load()
        _INDEXES[key] = idx
    return _INDEXES[key]


# ---------------------------------------------------------------------------------------------
# .modinfo


def read_modinfo(path: str) -> tuple[tuple[str, str], ...]:
    """(key, value) pairs of a module's .modinfo section; host path, .ko[.xz|.zst|.gz]."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".xz"):
            data = lzma.decompress(data)
        elif path.endswith(".gz"):
            data = gzip.decompress(data)
        elif path.endswith(".zst"):
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as r:
                data = r.read()
        blob = section(data, b".modinfo")
    except Exception as e:  # decompression, ELF or I/O errors
        raise BuildError(f"cannot read module {path}: {e}", hint="reinstall the kernel") from e
    pairs = []
    for rec in blob.split(b"\0"):
        key, sep, value = rec.decode(errors="replace").partition("=")
        if sep:
            pairs.append((key, value))
    return tuple(pairs)


# ---------------------------------------------------------------------------------------------
# The closure


def resolve(names: Sequence[str], kver: str, *, root: str = "/") -> ModuleClosure:
    """Modules needed to load `names` (modules, aliases or built-ins) on kernel `kver`."""
    idx = _index(kver, root)
    chosen: dict[str, Module] = {}
    builtin: list[str] = []
    queue: list[str] = []

    def add(mod: str, reason: str) -> None:
        if mod in chosen:
            return
        rel = idx.by_name[mod]
        if hostfs.lookup(f"{idx.base}/{rel}", root) is None:
            raise BuildError(
                f"kernel module file {modules_dir(kver)}/{rel} is missing ({reason})",
                hint=f"reinstall the kernel package or run depmod {kver}",
            )
        chosen[mod] = Module(mod, rel, reason)
        queue.append(mod)

    def add_names(name: str, reason: str, *, optional: bool) -> None:
        kind, mods = idx.lookup(name)
        if kind == "unknown" and not optional:
            raise _unknown(name, kver, idx)
        if kind == "builtin":
            if not optional and name not in builtin:
                builtin.append(name)
            return
        for mod in mods:
            via = reason if modname(name) == mod else f"alias {name} ← {reason}"
            add(mod, via)

    for name in names:
        add_names(name, "requested", optional=False)
    firmware: dict[str, None] = {}
    i = 0
    while i < len(queue):
        mod = queue[i]
        i += 1
        rel = idx.by_name[mod]
        for dep in idx.deps.get(rel, ()):
            dname = modname(dep)
            if dname not in idx.by_name:
                raise BuildError(
                    f"kernel module {mod} depends on {dep}, which modules.dep does not list",
                    hint=f"run depmod {kver}",
                )
            add(dname, f"dependency of {mod}")
        info = read_modinfo(hostfs.host_path(hostfs.resolve(f"{idx.base}/{rel}", root), root))
        soft = list(idx.softdeps.get(mod, []))
        for key, value in info:
            if key == "softdep":
                soft += _softdep_names(value.split())
            elif key == "firmware" and value:
                firmware.setdefault(value)
        for name in dict.fromkeys(soft):
            add_names(name, f"softdep of {mod}", optional=True)

    present, missing = _firmware(list(firmware), kver, root)
    return ModuleClosure(
        kver=kver,
        modules=tuple(sorted(chosen.values(), key=lambda m: m.name)),
        builtin=tuple(builtin),
        firmware=present,
        missing_firmware=missing,
    )


def unknown(names: Sequence[str], kver: str, *, root: str = "/") -> list[BuildError]:
    """One error for each name that is no module, alias or built-in of kernel `kver`."""
    idx = _index(kver, root)
    return [_unknown(name, kver, idx) for name in names if idx.lookup(name)[0] == "unknown"]


def _unknown(name: str, kver: str, idx: _Index) -> BuildError:
    names = list(idx.by_name) + sorted(idx.builtin)
    close = difflib.get_close_matches(name.replace("-", "_"), names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"see {modules_dir(kver)}/modules.dep"
    return BuildError(f"unknown kernel module {name!r} for {kver}", hint=hint)


def _firmware(declared: list[str], kver: str, root: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split declared firmware into present (relative paths as found) and missing names."""
    present: list[str] = []
    missing: list[str] = []
    for fw in declared:
        for prefix in (f"updates/{kver}/", "updates/", f"{kver}/", ""):
            hit = next(
                (
                    prefix + fw + sfx
                    for sfx in _FW_SUFFIXES
                    if hostfs.is_file(f"{FIRMWARE_DIR}/{prefix}{fw}{sfx}", root)
                ),
                None,
            )
            if hit:
                present.append(hit)
                break
        else:
            missing.append(fw)
    return tuple(sorted(set(present))), tuple(sorted(set(missing)))


# ---------------------------------------------------------------------------------------------
# Index files for the image


def index_files(closure: ModuleClosure, *, root: str = "/") -> dict[str, bytes]:
    """modules.* index files for exactly the modules of `closure`, generated by depmod.

    The modules are staged as symlinks to the host files in a temporary tree together with
    modules.builtin, modules.builtin.modinfo and a filtered modules.order, then
    `depmod -b TMP <kver>` writes the indexes. Returns {"modules.dep": b"...", ...}.
    """
    idx = _index(closure.kver, root)
    depmod = which("depmod")
    if depmod is None:
        raise BuildError("depmod not found", hint="install kmod")
    stage = tempfile.mkdtemp(prefix="bootgen-depmod-")
    try:
        mdir = os.path.join(stage, "lib", "modules", closure.kver)
        os.makedirs(mdir)
        rels = {m.relpath for m in closure.modules}
        for rel in sorted(rels):
            src = hostfs.host_path(hostfs.resolve(f"{idx.base}/{rel}", root), root)
            dst = os.path.join(mdir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.path.abspath(src), dst)
        for name in ("modules.builtin", "modules.builtin.modinfo"):
            with open(os.path.join(mdir, name), "wb") as f:
                f.write(idx.read_bytes(name))
        order = [line.strip() for line in idx.read("modules.order").splitlines()]
        kept = [r for r in order if r in rels]
        kept += sorted(rels - set(kept))
        with open(os.path.join(mdir, "modules.order"), "w", encoding="utf-8") as f:
            f.write("".join(r + "\n" for r in kept))
        run([depmod, "-b", stage, closure.kver])
        out: dict[str, bytes] = {}
        for name in sorted(os.listdir(mdir)):
            path = os.path.join(mdir, name)
            if name.startswith("modules.") and os.path.isfile(path):
                with open(path, "rb") as f:
                    out[name] = f.read()
        return out
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def lookup(name: str, kver: str, *, root: str = "/") -> tuple[str, list[str]]:
    """What a module name or alias is for `kver`: ("module", [names]), ("builtin", [name]) or
    ("unknown", [])."""
    return _index(kver, root).lookup(name)
