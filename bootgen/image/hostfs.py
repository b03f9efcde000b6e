"""Turn a host path into image entries, keeping symlinks as symlinks.

Paths handled here are *image paths*: absolute paths as seen inside the image, which are the same
as on the host. `root` names the host directory that plays the role of "/" (normally "/" itself,
a fake tree in tests). Resolution follows the kernel's rules: component by component, a symlink
target is read and resolved relative to the directory holding the link (or to `root` when it is
absolute), and ".." is applied to the physical directory reached so far (never above `root`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import BuildError

MAX_SYMLINKS = 40  # the kernel's limit (ELOOP)
MISSING_HINT = "check the path or install the package that provides it"


@dataclass(frozen=True)
class HostItem:
    """One entry the image needs so that a host path works there as it does on the host."""

    path: str  # absolute path in the image (same as on the host)
    kind: str  # "file" | "dir" | "symlink"
    source: str | None  # host path to read the content from ("file"/"dir"), None for symlinks
    target: str | None  # symlink target exactly as readlink returns it, None otherwise


def host_path(path: str, root: str = "/") -> str:
    """The host path of image path `path` under `root`, without resolving anything."""
    if root in ("", "/"):
        return path
    return root.rstrip("/") + path


def _parent(path: str) -> str:
    parent = path.rsplit("/", 1)[0]
    return parent or "/"


def _join(base: str, name: str) -> str:
    return "/" + name if base == "/" else f"{base}/{name}"


def _follow(
    path: str, root: str, links: list[HostItem] | None
) -> tuple[str, os.stat_result] | None:
    """Resolve `path` under `root`; return (resolved image path, its lstat) or None if missing.

    Every symlink crossed is appended to `links` (when given). Raises BuildError on loops and
    relative paths.
    """
    if not path.startswith("/"):
        raise BuildError(f"path {path!r} is not absolute", hint="give an absolute path")
    todo = [c for c in reversed(path.split("/")) if c and c != "."]
    cur = "/"
    st: os.stat_result | None = None
    followed = 0
    while todo:
        comp = todo.pop()
        if comp == "..":
            cur, st = _parent(cur), None
            continue
        nxt = _join(cur, comp)
        try:
            st = os.lstat(host_path(nxt, root))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            followed += 1
            if followed > MAX_SYMLINKS:
                raise BuildError(
                    f"too many levels of symbolic links resolving {path}",
                    location=nxt,
                    hint="the host has a symlink loop; fix or avoid that path",
                )
            target = os.readlink(host_path(nxt, root))
            if links is not None:
                links.append(HostItem(nxt, "symlink", None, target))
            st = None
            if target.startswith("/"):
                cur = "/"
            todo.extend(c for c in reversed(target.split("/")) if c and c != ".")
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            return None
        cur = nxt
    if st is None:
        try:
            st = os.stat(host_path(cur, root))
        except FileNotFoundError:
            return None
    return cur, st


def lookup(path: str, root: str = "/") -> str | None:
    """The resolved image path of `path` (all symlinks followed), or None if it does not exist."""
    found = _follow(path, root, None)
    return None if found is None else found[0]


def resolve(path: str, root: str = "/") -> str:
    """Like `lookup`, but a missing path is a BuildError naming it."""
    found = lookup(path, root)
    if found is None:
        raise BuildError(f"{path} not found on the host", hint=MISSING_HINT)
    return found


def lookup_file(path: str, root: str = "/") -> str | None:
    """The resolved image path of `path` if it leads to a regular file, else None."""
    found = _follow(path, root, None)
    return found[0] if found is not None and stat.S_ISREG(found[1].st_mode) else None


def is_file(path: str, root: str = "/") -> bool:
    """Whether `path` resolves to a regular file."""
    return lookup_file(path, root) is not None


def walk(path: str, root: str = "/") -> tuple[HostItem, ...]:
    """The entries the image needs for `path`: every symlink crossed, then the file or dir.

    Symlinks are listed in the order they are met (each once); the last item is the resolved
    "file" or "dir". A missing path or a symlink loop is a BuildError; so is a path that resolves
    to something other than a regular file or directory.
    """
    links: list[HostItem] = []
    found = _follow(path, root, links)
    if found is None:
        raise BuildError(f"{path} not found on the host", hint=MISSING_HINT)
    real, st = found
    if stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    else:
        raise BuildError(
            f"{path} is not a regular file or directory",
            location=real,
            hint="device nodes, sockets and fifos cannot be copied from the host",
        )
    items: list[HostItem] = []
    seen: set[str] = set()
    for item in links:
        if item.path not in seen:
            seen.add(item.path)
            items.append(item)
    items.append(HostItem(real, kind, host_path(real, root), None))
    return tuple(items)
