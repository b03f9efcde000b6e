"""ELF closure: checked against ldd (the real loader) on host programs and gcc-built fixtures."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bootgen.errors import BuildError
from bootgen.image import elf, sections
from bootgen.run import run

HAVE_GCC = shutil.which("gcc") is not None
needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="gcc not installed")

SYSTEMD = next(
    (p for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd") if os.path.exists(p)), ""
)
# systemd's private libraries carry its version (libsystemd-core-252.so): found, not assumed
_PRIVATE = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/systemd/libsystemd-core-*.so"))
SYSTEMD_CORE = _PRIVATE[-1] if _PRIVATE else ""
SYSTEMD_SHARED = SYSTEMD_CORE.replace("libsystemd-core-", "libsystemd-shared-")
PROGRAMS = ["/bin/sh", SYSTEMD, "/usr/sbin/cryptsetup", "/usr/bin/udevadm", "/usr/bin/kmod"]


def _loaded(output: str) -> set[str] | None:
    """Realpaths in ldd-style output (vdso ignored); None if a library is "not found"."""
    found: set[str] = set()
    for line in output.splitlines():
        if "not found" in line:
            return None
        target = line.split("=>", 1)[1] if "=>" in line else line
        target = target.split("(", 1)[0].strip()
        if target.startswith("/"):
            found.add(os.path.realpath(target))
    return found


def ldd(path: str) -> set[str] | None:
    return _loaded(run(["ldd", path], check=False).stdout.decode())


def traced(program: str) -> set[str] | None:
    """Like ldd, but by executing the program itself with LD_TRACE_LOADED_OBJECTS=1, so that
    $ORIGIN is computed as in a real exec (ldd runs "ld.so PROGRAM", which does not resolve a
    symlinked program's path)."""
    env = dict(os.environ, LD_TRACE_LOADED_OBJECTS="1")
    return _loaded(run([program], env=env, check=False).stdout.decode())


def real_deps(c: elf.Closure) -> set[str]:
    return {os.path.realpath(d.path) for d in c.deps}


@pytest.mark.parametrize("program", PROGRAMS)
def test_matches_ldd(program: str) -> None:
    if not program or not os.path.exists(program):
        pytest.skip(f"{program or 'systemd'} not installed")
    c = elf.closure([program])
    assert c.roots == (program,)
    assert real_deps(c) == ldd(program)
    paths = [d.path for d in c.deps]
    assert len(paths) == len(set(paths))
    assert c.deps[0].soname.startswith("/")  # PT_INTERP comes first
    assert c.deps[0].path == "/lib64/ld-linux-x86-64.so.2"


@pytest.mark.skipif(not SYSTEMD_CORE or not os.path.exists(SYSTEMD_SHARED),
                    reason="systemd's private libraries (libsystemd-core-*.so) absent")
def test_libsystemd_core_uses_already_loaded_soname() -> None:
    c = elf.closure([SYSTEMD])
    by_path = {d.path: d for d in c.deps}
    # systemd's RUNPATH finds both; libsystemd-core (no RUNPATH) needs shared, already loaded
    assert by_path[SYSTEMD_CORE].needed_by == SYSTEMD
    assert by_path[SYSTEMD_SHARED].needed_by == SYSTEMD
    assert by_path[SYSTEMD_SHARED].soname == os.path.basename(SYSTEMD_SHARED)
    assert elf._parse(SYSTEMD_CORE).runpath is None  # type: ignore[union-attr]
    # on its own (as ldd shows) the core library cannot find the shared one
    assert ldd(SYSTEMD_CORE) is None
    shared = re.escape(os.path.basename(SYSTEMD_SHARED))
    with pytest.raises(BuildError, match=rf"library {shared} not found"):
        elf.closure([SYSTEMD_CORE])


def test_several_programs_union_bfs() -> None:
    progs = [p for p in PROGRAMS if p and os.path.exists(p)]
    c = elf.closure(progs)
    assert c.roots == tuple(progs)
    want: set[str] = set()
    for p in progs:
        want |= ldd(p) or set()
    assert real_deps(c) == want
    assert len({d.path for d in c.deps}) == len(c.deps)
    libc = next(d for d in c.deps if d.soname == "libc.so.6")
    assert libc.needed_by == progs[0]


def test_closure_parses_each_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second closure (the next feature, the next build in one process) parses nothing
    again. (How fast the closure is: benchmarks/build.py.)"""
    progs = [p for p in (SYSTEMD, "/usr/bin/udevadm", "/usr/bin/kmod", "/usr/bin/mount",
                         "/usr/sbin/cryptsetup") if p and os.path.exists(p)]
    elf._PARSED.clear()
    parsed: list[str] = []
    real = elf._parse_uncached
    monkeypatch.setattr(elf, "_parse_uncached", lambda p: parsed.append(p) or real(p))
    first = elf.closure(progs)
    count = len(parsed)
    assert count >= len(first.paths()) - 1  # every object (the loader's link may share)
    assert elf.closure(progs) == first
    assert len(parsed) == count


def test_static_busybox_has_no_deps() -> None:
    assert elf.is_elf("/bin/busybox")
    c = elf.closure(["/bin/busybox"])
    assert c.roots == ("/bin/busybox",) and c.deps == ()


def test_script(tmp_path: Path) -> None:
    script = tmp_path / "hello"
    script.write_text("#! /bin/sh -e\necho hi\n")
    assert not elf.is_elf(str(script))
    assert elf.script_interpreter(str(script)) == "/bin/sh"
    assert elf.closure([str(script)]).deps == ()
    (tmp_path / "data").write_text("no shebang\n")
    assert elf.script_interpreter(str(tmp_path / "data")) is None
    assert elf.script_interpreter("/bin/sh") is None
    assert not elf.is_elf(str(tmp_path / "missing"))


def test_missing_program() -> None:
    with pytest.raises(BuildError, match="program /nonexistent/x not found"):
        elf.closure(["/nonexistent/x"])


def test_find_program() -> None:
    assert elf.find_program("kmod") == "/usr/bin/kmod"
    assert elf.find_program("depmod") == "/usr/sbin/depmod"
    assert elf.find_program("/bin/sh") == "/bin/sh"
    with pytest.raises(BuildError, match="no-such-prog") as e:
        elf.find_program("no-such-prog")
    assert e.value.hint
    with pytest.raises(BuildError, match="not found"):
        elf.find_program("/usr/bin/no-such-prog")
    with pytest.raises(BuildError, match="bare name"):
        elf.find_program("bin/sh")


def test_dlopen_notes_absent() -> None:
    target = SYSTEMD or "/bin/sh"
    assert sections.dlopen_notes(target) == ()
    assert sections.dlopen_notes("/bin/sh") == ()


# ---------------------------------------------------------------------------------------------
# gcc-built fixtures

Cc = Callable[..., Path]


@pytest.fixture()
def cc(tmp_path: Path) -> Cc:
    src = tmp_path / "src"
    src.mkdir()
    (src / "foo.c").write_text("int bar(void);\nint foo(void) { return 1; }\n")
    (src / "foo_bar.c").write_text("int bar(void);\nint foo(void) { return bar(); }\n")
    (src / "bar.c").write_text("int bar(void) { return 2; }\n")
    (src / "main.c").write_text("int foo(void);\nint main(void) { return foo(); }\n")

    def build(out: str, source: str, *args: str) -> Path:
        dest = tmp_path / out
        dest.parent.mkdir(parents=True, exist_ok=True)
        run(["gcc", "-o", str(dest), str(src / source), *args])
        return dest

    return build


def shared(cc: Cc, out: str, source: str = "foo.c", *args: str) -> Path:
    return cc(out, source, "-shared", "-fPIC", *args)


@needs_gcc
def test_origin_runpath(cc: Cc, tmp_path: Path) -> None:
    lib = shared(cc, "app/lib/libfoo.so")
    main = cc("app/main", "main.c", f"-L{lib.parent}", "-lfoo", "-Wl,-rpath,$ORIGIN/lib")
    assert elf._parse(str(main)).runpath == ("$ORIGIN/lib",)  # type: ignore[union-attr]
    c = elf.closure([str(main)])
    dep = next(d for d in c.deps if d.soname == "libfoo.so")
    assert dep.path == str(lib) and dep.needed_by == str(main)
    assert real_deps(c) == ldd(str(main))
    # a symlinked program: $ORIGIN is the directory of the resolved file
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere/main"
    link.symlink_to(main)
    assert real_deps(elf.closure([str(link)])) == traced(str(link))
    assert ldd(str(link)) is None  # ldd's "ld.so PROGRAM" takes $ORIGIN from the link


@needs_gcc
def test_missing_library(cc: Cc) -> None:
    lib = shared(cc, "app/lib/libfoo.so")
    main = cc("app/main", "main.c", f"-L{lib.parent}", "-lfoo", "-Wl,-rpath,$ORIGIN/lib")
    lib.unlink()
    with pytest.raises(BuildError) as e:
        elf.closure([str(main)])
    assert e.value.message == f"library libfoo.so not found (needed by {main})"
    assert f"{main.parent}/lib" in e.value.hint and "install" in e.value.hint


@needs_gcc
def test_rpath_is_inherited_runpath_is_not(cc: Cc) -> None:
    bar = shared(cc, "app/deep/libbar.so", "bar.c")
    foo = shared(cc, "app/lib/libfoo.so", "foo_bar.c", f"-L{bar.parent}", "-lbar")
    link = [f"-L{foo.parent}", "-lfoo", f"-L{bar.parent}", "-Wl,--allow-shlib-undefined"]
    rpath = "-Wl,-rpath,$ORIGIN/lib:${ORIGIN}/deep"
    old = cc("app/main_rpath", "main.c", *link, rpath, "-Wl,--disable-new-dtags")
    new = cc("app/main_runpath", "main.c", *link, rpath, "-Wl,--enable-new-dtags")
    # DT_RPATH of the program also serves libfoo's own DT_NEEDED (libbar)
    c = elf.closure([str(old)])
    assert real_deps(c) == ldd(str(old))
    bar_dep = next(d for d in c.deps if d.soname == "libbar.so")
    assert bar_dep.path == str(bar) and bar_dep.needed_by == str(foo)
    # DT_RUNPATH only serves the program's own DT_NEEDED: libbar is not found, as with ldd
    assert ldd(str(new)) is None
    with pytest.raises(BuildError, match=f"library libbar.so not found \\(needed by {foo}\\)"):
        elf.closure([str(new)])


def dl_platform() -> str:
    """What this machine's ld.so expands $PLATFORM to: x86_64, or haswell, xeon_phi... by CPU."""
    out = subprocess.run(["/lib64/ld-linux-x86-64.so.2", "--list-diagnostics"],
                         capture_output=True, text=True, check=True).stdout
    return re.search(r'^dl_platform="([^"]+)"', out, re.MULTILINE).group(1)  # type: ignore


@needs_gcc
def test_lib_and_platform_tokens(cc: Cc) -> None:
    lib = shared(cc, "app/lib/x86_64-linux-gnu/libfoo.so")
    plat = shared(cc, f"app/p/{dl_platform()}/libbar.so", "bar.c")
    main = cc(
        "app/main",
        "main.c",
        "-Wl,--no-as-needed",
        f"-L{lib.parent}",
        "-lfoo",
        f"-L{plat.parent}",
        "-lbar",
        "-Wl,-rpath,$ORIGIN/$LIB:$ORIGIN/p/$PLATFORM",
    )
    c = elf.closure([str(main)])
    assert {d.path for d in c.deps} >= {str(lib), str(plat)}
    assert real_deps(c) == ldd(str(main))


@needs_gcc
def test_wrong_class_is_skipped(cc: Cc, tmp_path: Path) -> None:
    try:
        lib32 = shared(cc, "app/l32/libfoo.so", "foo.c", "-m32", "-nostdlib")
    except BuildError:
        pytest.skip("gcc cannot build 32-bit objects")
    lib64 = shared(cc, "app/l64/libfoo.so")
    main = cc(
        "app/main", "main.c", f"-L{lib64.parent}", "-lfoo", "-Wl,-rpath,$ORIGIN/l32:$ORIGIN/l64"
    )
    c = elf.closure([str(main)])
    assert str(lib64) in {d.path for d in c.deps}
    assert str(lib32) not in {d.path for d in c.deps}
    assert real_deps(c) == ldd(str(main))


@needs_gcc
def test_preload(cc: Cc) -> None:
    lib = shared(cc, "app/lib/libfoo.so", "foo_bar.c", "-Wl,--allow-shlib-undefined")
    bar = shared(cc, "app/lib/libbar.so", "bar.c")
    # a path preload becomes a root with its own closure
    c = elf.closure(["/bin/sh"], preload=[str(bar), "libz.so.1", "libc.so.6"])
    assert c.roots[0] == "/bin/sh" and str(bar) in c.roots
    libz = next(r for r in c.roots if r.endswith("/libz.so.1"))
    assert os.path.realpath(libz) == os.path.realpath("/lib/x86_64-linux-gnu/libz.so.1")
    assert sum(1 for r in c.roots if r.endswith("libc.so.6")) == 0  # already loaded by sh
    assert not set(c.roots) & {d.path for d in c.deps}
    # preloads alone, searched in the default directories
    c2 = elf.closure([], preload=["libcrypt.so.1"])
    assert real_deps(c2) == ldd(c2.roots[0])
    with pytest.raises(BuildError, match="libnope.so.9 not found"):
        elf.closure(["/bin/sh"], preload=["libnope.so.9"])
    assert lib.exists()


@needs_gcc
def test_fake_root_ld_so_conf(cc: Cc, tmp_path: Path) -> None:
    root = tmp_path / "root"
    usrlib = root / "usr/lib/x86_64-linux-gnu"
    usrlib.mkdir(parents=True)
    (root / "usr/lib64").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    shutil.copy(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"), usrlib / "libc.so.6")
    shutil.copy(os.path.realpath("/lib64/ld-linux-x86-64.so.2"), usrlib / "ld-linux-x86-64.so.2")
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("# comment\ninclude ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/app.conf").write_text("/opt/applib/\n")
    lib = shared(cc, "root/opt/applib/libfoo.so")
    cc("root/opt/app/main", "main.c", f"-L{lib.parent}", "-lfoo")
    assert elf.ld_so_conf_dirs(str(root)) == ("/opt/applib",)
    c = elf.closure(["/opt/app/main"], root=str(root))
    assert [(d.path, d.soname) for d in c.deps] == [
        ("/lib64/ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"),
        ("/opt/applib/libfoo.so", "libfoo.so"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6"),
    ]


@needs_gcc
def test_dlopen_notes_synthetic(tmp_path: Path) -> None:
    src = tmp_path / "note.c"
    src.write_text(
        r"""
#include <stdint.h>
#define JSON "[{\"feature\":\"tpm\",\"description\":\"TPM\",\"priority\":\"suggested\"," \
             "\"soname\":[\"libtss2-esys.so.0\",\"libtss2-rc.so.0\"]}," \
             "{\"feature\":\"fido\",\"soname\":\"libfido2.so.1\"}]"
struct note { uint32_t namesz, descsz, type; char name[4]; char desc[(sizeof(JSON) + 3) & ~3]; };
__attribute__((section(".note.dlopen"), used, aligned(4)))
static const struct note other = { 4, sizeof(JSON), 1, "GNU", JSON };
__attribute__((section(".note.dlopen"), used, aligned(4)))
static const struct note n = { 4, sizeof(JSON), 0x407c0c0a, "FDO", JSON };
int f(void) { return 0; }
"""
    )
    out = tmp_path / "libnote.so"
    run(["gcc", "-shared", "-fPIC", "-nostdlib", "-o", str(out), str(src)])
    assert sections.dlopen_notes(str(out)) == ("libtss2-esys.so.0", "libtss2-rc.so.0",
                                               "libfido2.so.1")
