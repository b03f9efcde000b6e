"""ELF dependency closure, modelled on how glibc's ld.so finds libraries.

For every requested program we replay the dynamic loader's work breadth-first in a "namespace"
of its own: the program interpreter (PT_INTERP), then each object's DT_NEEDED in order. A name
that matches an object already loaded (by the name it was requested as, its DT_SONAME or its path)
is satisfied without a search, exactly like ld.so; this is how libsystemd-core-252.so (no
RUNPATH) finds libsystemd-shared-252.so, which systemd's own RUNPATH already brought in.

Search order for a DT_NEEDED without "/" requested by object L (glibc's _dl_map_object):
  1. if L has no DT_RUNPATH: the DT_RPATH of L, then of the object that loaded L, and so on up to
     the program (an object that has DT_RUNPATH has its DT_RPATH ignored, as in glibc);
  2. L's DT_RUNPATH (applies to L's own DT_NEEDED only);
  3. the directories of /etc/ld.so.conf (with `include` globs), standing in for ld.so.cache;
  4. the default directories /lib/<triplet>, /usr/lib/<triplet>, /lib64, /usr/lib64, /lib, /usr/lib
  (3 and 4 are skipped when L is linked with -z nodeflib). A candidate of another ELF class,
  byte order or machine is skipped, as ld.so does ("ignoring incompatible").

Dynamic string tokens: $ORIGIN/${ORIGIN} is the directory of the object as it was opened (for the
program itself, the directory of its resolved path, as /proc/self/exe gives it); $LIB expands to
"lib/<multiarch triplet>" (e.g. "lib/x86_64-linux-gnu") as Debian's ld.so does (LD_DEBUG=libs on
bookworm); $PLATFORM to the platform glibc picks for this CPU ("x86_64", or "haswell" where the
CPU has its features: asked from ld.so itself, see `platform`).

Not modelled: LD_LIBRARY_PATH/LD_PRELOAD of the build environment (deliberately ignored),
glibc-hwcaps/ and legacy tls/ hwcap subdirectories (Debian installs no library only there), and
ld.so.cache entries whose file name differs from the SONAME.
"""

from __future__ import annotations

import functools
import glob
import io
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from elftools.common.utils import struct_parse
from elftools.elf.structs import ELFStructs

from ..errors import BuildError
from . import hostfs

PROGRAM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
ESC = "surrogateescape"  # names that are no UTF-8 survive as they are
DF_1_NODEFLIB = 0x800
ELF_MAGIC = b"\x7fELF"

# e_machine (and class) → (Debian multiarch triplet, AT_PLATFORM)
_ARCH: dict[tuple[str, int], tuple[str, str]] = {
    ("EM_X86_64", 64): ("x86_64-linux-gnu", "x86_64"),
    ("EM_X86_64", 32): ("x86_64-linux-gnux32", "x86_64"),
    ("EM_386", 32): ("i386-linux-gnu", "i686"),
    ("EM_AARCH64", 64): ("aarch64-linux-gnu", "aarch64"),
    ("EM_ARM", 32): ("arm-linux-gnueabihf", "v7l"),
    ("EM_RISCV", 64): ("riscv64-linux-gnu", "riscv64"),
    ("EM_PPC64", 64): ("powerpc64le-linux-gnu", "powerpc64le"),
    ("EM_S390", 64): ("s390x-linux-gnu", "s390x"),
}


# The dynamic loader of an architecture, run with --list-diagnostics to learn its platform.
_LOADERS: dict[tuple[str, int], str] = {
    ("EM_X86_64", 64): "/lib64/ld-linux-x86-64.so.2",
    ("EM_AARCH64", 64): "/lib/ld-linux-aarch64.so.1",
}
_DL_PLATFORM = re.compile(r'^dl_platform="([^"]*)"', re.MULTILINE)


