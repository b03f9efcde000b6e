"""How bootgen touches files on the machine it runs on: its cache, what it reads, what it writes.

Reading: `read_regular` reads only regular files (a FIFO, a device node or a directory is refused
before a byte is read, without blocking) of a bounded size checked before reading.

Writing: every output is written atomically (a temp file beside the target, fsync, rename), and
the outputs of one command together (`write_outputs`): all temp files are written first, then
renamed in the order given (manifest and secrets before the image) under a lock on their
directories, so that a failed, interrupted or concurrent command never leaves a partial file, a
file of another run beside it, or a new image without its manifest. Before anything is built,
`check_outputs` refuses to write over an input, over anything that is not a regular file (device
nodes, FIFOs, directories, symbolic links), one output over another, and over the initrd of the
running kernel unless forced (the old one is then kept as a backup). New files respect the
umask and never get wider permissions than the file they replace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import signal
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BootgenError, BuildError, Interrupted, UsageError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BOOT_DIR = Path("/boot")  # where the running kernel's initrd lives (tests point it elsewhere)
BACKUP_SUFFIX = ".bootgen-old"
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def cache_dir(*parts: str) -> Path:
    """$XDG_CACHE_HOME/bootgen/<parts> (default ~/.cache/bootgen/<parts>)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "bootgen", *parts)


def size_text(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def env_size(name: str, default: int) -> int:
    """A size from the environment: bytes, or a number with K, M or G (binary units)."""
    value = os.environ.get(name, "").strip().upper().removesuffix("B").removesuffix("I")
    if not value:
        return default
    scale = {"K": KiB, "M": MiB, "G": GiB}.get(value[-1], 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit() or int(digits) == 0:
        raise UsageError(f"{name}={os.environ[name]!r} is not a size",
                         hint="write bytes or a number with K, M or G, e.g. 2G")
    return int(digits) * scale


def kind(mode: int) -> str:
    """What a file is, for messages: "a directory", "a FIFO"..."""
    for test, word in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "a special file"


# --- reading ---------------------------------------------------------------------------------


def _open_regular(path: str | Path, limit: int, error: type[BootgenError],
                  location: str) -> tuple[int, os.stat_result]:
    where = location or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except ValueError:
        raise error("the path contains a NUL byte", location=where) from None
    except FileNotFoundError:
        raise error(f"{path}: no such file" if location else "no such file",
                    location=where, hint="check the path") from None
    except PermissionError:
        raise error(f"{path}: permission denied" if location else "permission denied",
                    location=where, hint="make it readable by this user (or run bootgen as a "
                    "user who can read it)") from None
    except OSError as e:
        raise error(f"{path}: cannot open: {e.strerror}" if location else
                    f"cannot open: {e.strerror}", location=where) from None
    try:
        st = os.fstat(fd)
        prefix = f"{path}: " if location else ""
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{prefix}is {kind(st.st_mode)}, not a regular file", location=where,
                        hint="give a regular file")
        if st.st_size > limit:
            raise error(f"{prefix}{size_text(st.st_size)} is more than the limit of "
                        f"{size_text(limit)}", location=where, hint="is this the right file?")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def check_regular(path: str | Path, *, limit: int, error: type[BootgenError] = BuildError,
                  location: str = "") -> os.stat_result:
    """Prove that `path` is a readable regular file of at most `limit` bytes (following
    symlinks), without reading it; its stat."""
    fd, st = _open_regular(path, limit, error, location)
    os.close(fd)
    return st


def read_regular(path: str | Path, *, limit: int, error: type[BootgenError] = BuildError,
                 location: str = "") -> bytes:
    """The content of a regular file of at most `limit` bytes. Anything else is refused
    before reading (a FIFO does not block, /dev/zero is not read); a file that grows past
    the limit while being read is refused too. Errors name `location` (default: the path)."""
    fd, st = _open_regular(path, limit, error, location)
    try:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(limit + 1 - total, 8 * MiB) or 1)
            except OSError as e:
                raise error(f"cannot read: {e.strerror}", location=location or str(path)) from None
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise error(f"grew past the limit of {size_text(limit)} while being read",
                            location=location or str(path))
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# --- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """One file a command writes: which option named it, where, its content and mode (before
    the umask)."""

    option: str  # "-o", "--manifest", "--secrets-out", "--svg"
    path: Path
    data: bytes = b""
    mode: int = 0o644


def running_kernel_images() -> tuple[Path, ...]:
    """Where the initrd of the running kernel is (Debian's and Fedora's names)."""
    release = os.uname().release
    return (BOOT_DIR / f"initrd.img-{release}", BOOT_DIR / f"initramfs-{release}.img")


def _directory(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _identity(path: Path) -> tuple[int, int] | str:
    """What makes two paths the same file: (device, inode) when it exists, else the real path
    of its directory joined with its name."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return os.path.join(os.path.realpath(_directory(path)), path.name)


