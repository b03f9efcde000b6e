"""What bootgen promises about the files it reads and writes (docs/security.md): a damaged
segment cache never reaches an image, the read-back check compares the image with what was meant
to go in, interrupted and concurrent builds leave whole outputs that belong together and no temp
file, outputs respect the umask, the running kernel's initrd is kept, and `ls`/`diff` show names
as the kernel would place them."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen import paths
from bootgen.archive import compress, cpio
from bootgen.cli import main
from bootgen.errors import BuildError
from bootgen.image import pack as pack_module
from bootgen.image.check import check

from .conftest import EXAMPLES, needs_kernel

HOST = """\
[boot]
flavor = "scripted"
compression_level = 3
kernel_params = ["console=ttyS0"]

[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]

[[filesystems]]
mountpoint = "/"
device = "LABEL=root"
fstype = "ext4"
options = ["rw"]

[rescue]
allow_passwordless = true
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootgen.cli", "build", *args],
                          capture_output=True, text=True)


def temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def host(tmp_path: Path) -> Path:
    p = tmp_path / "host.toml"
    p.write_text(HOST)
    return p


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A segment cache of this test's own (the damage below must not reach other tests)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache/bootgen/segments"


# --- 1. the segment cache -------------------------------------------------------------------


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


DAMAGE = {
    "bit flipped at the start": lambda b: flip(b, 6),
    "bit flipped a quarter in": lambda b: flip(b, len(b) // 4),
    "bit flipped in the middle": lambda b: flip(b, len(b) // 2),
    "bit flipped at the end": lambda b: flip(b, len(b) - 2),
    "truncated": lambda b: b[: len(b) // 2],
    "emptied": lambda b: b"",
    "bytes appended": lambda b: b + b"\x28\xb5\x2f\xfd junk",
}


@needs_kernel
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_cache_entries_are_rebuilt(damage: str, host: Path, cache: Path,
                                           tmp_path: Path) -> None:
    clean = tmp_path / "clean.img"
    assert build_cli(str(host), "-o", str(clean)).returncode == 0
    entries = sorted(cache.iterdir())
    assert entries, "the first build fills the cache"
    for entry in entries:
        entry.write_bytes(DAMAGE[damage](entry.read_bytes()))
    out = tmp_path / "again.img"
    res = build_cli(str(host), "-o", str(out), "--manifest", str(tmp_path / "m.json"))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(entries)
    assert all("segment cache: the cached" in w and "was damaged" in w for w in warnings)
    assert sha(out) == sha(clean)  # the image is what a clean build makes
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["image_sha256"] == sha(out)
    # the bad entries were replaced by good ones: the next build uses them without a word
    third = build_cli(str(host), "-o", str(tmp_path / "third.img"))
    assert third.returncode == 0 and "warning" not in third.stderr
    assert sha(tmp_path / "third.img") == sha(clean)


@needs_kernel
def test_cache_entry_that_is_a_fifo_is_ignored(host: Path, cache: Path, tmp_path: Path) -> None:
    assert build_cli(str(host), "-o", str(tmp_path / "a.img")).returncode == 0
    for entry in cache.iterdir():
        entry.unlink()
        os.mkfifo(entry)
    res = build_cli(str(host), "-o", str(tmp_path / "b.img"))
    assert res.returncode == 0, res.stderr  # a FIFO is no entry: no hang, no warning needed
    assert sha(tmp_path / "a.img") == sha(tmp_path / "b.img")


@needs_kernel
def test_check_catches_a_segment_the_cache_got_wrong(host: Path, cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back check unpacks every stream it was given no proof for: were the cache's
    own verification fooled (here: switched off) and its proofs not handed on, the check still
    finds that the image does not hold the files pack read. (With proofs, the check parses a
    cache hit from the archive pack unpacked and compared it to: test_compress.py::
    test_proven_stream_is_not_unpacked_twice.)"""
    from bootgen.description import load
    from bootgen.image.build import build

    h = load(host)
    build(h, output=tmp_path / "a.img")
    # each cached segment replaced by a valid stream of other content: a cpio whose files
    # have the same names but other bytes
    for entry in cache.iterdir():
        method = "zstd"
        members = compress.read_image(entry.read_bytes())[0].members
        tampered = [cpio.Member(m.name, m.mode, m.data[:-1] + b"X" if m.is_file and m.data
                                else m.data, m.rdev) for m in members]
        entry.write_bytes(compress.compress(cpio.write_newc(tampered), method))
    monkeypatch.setattr(compress, "matches", lambda data, method, raw: None)
    monkeypatch.setattr(pack_module.Packed, "proven", lambda self: {})
    with pytest.raises(BuildError) as e:
        build(h, output=tmp_path / "b.img")
    assert "in the image read back differs from the file packed" in e.value.message
    assert "BOOTGEN_CACHE=off" in e.value.hint
    assert not (tmp_path / "b.img").exists()


def test_check_compares_files_and_links() -> None:
    raw = cpio.write_newc([
        cpio.Member("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
        cpio.Member("etc/x", stat.S_IFREG | 0o644, b"tampered"),
        cpio.Member("bin", stat.S_IFLNK | 0o777, b"usr/bin"),
    ])
    image = compress.compress(raw, "zstd")
    init = hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    meant = hashlib.sha256(b"original").hexdigest()
    assert check(image, init="/init", files={"/init": init}).members == 4  # and /etc
    with pytest.raises(BuildError, match=r"/etc/x in the image read back differs"):
        check(image, init="/init", files={"/init": init, "/etc/x": meant})
    with pytest.raises(BuildError, match=r"/etc/y is not a regular file in the image"):
        check(image, init="/init", files={"/etc/y": meant})
    with pytest.raises(BuildError, match=r"/bin in the image read back is not a link to "
                                         r"usr/sbin"):
        check(image, init="/init", links={"/bin": "usr/sbin"})


def test_pack_drops_a_bad_hit_and_says_so(tmp_path: Path) -> None:
    """Unit level: a cache answering with the wrong bytes for a key is not believed."""
    from .test_pack import INIT, image

    class Liar:
        def __init__(self) -> None:
            self.dropped: list[str] = []
            self.stored: dict[str, bytes] = {}

        def get(self, key: str) -> bytes | None:
            return compress.compress(b"not this segment", "zstd")

        def put(self, key: str, data: bytes) -> None:
            self.stored[key] = data

        def drop(self, key: str) -> None:
            self.dropped.append(key)

    (tmp_path / "x").write_bytes(b"a host file")
    host_file = pack_module.Entry("/usr/bin/x", "file", 0o755, source=str(tmp_path / "x"),
                                  feature="extra")
    liar = Liar()
    packed = pack_module.pack(image([INIT, host_file], "zstd"), early_microcode=False,
                              cache=liar)
    assert liar.dropped and len(packed.warnings) == len(liar.dropped)
    assert not any(s.cached for s in packed.segments)
    honest = pack_module.pack(image([INIT, host_file], "zstd"), early_microcode=False)
    assert packed.data == honest.data


# --- 2. and 10. writing: all or nothing, never a temp file -------------------------------------


@needs_kernel
@pytest.mark.parametrize("when", ["writing the image", "writing the manifest",
                                  "renaming the manifest"])
def test_signal_during_the_write(when: str, host: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while the outputs are written: no temp file, the previous image and manifest
    untouched; once the renames have begun they all finish (signals wait), so the outputs are
    always one build's."""
    img, man = tmp_path / "i.img", tmp_path / "i.json"
    img.write_bytes(b"previous image")
    man.write_bytes(b"previous manifest")
    write_fd, replace = paths._write_fd, os.replace
    calls: list[int] = []

    def slow_write(fd: int, data: bytes) -> None:
        calls.append(fd)
        if (when == "writing the image" and data[:4] != b"{\n \"") or (
                when == "writing the manifest" and data[:4] == b"{\n \""):
            os.kill(os.getpid(), signal.SIGTERM)
        write_fd(fd, data)

    def interrupted_replace(a: str | Path, b: str | Path) -> None:
        if when == "renaming the manifest" and str(b) == str(man):
            os.kill(os.getpid(), signal.SIGTERM)  # held until the renames are done
        replace(a, b)

    monkeypatch.setattr(paths, "_write_fd", slow_write)
    monkeypatch.setattr(paths.os, "replace", interrupted_replace)
    res = CliRunner().invoke(main, ["build", str(host), "-o", str(img), "--manifest", str(man)])
    assert res.exit_code == 128 + signal.SIGTERM, (res.stderr, res.exception)
    assert res.stderr.splitlines()[-1] == "error: interrupted by SIGTERM"
    assert temps(tmp_path) == []
    if when == "renaming the manifest":
        assert json.loads(man.read_text())["image_sha256"] == sha(img)
    else:
        assert img.read_bytes() == b"previous image"
        assert man.read_bytes() == b"previous manifest"


@needs_kernel
def test_a_failing_manifest_leaves_no_new_image(host: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "i.img"
    img.write_bytes(b"previous image")
    write_fd = paths._write_fd

    def full_disk(fd: int, data: bytes) -> None:
        if data[:4] == b"{\n \"":  # the manifest
            raise OSError(28, "No space left on device")
        write_fd(fd, data)

    monkeypatch.setattr(paths, "_write_fd", full_disk)
    res = CliRunner().invoke(main, ["build", str(host), "-o", str(img), "--manifest",
                                    str(tmp_path / "m.json")])
    assert res.exit_code == 1
    assert res.stderr.splitlines()[-1] == (f"error: --manifest {tmp_path / 'm.json'}: cannot "
                                           "write: No space left on device")
    assert img.read_bytes() == b"previous image"
    assert not (tmp_path / "m.json").exists() and temps(tmp_path) == []


@needs_kernel
def test_a_signal_does_not_wait_for_the_compression(host: Path, cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (or Ctrl-C) while a first build compresses: the command stops at once, not
    when zstd is done (6.4 s of a first systemd build with a thread pool), and neither the
    image nor a cache entry is written."""
    img = tmp_path / "i.img"
    img.write_bytes(b"previous image")
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def stuck(raw: bytes, method: str, level: int | None = None) -> bytes:
        started.set()
        release.wait(60)  # a compression that outlasts the signal
        finished.set()
        return compress.compress(raw, method, level)

    def interrupt() -> None:
        if started.wait(60):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pack_module.compress, "compress", stuck)
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        res = CliRunner().invoke(main, ["build", str(host), "-o", str(img)])
        assert not finished.is_set()  # it returned while the compression was still running
    finally:
        release.set()
    assert res.exit_code == 128 + signal.SIGTERM, (res.stderr, res.exception)
    assert res.stderr.splitlines()[-1] == "error: interrupted by SIGTERM"
    assert img.read_bytes() == b"previous image" and temps(tmp_path) == []
    assert not cache.exists() or not any(cache.iterdir())


def test_in_daemon_threads_keeps_the_order_and_raises_the_first_error() -> None:
    said: list[str] = []

    def square(n: int, tell: Callable[[str], None]) -> int:
        tell(f"squaring {n}")  # reaches `say` in this thread, not printed by the worker
        return n * n

    squares = pack_module.in_daemon_threads(square, range(7), 3, said.append)
    assert squares == [n * n for n in range(7)]
    assert sorted(said) == [f"squaring {n}" for n in range(7)]
    assert pack_module.in_daemon_threads(square, [], 2) == []

    def fail(n: int, tell: Callable[[str], None]) -> int:
        if n == 2:
            raise BuildError("two")
        return n

    with pytest.raises(BuildError, match="two"):
        pack_module.in_daemon_threads(fail, range(5), 2)


@needs_kernel
def test_sigterm_at_any_moment_of_a_real_build(host: Path, tmp_path: Path) -> None:
    """A real `bootgen build` process, killed with SIGTERM at several moments: exit 143 and no
    temp file, or a finished build; never a partial image or an image without its manifest."""
    img, man = tmp_path / "i.img", tmp_path / "i.json"
    assert build_cli(str(host), "-o", str(img), "--manifest", str(man)).returncode == 0
    for delay in (0.3, 0.8, 1.5, 2.5):
        proc = subprocess.Popen([sys.executable, "-m", "bootgen.cli", "build", str(host), "-o",
                                 str(img), "--manifest", str(man)], stderr=subprocess.PIPE,
                                text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        # 143: stopped cleanly; -15: killed before it had set its handlers up (while Python
        # was still importing; it had written nothing yet)
        assert proc.returncode in (0, 143, -signal.SIGTERM), err
        if proc.returncode == 143:
            assert err.splitlines()[-1] == "error: interrupted by SIGTERM"
        assert "Traceback" not in err
        assert temps(tmp_path) == []
        assert json.loads(man.read_text())["image_sha256"] == sha(img)


@needs_kernel
def test_concurrent_builds_pair_each_image_with_its_manifest(tmp_path: Path) -> None:
    """Two builds of different images to the same -o and --manifest, at once, several times:
    the image left is always the one its manifest describes."""
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(HOST)
    b.write_text(HOST.replace('flavor = "scripted"', 'flavor = "scripted"\ndevice_timeout = 7'))
    img, man = tmp_path / "i.img", tmp_path / "i.json"
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "bootgen.cli", "build", str(h), "-o",
                                   str(img), "--manifest", str(man)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for h in (a, b)]
        for p in procs:
            assert p.wait(timeout=300) == 0, p.stderr.read() if p.stderr else ""
            if p.stderr:
                p.stderr.close()
        assert json.loads(man.read_text())["image_sha256"] == sha(img)
    assert temps(tmp_path) == []


@needs_kernel
def test_outputs_wait_for_the_directory_lock(host: Path, tmp_path: Path) -> None:
    """While another command holds the lock of the output directory, a build writes its temp
    files but renames nothing; it commits once the lock is free."""
    img = tmp_path / "i.img"
    img.write_bytes(b"previous image")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bootgen.cli", "build", str(host), "-o",
                                 str(img)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # the kernel lists a process waiting for a lock in /proc/locks as "-> FLOCK ... PID"
        deadline = time.monotonic() + 300
        while not any(line.split()[1] == "->" and line.split()[5] == str(proc.pid)
                      for line in Path("/proc/locks").read_text().splitlines()):
            assert proc.poll() is None, "the build finished while the lock was held"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert img.read_bytes() == b"previous image"  # it waits, renaming nothing
    finally:
        os.close(fd)  # releases the lock
    assert proc.wait(timeout=120) == 0
    assert img.read_bytes() != b"previous image" and temps(tmp_path) == []


@needs_kernel
@pytest.mark.parametrize("umask,image_mode", [(0o077, 0o600), (0o022, 0o644), (0o027, 0o640)])
def test_outputs_respect_the_umask(umask: int, image_mode: int, host: Path,
                                   tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-c", f"import os, sys; os.umask({umask}); from bootgen.cli import main;"
         " sys.argv[0] = 'bootgen'; main()", "build", str(host), "-o", str(tmp_path / "i.img"),
         "--manifest", str(tmp_path / "m.json")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE((tmp_path / "i.img").stat().st_mode) == image_mode
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == image_mode


@needs_kernel
def test_replacing_keeps_a_narrower_mode(host: Path, tmp_path: Path) -> None:
    img = tmp_path / "i.img"
    img.write_bytes(b"old")
    img.chmod(0o600)
    assert CliRunner().invoke(main, ["build", str(host), "-o", str(img)]).exit_code == 0
    assert stat.S_IMODE(img.stat().st_mode) == 0o600 and img.read_bytes() != b"old"


@needs_kernel
def test_running_kernel_initrd_needs_force_and_is_kept(host: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "BOOT_DIR", tmp_path)
    running = tmp_path / f"initrd.img-{os.uname().release}"
    running.write_bytes(b"the initrd this machine booted with")
    res = CliRunner().invoke(main, ["build", str(host), "-o", str(running)])
    assert res.exit_code == 2 and "is the initrd of the running kernel" in res.stderr
    assert running.read_bytes() == b"the initrd this machine booted with"
    res = CliRunner().invoke(main, ["build", str(host), "-o", str(running), "--force"])
    assert res.exit_code == 0, res.stderr
    backup = tmp_path / (running.name + paths.BACKUP_SUFFIX)
    assert backup.read_bytes() == b"the initrd this machine booted with"
    assert running.read_bytes() != backup.read_bytes()
    assert compress.read_image(running.read_bytes())  # a whole image
    assert temps(tmp_path) == []


def test_write_outputs_order_and_all_or_nothing(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    outs = [paths.Output("--manifest", tmp_path / "m.json", b"manifest"),
            paths.Output("-o", tmp_path / "i.img", b"image")]
    order: list[str] = []
    replace = os.replace
    monkeypatch.setattr(paths.os, "replace",
                        lambda a, b: (order.append(Path(b).name), replace(a, b))[1])
    paths.write_outputs(outs, [])
    assert order == ["m.json", "i.img"]  # the image last: never without its manifest
    assert (tmp_path / "i.img").read_bytes() == b"image"


# --- 9. ls and diff: names, escapes, exit codes ------------------------------------------------


def image_with(members: list[cpio.Member]) -> bytes:
    return compress.compress(cpio.write_newc(members), "zstd")


def raw_archive(names: list[str]) -> bytes:
    """An archive with names the writer would refuse ("../x", "/abs"): built by hand."""
    parts = []
    for name in [*names, "TRAILER!!!"]:
        data = b"" if name == "TRAILER!!!" else b"x"
        raw = name.encode("utf-8", "surrogateescape")
        mode = 0 if name == "TRAILER!!!" else stat.S_IFREG | 0o644
        header = b"070701" + b"".join(b"%08X" % v for v in (
            1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw) + 1, 0))
        entry = header + raw + b"\0"
        entry += b"\0" * (-len(entry) % 4) + data + b"\0" * (-len(data) % 4)
        parts.append(entry)
    return b"".join(parts)


def test_ls_shows_names_as_the_kernel_places_them(tmp_path: Path) -> None:
    img = tmp_path / "i.img"
    img.write_bytes(raw_archive(["./.profile", "../../etc/x", "/abs/y", "./a/./b",
                                 "evil\x1b[2J\x07name", "bad\udcffbyte"]))
    res = CliRunner().invoke(main, ["ls", str(img)])
    assert res.exit_code == 0, res.stderr
    names = [line.split(None, 2)[2] for line in res.stdout.splitlines()[1:]]
    assert names[0] == "/.profile"  # not /profile
    assert names[1].startswith("../../etc/x   (!) outside /")  # not /etc/x
    assert names[2].startswith("/abs/y   (!) outside /")
    assert names[3] == "/a/b"
    assert names[4] == "/evil\\x1b[2J\\x07name"  # no escape sequence reaches the terminal
    assert names[5] == "/bad\\xffbyte"
    assert "\x1b" not in res.output


def test_ls_of_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.img").write_bytes(b"")
    res = CliRunner().invoke(main, ["ls", str(tmp_path / "e.img")])
    assert res.exit_code == 2
    assert res.stderr == f"error: {tmp_path / 'e.img'}: empty file, not an initrd\n"


def test_diff_exit_codes(tmp_path: Path) -> None:
    a, b, bad = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "bad.img"
    a.write_bytes(image_with([cpio.Member("x", stat.S_IFREG | 0o644, b"1")]))
    b.write_bytes(image_with([cpio.Member("x", stat.S_IFREG | 0o644, b"2")]))
    bad.write_bytes(b"garbage!")
    same = CliRunner().invoke(main, ["diff", str(a), str(a)])
    assert (same.exit_code, same.stdout) == (0, "")
    differ = CliRunner().invoke(main, ["diff", str(a), str(b)])
    assert (differ.exit_code, differ.stdout) == (1, "~ /x: content (1 → 1 bytes)\n")
    for args in ([a, bad], [bad, a], [a, tmp_path / "missing.img"]):
        res = CliRunner().invoke(main, ["diff", *map(str, args)])
        assert res.exit_code == 2
        broken = args[0] if args[0] != a else args[1]
        assert res.stderr.startswith(f"error: {broken}: "), res.stderr


def test_a_fifo_does_not_hang_ls(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f")
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "bootgen.cli", "ls", str(tmp_path / "f")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "is a FIFO" in res.stderr
    assert time.monotonic() - t < 30


def test_examples_still_load() -> None:
    from bootgen.description import load

    for p in EXAMPLES.glob("*.toml"):
        load(p)


# --- 5. secrets -----------------------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("mode,warned", [(0o644, "its group and others"), (0o640, "its group"),
                                         (0o604, "others"), (0o600, ""), (0o400, "")])
def test_keys_open_to_others_are_warned_about(mode: int, warned: str, tmp_path: Path) -> None:
    key = tmp_path / "root.key"
    key.write_bytes(b"0123456789abcdef")
    key.chmod(mode)
    host = tmp_path / "h.toml"
    host.write_text(HOST.replace('device = "LABEL=root"', 'device = "/dev/mapper/root"') + f"""
[[luks]]
name = "root"
device = "PARTLABEL=cryptroot"
key_file = "{key}"
""")
    res = build_cli(str(host), "-o", str(tmp_path / "i.img"))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    if warned:
        assert warnings == [f"warning: {host}: luks[0].key_file: {key} is open to {warned} on "
                            f"this host (mode {mode:04o}); chmod 600 {key}"]
    else:
        assert warnings == []
    # the key is in the image's secrets archive, never in the reproducible part
    image = (tmp_path / "i.img").read_bytes()
    public = [m for s in compress.read_image(image)[:-1] for m in s.members]
    assert not any(m.data == b"0123456789abcdef" for m in public)
    assert compress.read_image(image)[-1].members[-1].data == b"0123456789abcdef"
