"""Stage `check`: read the packed image back and prove it is complete.

Independent of how the image was built: it parses the archive bytes, follows symlinks inside the
image and inspects the ELF files it finds. (A cache hit pack unpacked and compared byte for byte
already is parsed from the archive it was proven to unpack to: compress.read_image's `proven`.)
Checks that /init and the flavour's init program exist and are executable, that every program
the plan asked for is there, and that every dynamic ELF's interpreter and DT_NEEDED libraries
are present in the image.
"""

from __future__ import annotations

import hashlib
import posixpath
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..archive import compress
from ..archive.cpio import Member, member_path
from ..errors import BuildError
from . import elf


class ImageView:
    """Path lookups over the members of an image, following symlinks inside it."""

    def __init__(self, members: Iterable[Member]) -> None:
        self.members: dict[str, Member] = {}
        for m in members:
            path = member_path(m.name)
            if path is None:
                raise BuildError(f"the image holds an entry named {m.name!r}, outside /")
            self.members[path] = m

    def lookup(self, path: str, depth: int = 0) -> Member | None:
        if depth > 40:
            return None
        parts = path.strip("/").split("/")
        cur = ""
        for i, part in enumerate(parts):
            cur = posixpath.normpath(f"{cur}/{part}")
            m = self.members.get(cur)
            if m is None:
                return None
            if stat.S_ISLNK(m.mode):
                target = m.data.decode()
                base = target if target.startswith("/") else posixpath.join(
                    posixpath.dirname(cur), target)
                rest = "/".join(parts[i + 1:])
                full = posixpath.normpath(posixpath.join(base, rest)) if rest else \
                    posixpath.normpath(base)
                return self.lookup(full, depth + 1)
        return self.members.get(cur)

    def basenames(self) -> set[str]:
        """Names of all files and symlinks that resolve to files (for soname lookups)."""
        names = set()
        for path, m in self.members.items():
            if stat.S_ISREG(m.mode) or (stat.S_ISLNK(m.mode) and self.lookup(path)):
                names.add(posixpath.basename(path))
        return names


def _executable(view: ImageView, path: str, what: str) -> None:
    m = view.lookup(path)
    if m is None:
        raise BuildError(f"{what} {path} is missing from the image")
    if not stat.S_ISREG(m.mode) or not m.mode & 0o111:
        raise BuildError(f"{what} {path} is not an executable file in the image")


@dataclass(frozen=True)
class Checked:
    members: int  # entries in the archives read back (implied parent directories included)
    elf_files: int  # ELF files whose interpreter and libraries were found


DAMAGED_HINT = ("a damaged segment cache can cause this: build again with BOOTGEN_CACHE=off, "
                "or remove ~/.cache/bootgen/segments")


def check(data: bytes, *, init: str, required: Iterable[str] = (),
          files: Mapping[str, str] | None = None,
          links: Mapping[str, str] | None = None,
          proven: Mapping[int, tuple[bytes, bytes]] | None = None) -> Checked:
    """Raise BuildError if the image is incomplete, or differs from what was meant to go in:
    `files` maps each regular file's path to the sha256 pack recorded when it read it, `links`
    each symlink to its target; `proven` holds the cache hits pack unpacked and compared
    already (compress.read_image). Say what was checked."""
    members: list[Member] = []
    for segment in compress.read_image(data, proven=proven):
        members.extend(segment.members)
    view = ImageView(members)
    for path, digest in sorted((files or {}).items()):
        m = view.members.get(path)
        if m is None or not stat.S_ISREG(m.mode):
            raise BuildError(f"{path} is not a regular file in the image read back",
                             hint=DAMAGED_HINT)
        if hashlib.sha256(m.data).hexdigest() != digest:
            raise BuildError(f"{path} in the image read back differs from the file packed "
                             f"(sha256 {hashlib.sha256(m.data).hexdigest()[:16]}…, packed "
                             f"{digest[:16]}…)", hint=DAMAGED_HINT)
    for path, target in sorted((links or {}).items()):
        m = view.members.get(path)
        if m is None or not stat.S_ISLNK(m.mode) or m.data != target.encode():
            raise BuildError(f"{path} in the image read back is not a link to {target}",
                             hint=DAMAGED_HINT)
    _executable(view, "/init", "/init")
    _executable(view, init, "init program")
    for path in required:
        if view.lookup(path) is None:
            raise BuildError(f"{path} is missing from the image")
    names = view.basenames()
    checked = 0
    for path, m in sorted(view.members.items()):
        if not stat.S_ISREG(m.mode) or not m.data.startswith(b"\x7fELF") or path.endswith(".ko"):
            continue
        parsed = elf.parse_bytes(m.data, path)
        if parsed is None:
            raise BuildError(f"{path} in the image is not a valid ELF file")
        interp, needed = parsed
        checked += 1
        if interp and view.lookup(interp) is None:
            raise BuildError(f"{path} needs its interpreter {interp}, missing from the image")
        for soname in needed:
            if soname not in names:
                raise BuildError(f"{path} needs {soname}, missing from the image")
    return Checked(members=len(members), elf_files=checked)