def _probe(directory: Path, option: str, path: Path) -> None:
    """Create and remove a file in `directory`: the only sure test that we can write there
    (a read-only mount, /proc and /sys refuse; access(2) does not always know)."""
    name = directory / f".bootgen-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise UsageError(f"cannot write in {directory}: {e.strerror}",
                         location=f"{option} {path}", hint="choose a writable directory") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def check_outputs(outputs: Sequence[Output], inputs: Iterable[str | Path] = (), *,
                  force: bool = False, probe: bool = True) -> None:
    """Refuse outputs that would destroy something: an input, a file that is not a regular file
    (device node, FIFO, directory, symbolic link), another output of the same command, or the
    running kernel's initrd (unless `force`). UsageError naming the option."""
    ids: dict[tuple[int, int], str] = {}
    for p in inputs:
        with contextlib.suppress(OSError, ValueError):
            ist = os.stat(p)
            ids.setdefault((ist.st_dev, ist.st_ino), str(p))
    running = {}
    for p in running_kernel_images():
        with contextlib.suppress(OSError):
            rst = os.stat(p)
            running[(rst.st_dev, rst.st_ino)] = p
    seen: dict[tuple[int, int] | str, str] = {}
    for out in outputs:
        where = f"{out.option} {out.path}"
        if "\0" in str(out.path):
            raise UsageError("the path contains a NUL byte", location=out.option)
        directory = _directory(out.path)
        if not directory.is_dir():
            raise UsageError(f"directory {directory} does not exist", location=where,
                             hint="create it first")
        st: os.stat_result | None
        try:
            st = os.lstat(out.path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise UsageError(f"cannot look at it: {e.strerror}", location=where) from None
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                raise UsageError("is a symbolic link; bootgen does not replace links",
                                 location=where,
                                 hint=f"give the path it points to ({os.path.realpath(out.path)})")
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"is {kind(st.st_mode)}; bootgen writes only regular files",
                                 location=where, hint="choose another path")
            key = (st.st_dev, st.st_ino)
            if key in ids:
                raise UsageError(f"is an input of this command ({ids[key]})", location=where,
                                 hint="write the output somewhere else")
            if key in running and not force:
                raise UsageError(f"is the initrd of the running kernel ({os.uname().release})",
                                 location=where, hint="write it elsewhere and try it first with "
                                 f"bootgen verify, or pass --force (the old one is kept as "
                                 f"{out.path.name}{BACKUP_SUFFIX})")
        ident = _identity(out.path)
        if ident in seen:
            raise UsageError(f"is also {seen[ident]}", location=where,
                             hint="give each output its own path")
        seen[ident] = out.option
        if probe:
            _probe(directory, out.option, out.path)