@functools.cache
def platform(machine: str, elfclass: int, root: str = "/") -> str:
    """$PLATFORM as glibc's ld.so expands it on this machine.

    glibc chooses it from the CPU (on x86-64 "haswell" or "xeon_phi" when the CPU has their
    features, else "x86_64"), so the loader is asked: `ld.so --list-diagnostics` (glibc 2.33 and
    later) prints dl_platform="...". Falls back to the architecture's base name when that loader
    cannot run here (another architecture, an older glibc).
    """
    fallback = _ARCH.get((machine, elfclass), ("", ""))[1]
    loader = _LOADERS.get((machine, elfclass))
    if loader is None:
        return fallback
    try:
        proc = subprocess.run([hostfs.host_path(loader, root), "--list-diagnostics"],
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return fallback
    m = _DL_PLATFORM.search(proc.stdout.decode(errors="replace"))
    return m.group(1) if m and m.group(1) else fallback


@dataclass(frozen=True)
class ElfDep:
    """One object the loader opens: `path` as it opens it, why, and under which name."""

    path: str  # host path as the dynamic loader would open it
    needed_by: str  # path of the object (or the requested program) that first needed it
    soname: str  # the DT_NEEDED string or PT_INTERP path that led to it ("" for the roots)


@dataclass(frozen=True)
class Closure:
    roots: tuple[str, ...]
    deps: tuple[ElfDep, ...]  # breadth-first, each path once, excluding the roots

    def paths(self) -> tuple[str, ...]:
        """Roots then deps: every path the image needs (symlinks still to be walked)."""
        return self.roots + tuple(d.path for d in self.deps)


# ---------------------------------------------------------------------------------------------
# Parsing (pyelftools structs; program headers and the dynamic section only: the hot path)


@dataclass(frozen=True)
class _Obj:
    ident: tuple[int, bool, str]  # (ELF class, little endian, e_machine)
    interp: str | None
    needed: tuple[str, ...]
    soname: str | None
    rpath: tuple[str, ...]  # already empty when the object also has a DT_RUNPATH
    runpath: tuple[str, ...] | None  # None: no DT_RUNPATH at all
    nodeflib: bool


_PARSED: dict[tuple[str, int, int, int, int], _Obj | None] = {}


def _parse(hpath: str) -> _Obj | None:
    """Parse host file `hpath` (already resolved); None if it is not an ELF file. Cached."""
    st = os.stat(hpath)
    key = (hpath, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _PARSED:
        _PARSED[key] = _parse_uncached(hpath)
    return _PARSED[key]


def _parse_uncached(hpath: str) -> _Obj | None:
    with open(hpath, "rb") as f:
        return _parse_stream(f, hpath)


def parse_bytes(data: bytes, name: str) -> tuple[str | None, tuple[str, ...]] | None:
    """(PT_INTERP, DT_NEEDED) of an ELF file held in memory; None if it is not ELF."""
    obj = _parse_stream(io.BytesIO(data), name)
    return None if obj is None else (obj.interp, obj.needed)


def _parse_stream(f: Any, hpath: str) -> _Obj | None:
    if len(ident := f.read(16)) < 16 or ident[:4] != ELF_MAGIC or ident[4] not in (1, 2):
        return None
    elfclass, little = (32 if ident[4] == 1 else 64), ident[5] == 1
    try:
        # headers and dynamic table only, with structures made once per kind of file (an
        # ELFFile per file, whose Segments look up the section table, was 6x slower)
        eh = struct_parse(_structs(little, elfclass).Elf_Ehdr, f, 0)
        structs = _structs(little, elfclass, eh["e_type"], eh["e_machine"],
                           eh["e_ident"]["EI_OSABI"])
        phdrs = [struct_parse(structs.Elf_Phdr, f, eh["e_phoff"] + i * eh["e_phentsize"])
                 for i in range(eh["e_phnum"])]
        interp = None
        tags: list[tuple[str, int]] = []
        for ph in phdrs:
            if ph["p_type"] == "PT_INTERP":
                f.seek(ph["p_offset"])
                interp = f.read(ph["p_filesz"]).split(b"\0", 1)[0].decode(errors=ESC)
            elif ph["p_type"] == "PT_DYNAMIC" and not tags:
                size = structs.Elf_Dyn.sizeof()
                for j in range(ph["p_filesz"] // size):
                    d = struct_parse(structs.Elf_Dyn, f, ph["p_offset"] + j * size)
                    if d["d_tag"] == "DT_NULL":
                        break
                    tags.append((d["d_tag"], d["d_val"]))
        strtab = _dynstr(phdrs, f, tags)

        def strings(tag: str) -> list[str]:
            return [strtab[v:strtab.index(b"\0", v)].decode(errors=ESC) for t, v in tags
                    if t == tag]

        has_runpath = any(t == "DT_RUNPATH" for t, _ in tags)
        return _Obj(
            ident=(elfclass, little, str(eh["e_machine"])),
            interp=interp,
            needed=tuple(strings("DT_NEEDED")),
            soname=next(iter(strings("DT_SONAME")), None),
            # glibc ignores DT_RPATH when DT_RUNPATH is present
            rpath=() if has_runpath else tuple(_split_path(strings("DT_RPATH"))),
            runpath=tuple(_split_path(strings("DT_RUNPATH"))) if has_runpath else None,
            nodeflib=bool(next((v for t, v in tags if t == "DT_FLAGS_1"), 0) & DF_1_NODEFLIB),
        )
    except Exception as e:  # pyelftools' parse and decoding errors alike
        raise BuildError(f"cannot parse ELF file {hpath}: {e}") from e


@functools.cache
def _structs(little: bool, elfclass: int, e_type: Any = None, machine: Any = None,
             osabi: Any = None) -> ELFStructs:
    structs = ELFStructs(little_endian=little, elfclass=elfclass)
    structs.create_basic_structs()
    if e_type is not None:
        structs.create_advanced_structs(e_type, machine, osabi)
    return structs


def _dynstr(phdrs: list[Any], f: Any, tags: list[tuple[str, int]]) -> bytes:
    """The dynamic string table (DT_STRTAB is an address: mapped to the file by PT_LOAD)."""
    addr = next((v for t, v in tags if t == "DT_STRTAB"), None)
    if addr is None:
        return b""
    size = next((v for t, v in tags if t == "DT_STRSZ"), 0)
    offset = next((addr - ph["p_vaddr"] + ph["p_offset"] for ph in phdrs
                   if ph["p_type"] == "PT_LOAD"
                   and ph["p_vaddr"] <= addr < ph["p_vaddr"] + ph["p_filesz"]), None)
    if offset is None:
        raise ValueError(f"DT_STRTAB {addr:#x} is in no loaded segment")
    f.seek(offset)
    if len(table := f.read(size)) < size or (table and not table.endswith(b"\0")):
        raise ValueError("the dynamic string table is cut short")
    return table


def _split_path(values: list[str]) -> list[str]:
    return [p for v in values for p in v.split(":")]


# ---------------------------------------------------------------------------------------------
# Small public helpers


def is_elf(path: str, root: str = "/") -> bool:
    """Whether image path `path` (under `root`) is an ELF file; False when missing."""
    real = hostfs.lookup_file(path, root)
    if real is None:
        return False
    with open(hostfs.host_path(real, root), "rb") as f:
        return f.read(4) == ELF_MAGIC


def script_interpreter(path: str, root: str = "/") -> str | None:
    """The interpreter of a "#!" script (first word after #!), or None for anything else."""
    real = hostfs.resolve(path, root)
    with open(hostfs.host_path(real, root), "rb") as f:
        head = f.read(256)  # the kernel's BINPRM_BUF_SIZE
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return words[0].decode() if words else None


def find_program(name: str, root: str = "/") -> str:
    """Find a program: "kmod" → "/usr/bin/kmod" (searching /usr/sbin:/usr/bin:/sbin:/bin).

    An absolute path is only checked for existence.

    The path returned is where it was found (symlinks not resolved), so the image gets the same
    path with its symlinks.
    """
    if name.startswith("/"):
        if hostfs.is_file(name, root):
            return name
        raise BuildError(f"program {name} not found", hint="install the package that provides it")
    if not name or "/" in name:
        raise BuildError(
            f"program name {name!r} must be a bare name or an absolute path",
            hint='write e.g. "kmod" or "/usr/bin/kmod"',
        )
    for d in PROGRAM_DIRS:
        candidate = f"{d}/{name}"
        real = hostfs.lookup_file(candidate, root)
        if real is not None and os.stat(hostfs.host_path(real, root)).st_mode & 0o111:
            return candidate
    raise BuildError(
        f"program {name!r} not found in {':'.join(PROGRAM_DIRS)}",
        hint=f"install the package that provides it (apt-file search bin/{name})",
    )


# ---------------------------------------------------------------------------------------------
# The loader model


def ld_so_conf_dirs(root: str = "/") -> tuple[str, ...]:
    """Directories listed by /etc/ld.so.conf, following `include` globs, in order, each once."""
    out: list[str] = []
    seen_files: set[str] = set()

    def read(conf: str) -> None:
        if conf in seen_files:
            return
        seen_files.add(conf)
        try:
            with open(hostfs.host_path(conf, root), encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] == "include" and len(words) > 1:
                for pattern in words[1:]:
                    if not pattern.startswith("/"):
                        pattern = os.path.join(os.path.dirname(conf), pattern)
                    for match in sorted(glob.glob(hostfs.host_path(pattern, root))):
                        read(match[len(root.rstrip("/")) :] if root not in ("", "/") else match)
            elif words[0] == "hwcap":
                continue
            else:
                d = line.split("=", 1)[0].rstrip("/") or "/"
                if d.startswith("/") and d not in out:
                    out.append(d)

    read("/etc/ld.so.conf")
    return tuple(out)


def default_dirs(elfclass: int = 64, machine: str = "EM_X86_64") -> tuple[str, ...]:
    """ld.so's built-in search directories for objects of this class and machine."""
    triplet = _ARCH.get((machine, elfclass), ("", ""))[0]
    dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}"] if triplet else []
    if elfclass == 64:
        dirs += ["/lib64", "/usr/lib64"]
    return tuple(dirs + ["/lib", "/usr/lib"])


@dataclass(eq=False)
class _Node:
    path: str  # as opened
    real: str  # resolved image path
    obj: _Obj | None
    loader: _Node | None
    origin: str


class _Namespace:
    """The objects one process has loaded, for name and file-identity matching."""

    def __init__(self, ident: tuple[int, bool, str] | None) -> None:
        self.ident = ident
        self.by_name: dict[str, _Node] = {}
        self.by_real: dict[str, _Node] = {}

    def add(self, node: _Node, *names: str | None) -> None:
        self.by_real.setdefault(node.real, node)
        for n in (node.path, node.obj.soname if node.obj else None, *names):
            if n:
                self.by_name.setdefault(n, node)


class _Resolver:
    def __init__(self, root: str) -> None:
        self.root = root
        self._conf: tuple[str, ...] | None = None
        self._lookups: dict[str, str | None] = {}
        self.deps: dict[str, ElfDep] = {}

    def conf_dirs(self) -> tuple[str, ...]:
        if self._conf is None:
            self._conf = ld_so_conf_dirs(self.root)
        return self._conf

    def lookup_file(self, path: str) -> str | None:
        """Resolved image path of a regular file at `path`, else None (cached per call)."""
        if path not in self._lookups:
            self._lookups[path] = hostfs.lookup_file(path, self.root)
        return self._lookups[path]

    def parse(self, real: str) -> _Obj | None:
        return _parse(hostfs.host_path(real, self.root))

    def record(self, path: str, needed_by: str, soname: str) -> None:
        if path not in self.deps:
            self.deps[path] = ElfDep(path, needed_by, soname)

    # -- search ---------------------------------------------------------------------------

    def expand(self, s: str, node: _Node | None, ident: tuple[int, bool, str] | None) -> str:
        if "$" not in s:
            return s
        triplet = _ARCH.get((ident[2], ident[0]), ("", ""))[0] if ident else ""
        lib = f"lib/{triplet}" if triplet else "lib"
        origin = node.origin if node else "/"
        plat = platform(ident[2], ident[0], self.root) if ident and "PLATFORM" in s else ""
        for token, value in (("ORIGIN", origin), ("LIB", lib), ("PLATFORM", plat)):
            s = s.replace("${" + token + "}", value).replace("$" + token, value)
        return s

    def search_dirs(self, loader: _Node | None, ns: _Namespace) -> list[str]:
        dirs: list[str] = []
        if loader is not None and loader.obj is not None:
            if loader.obj.runpath is None:
                node: _Node | None = loader
                while node is not None:
                    if node.obj is not None:
                        dirs += [self.expand(d, node, ns.ident) for d in node.obj.rpath if d]
                    node = node.loader
            else:
                dirs += [self.expand(d, loader, ns.ident) for d in loader.obj.runpath if d]
        if loader is None or loader.obj is None or not loader.obj.nodeflib:
            elfclass, _, machine = ns.ident or (64, True, "EM_X86_64")
            dirs += self.conf_dirs() + default_dirs(elfclass, machine)
        return list(dict.fromkeys(dirs))

    def open_candidate(self, path: str, ns: _Namespace) -> tuple[str, _Obj] | None:
        real = self.lookup_file(path)
        if real is None:
            return None
        obj = self.parse(real)
        if obj is None or (ns.ident is not None and obj.ident != ns.ident):
            return None  # not ELF, or another class/machine: ld.so skips it
        return real, obj

    def map_object(
        self, name: str, loader: _Node | None, ns: _Namespace, queue: list[_Node], context: str
    ) -> None:
        """ld.so's _dl_map_object: satisfy DT_NEEDED `name` of `loader` in namespace `ns`."""
        needed_by = loader.path if loader else context
        if name in ns.by_name:
            return
        expanded = self.expand(name, loader, ns.ident)
        if expanded in ns.by_name:
            return
        if "/" in expanded:
            candidates = [_clean(expanded)]
        else:
            candidates = [_clean(f"{d}/{expanded}") for d in self.search_dirs(loader, ns)]
        for path in candidates:
            found = self.open_candidate(path, ns)
            if found is None:
                continue
            real, obj = found
            self.record(path, needed_by, name)
            same = ns.by_real.get(real)
            if same is not None:  # the same file under another path: ld.so reuses it
                ns.add(same, name, path)
                return
            node = _Node(path, real, obj, loader, os.path.dirname(path) or "/")
            ns.add(node, name)
            queue.append(node)
            return
        where = ", ".join(d.rsplit("/", 1)[0] for d in candidates[:8])
        more = ", ..." if len(candidates) > 8 else ""
        raise BuildError(
            f"library {name} not found (needed by {needed_by})",
            location=context,
            hint=f"searched {where}{more}; install the package that provides {name}",
        )

    def find_preload(self, lib: str, ns: _Namespace) -> tuple[str, str, _Obj]:
        """(path, resolved path, parsed object) of a preload given as a path or a soname."""
        if "/" in lib:
            candidates = [lib]
        else:
            candidates = [_clean(f"{d}/{lib}") for d in self.search_dirs(None, ns)]
        for path in candidates:
            found = self.open_candidate(path, ns)
            if found is not None:
                return path, found[0], found[1]
        where = ", ".join(c.rsplit("/", 1)[0] or "/" for c in candidates)
        raise BuildError(
            f"library {lib} not found (requested as a dlopen() preload)",
            hint=f"searched {where}; check the name or install the package that provides it",
        )

    def run_queue(self, queue: list[_Node], ns: _Namespace, context: str) -> None:
        i = 0
        while i < len(queue):
            node = queue[i]
            i += 1
            if node.obj is not None:
                for name in node.obj.needed:
                    self.map_object(name, node, ns, queue, context)


def _clean(path: str) -> str:
    """Collapse "//" and "/./" (textual no-ops for the kernel); ".." is kept as the loader
    would pass it (hostfs resolves it physically)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def closure(paths: Sequence[str], *, root: str = "/", preload: Sequence[str] = ()) -> Closure:
    """Every shared object the loader opens for `paths` (programs) and `preload` (libraries
    that will be dlopen()ed, as absolute paths or sonames).

    Each program is its own process (namespace). Preloads are resolved afterwards in a
    namespace holding everything the programs loaded (as a dlopen() in one of them would see
    it): a soname already loaded is reused, otherwise it is searched in ld.so.conf and the
    default directories; each preload then gets its own closure. Preloads that are not
    already part of the closure are added to `roots`.
    """
    r = _Resolver(root)
    roots: list[str] = []
    shared = _Namespace(None)
    for path in paths:
        if path in roots:
            continue
        roots.append(path)
        real = r.lookup_file(path)
        if real is None:
            raise BuildError(
                f"program {path} not found", hint="install the package that provides it"
            )
        obj = r.parse(real)
        if obj is None:
            continue  # a script or data: no ELF dependencies
        ns = _Namespace(obj.ident)
        main = _Node(path, real, obj, None, os.path.dirname(real) or "/")
        ns.add(main)
        queue = [main]
        if obj.interp:
            ireal = r.lookup_file(obj.interp)
            iobj = r.parse(ireal) if ireal else None
            if ireal is None or iobj is None:
                raise BuildError(
                    f"program interpreter {obj.interp} not found (needed by {path})",
                    location=path,
                    hint="install libc6 or the package providing the dynamic loader",
                )
            r.record(obj.interp, path, obj.interp)
            interp = _Node(obj.interp, ireal, iobj, main, os.path.dirname(obj.interp))
            ns.add(interp)
            queue.append(interp)
        r.run_queue(queue, ns, path)
        if shared.ident is None:
            shared.ident = obj.ident
        for n, node in ns.by_name.items():
            shared.by_name.setdefault(n, node)
        for real_path, node in ns.by_real.items():
            shared.by_real.setdefault(real_path, node)

    for lib in preload:
        if lib in shared.by_name:
            continue  # already loaded by one of the programs: dlopen() reuses it
        path, real, obj = r.find_preload(lib, shared)
        if shared.ident is None:
            shared.ident = obj.ident
        known = shared.by_real.get(real)
        if known is not None:
            shared.add(known, lib, path)
            if path not in roots:
                r.record(path, known.path, lib)
            continue
        if path not in roots:
            roots.append(path)
        node = _Node(path, real, obj, None, os.path.dirname(path) or "/")
        shared.add(node, lib)
        r.run_queue([node], shared, path)

    deps = tuple(d for p, d in r.deps.items() if p not in roots)
    return Closure(roots=tuple(roots), deps=deps)