@contextlib.contextmanager
def _locked(directories: Iterable[Path]) -> Iterator[None]:
    """Exclusive flock(2) on each directory, in a fixed order (no deadlock between two
    commands): commands writing the same outputs commit one after the other."""
    fds: list[int] = []
    try:
        keyed = {}
        for d in directories:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in keyed:
                os.close(fd)
                continue
            keyed[(st.st_dev, st.st_ino)] = fd
        for key in sorted(keyed):
            fd = keyed[key]
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # closing releases the lock


_pending: list[int] | None = None  # signals that arrived while renames ran


def on_signal(signum: int, frame: object) -> None:
    """The handler of SIGTERM, SIGHUP and SIGINT for commands that write (bootgen.cli installs
    it): stop with Interrupted, which removes temp files on its way out; while the renames of
    write_outputs run, wait until they are done."""
    if _pending is not None:
        _pending.append(signum)
        return
    raise Interrupted(signum, signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT/SIGHUP while the renames run: they all happen or none; a signal that
    arrived stops the command right after. (The mask holds them in this thread; on_signal holds
    those another thread received.)"""
    global _pending
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    _pending = []
    try:
        yield
    finally:
        held, _pending = _pending, None
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if held:
            raise Interrupted(held[0], signal.Signals(held[0]).name)


def _temp_name(path: Path) -> Path:
    return _directory(path) / f".{path.name}.bootgen-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_outputs(outputs: Sequence[Output], inputs: Iterable[str | Path] = (), *,
                  force: bool = False) -> None:
    """Write every output, all or none: temp files first, then renames in the order given, under
    a lock on their directories. On any error or signal, no temp file is left and no target is
    touched (unless every temp file was complete and renaming had begun, which signals cannot
    interrupt). Replacing the running kernel's initrd (with `force`) keeps the old one as
    NAME.bootgen-old."""
    inputs = list(inputs)
    check_outputs(outputs, inputs, force=force, probe=False)
    temps: dict[Path, Path] = {}
    try:
        with _locked(_directory(o.path) for o in outputs):
            check_outputs(outputs, inputs, force=force, probe=False)  # as they are now
            for out in outputs:
                mode = out.mode
                with contextlib.suppress(FileNotFoundError):
                    mode &= stat.S_IMODE(os.lstat(out.path).st_mode)  # never wider than before
                tmp = _temp_name(out.path)
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, mode)  # the kernel applies the umask
                except OSError as e:
                    raise UsageError(f"cannot write: {e.strerror}",
                                     location=f"{out.option} {out.path}",
                                     hint="choose a writable directory") from None
                temps[out.path] = tmp
                try:
                    _write_fd(fd, out.data)
                except OSError as e:
                    raise BuildError(f"cannot write: {e.strerror}",
                                     location=f"{out.option} {out.path}") from None
                finally:
                    os.close(fd)
            running = [p for p in running_kernel_images() if p.exists()]
            with _signals_held():
                for out in outputs:
                    if force and any(_same(out.path, p) for p in running):
                        _backup(out.path)
                    os.replace(temps.pop(out.path), out.path)
                for d in {_directory(o.path) for o in outputs}:
                    _fsync_dir(d)
    except OSError as e:
        raise BuildError(f"cannot write: {e.strerror}", location=e.filename or "") from None
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _backup(path: Path) -> None:
    """Keep the current `path` as PATH.bootgen-old (a hard link, replaced atomically)."""
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    tmp = _temp_name(backup)
    os.link(path, tmp)
    os.replace(tmp, backup)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """One file, atomically (for caches: no checks against inputs); respects the umask."""
    directory = _directory(path)
    if not directory.is_dir():
        raise UsageError(f"directory {directory} does not exist", location=str(path))
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            _write_fd(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing): one builder of a cache entry at
    a time, the others wait and then find it built."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a completely built cache directory into place, atomically: the entry appears
    complete or not at all. When a concurrent builder was first (same content), its entry is
    kept and `tmp` is left for the caller to remove."""
    tmp.chmod(0o755)
    try:
        os.rename(tmp, final)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
