"""Kernel module closure: checked against modprobe on the host kernel and on synthetic trees."""

from __future__ import annotations

import glob
import io
import lzma
import os
import shutil
import time
from pathlib import Path

import pytest
import zstandard
from elftools.elf.elffile import ELFFile

from bootgen.errors import BuildError
from bootgen.image import kmod, sections
from bootgen.run import run, which

from .conftest import KVER, alias_providers, needs_kernel  # noqa: E402

MODPROBE = which("modprobe")


def modprobe_deps(name: str, *, base: str | None = None) -> list[str]:
    """Module names `modprobe --show-depends` would insmod, in its order."""
    assert KVER is not None and MODPROBE is not None
    argv = [MODPROBE, "-S", KVER, "--show-depends", name]
    if base:
        argv[1:1] = ["-d", base]
    out = run(argv).stdout.decode()
    return [kmod.modname(line.split()[1]) for line in out.splitlines() if line.startswith("insmod")]


def names(c: kmod.ModuleClosure) -> set[str]:
    return {m.name for m in c.modules}


# ---------------------------------------------------------------------------------------------
# Host kernel


@needs_kernel
def test_virtio_ext4_closure() -> None:
    assert KVER is not None
    c = kmod.resolve(["virtio_pci", "virtio-blk", "ext4"], KVER)
    assert c.kver == KVER
    want = {
        "virtio_pci", "virtio_blk", "ext4", "virtio", "virtio_ring", "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev", "jbd2", "mbcache", "crc16",
    }  # fmt: skip
    crc32c = alias_providers("crypto-crc32c")  # which ones depends on the kernel's build
    assert want | crc32c <= names(c)
    assert [m.name for m in c.modules] == sorted(m.name for m in c.modules)
    by = {m.name: m for m in c.modules}
    assert by["virtio_blk"].reason == "requested"
    assert by["virtio_blk"].relpath == "kernel/drivers/block/virtio_blk.ko"
    assert by["jbd2"].reason == "dependency of ext4"
    for name in crc32c:
        assert by[name].reason == "alias crypto-crc32c ← softdep of ext4"
    assert c.builtin == ()


@needs_kernel
@pytest.mark.skipif(MODPROBE is None, reason="modprobe not installed")
@pytest.mark.parametrize("name", ["ext4", "virtio_blk", "dm_crypt", "virtio_pci", "xfs"])
def test_matches_modprobe(name: str) -> None:
    assert KVER is not None
    try:
        expected = set(modprobe_deps(name))
    except BuildError:
        pytest.skip(f"{name} not available")
    assert names(kmod.resolve([name], KVER)) == expected


@needs_kernel
def test_alias_takes_every_match() -> None:
    assert KVER is not None
    providers = alias_providers("crc32c")
    if len(providers) < 2:
        pytest.skip(f"this kernel has {len(providers)} module(s) for crc32c, not several")
    c = kmod.resolve(["crc32c"], KVER)
    assert providers <= names(c)
    assert all(m.reason == "alias crc32c ← requested" for m in c.modules if "crc32c" in m.name)


@needs_kernel
def test_unknown_module_did_you_mean() -> None:
    assert KVER is not None
    with pytest.raises(BuildError) as e:
        kmod.resolve(["virtio_bkl"], KVER)
    assert e.value.message == f"unknown kernel module 'virtio_bkl' for {KVER}"
    assert e.value.hint == "did you mean 'virtio_blk'?"


@needs_kernel
def test_builtin() -> None:
    assert KVER is not None
    builtin = (Path(kmod.MODULES_DIR) / KVER / "modules.builtin").read_text().split()
    if "kernel/net/unix/unix.ko" not in builtin:
        pytest.skip("unix is not built in on this kernel")
    c = kmod.resolve(["unix", "ext4"], KVER)
    assert c.builtin == ("unix",)
    assert "unix" not in names(c) and "ext4" in names(c)


@needs_kernel
def test_missing_firmware_declared_by_nic_driver() -> None:
    assert KVER is not None
    try:
        c = kmod.resolve(["r8169"], KVER)
    except BuildError:
        pytest.skip("r8169 not available")
    declared = set(c.firmware) | set(c.missing_firmware)
    assert any(f.startswith("rtl_nic/") for f in declared)
    for fw in c.missing_firmware:
        assert not os.path.exists(f"/lib/firmware/{fw}")


@needs_kernel
@pytest.mark.skipif(MODPROBE is None, reason="modprobe not installed")
def test_index_files_staged_tree_answers_modprobe(tmp_path: Path) -> None:
    assert KVER is not None
    wanted = ["virtio_pci", "virtio_blk", "ext4", "dm_crypt", "virtio_net", "vfat", "unix"]
    c = kmod.resolve(wanted, KVER)
    t = time.perf_counter()
    files = kmod.index_files(c)
    elapsed = time.perf_counter() - t
    assert elapsed < 0.5, elapsed
    assert kmod.index_files(c) == files  # deterministic
    assert {"modules.dep", "modules.dep.bin", "modules.alias.bin", "modules.softdep"} <= set(files)
    assert {"modules.builtin.bin", "modules.symbols.bin"} <= set(files)
    dep_lines = files["modules.dep"].decode().splitlines()
    assert sorted(line.split(":")[0] for line in dep_lines) == sorted(m.relpath for m in c.modules)

    mdir = tmp_path / "lib/modules" / KVER
    for m in c.modules:
        dst = mdir / m.relpath
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(kmod.MODULES_DIR) / KVER / m.relpath, dst)
    for name, data in files.items():
        (mdir / name).write_bytes(data)
    deps = {
        kmod.modname(rel): {kmod.modname(d) for d in rest.split()}
        for rel, _, rest in (line.partition(":") for line in dep_lines)
    }
    for name in ("ext4", "virtio_blk", "dm_crypt", "virtio_pci"):
        staged = modprobe_deps(name, base=str(tmp_path))
        # same modules; the order may differ from the host's (depmod topologically sorts the
        # subset, not the whole tree) but must still load every dependency first
        assert set(staged) == set(modprobe_deps(name))
        for i, mod in enumerate(staged):
            assert deps[mod] <= set(staged[:i]), (mod, staged)


# ---------------------------------------------------------------------------------------------
# Synthetic trees


def test_newest_kernel_version_sort(tmp_path: Path) -> None:
    for v in ("5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-100-cloud"):
        (tmp_path / "lib/modules" / v).mkdir(parents=True)
        (tmp_path / "lib/modules" / v / "modules.dep").write_text("")
    (tmp_path / "lib/modules/6.5.0-1-amd64").mkdir()  # leftover without modules.dep
    assert kmod.newest_kernel(str(tmp_path)) == "6.1.0-100-cloud"
    shutil.rmtree(tmp_path / "lib/modules/6.1.0-100-cloud")
    assert kmod.newest_kernel(str(tmp_path)) == "6.1.0-56-amd64"


def test_newest_kernel_none(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as e:
        kmod.newest_kernel(str(tmp_path))
    assert "install linux-image-amd64" in e.value.hint


SYN = "9.9.9-test"


def _module(tmp_path: Path, name: str, modinfo: list[str]) -> bytes:
    """A relocatable object with a .modinfo section, as a .ko is."""
    body = "".join(entry.replace('"', '\\"') + "\\0" for entry in modinfo)
    src = tmp_path / f"{name}.c"
    src.write_text(f'const char modinfo[] __attribute__((section(".modinfo"), used)) = "{body}";\n')
    obj = tmp_path / f"{name}.o"
    run(["gcc", "-c", "-o", str(obj), str(src)])
    return obj.read_bytes()


@pytest.fixture()
def syn_root(tmp_path: Path) -> Path:
    if which("gcc") is None:
        pytest.skip("gcc not installed")
    root = tmp_path / "root"
    mdir = root / "usr/lib/modules" / SYN
    (mdir / "kernel/drivers").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    build = tmp_path / "build"
    build.mkdir()
    main_info = [
        "name=acme",
        "firmware=acme/fw.bin",
        "firmware=acme/absent.bin",
        "firmware=acme/packed.bin",
        "softdep=pre: acme-helper nosuchthing post: crypto-foo",
        "depends=acme_core",
    ]
    (mdir / "kernel/drivers/acme.ko.xz").write_bytes(lzma.compress(_module(build, "a", main_info)))
    core = zstandard.ZstdCompressor().compress(_module(build, "c", ["name=acme_core"]))
    (mdir / "kernel/drivers/acme-core.ko.zst").write_bytes(core)
    (mdir / "kernel/drivers/acme_helper.ko").write_bytes(_module(build, "h", ["name=acme_helper"]))
    (mdir / "kernel/drivers/foo_generic.ko").write_bytes(_module(build, "f", ["name=foo"]))
    (mdir / "kernel/drivers/foo_fast.ko").write_bytes(_module(build, "g", ["name=foo_fast"]))
    (mdir / "modules.dep").write_text(
        "kernel/drivers/acme.ko.xz: kernel/drivers/acme-core.ko.zst\n"
        "kernel/drivers/acme-core.ko.zst:\n"
        "kernel/drivers/acme_helper.ko:\n"
        "kernel/drivers/foo_generic.ko:\n"
        "kernel/drivers/foo_fast.ko:\n"
        "kernel/drivers/broken.ko: kernel/drivers/gone.ko\n"
    )
    (mdir / "modules.alias").write_text(
        "# Aliases\n"
        "alias crypto-foo foo_generic\n"
        "alias crypto-foo foo_fast\n"
        "alias pci:v00001234d*sv*sd*bc*sc*i* acme\n"
    )
    (mdir / "modules.softdep").write_text("# Soft\nsoftdep acme post: crypto-foo\n")
    (mdir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    (mdir / "modules.builtin.modinfo").write_bytes(b"ext4.alias=fs-ext4\0ext4.license=GPL\0")
    fw = root / "usr/lib/firmware"
    (fw / "acme").mkdir(parents=True)
    (fw / "acme/fw.bin").write_bytes(b"fw")
    (fw / "acme/packed.bin.zst").write_bytes(b"fw")
    return root


def test_synthetic_closure(syn_root: Path) -> None:
    c = kmod.resolve(["acme", "fs-ext4"], SYN, root=str(syn_root))
    assert [(m.name, m.relpath, m.reason) for m in c.modules] == [
        ("acme", "kernel/drivers/acme.ko.xz", "requested"),
        ("acme_core", "kernel/drivers/acme-core.ko.zst", "dependency of acme"),
        ("acme_helper", "kernel/drivers/acme_helper.ko", "softdep of acme"),
        ("foo_fast", "kernel/drivers/foo_fast.ko", "alias crypto-foo ← softdep of acme"),
        ("foo_generic", "kernel/drivers/foo_generic.ko", "alias crypto-foo ← softdep of acme"),
    ]
    assert c.builtin == ("fs-ext4",)
    assert c.firmware == ("acme/fw.bin", "acme/packed.bin.zst")
    assert c.missing_firmware == ("acme/absent.bin",)


def test_synthetic_glob_alias_and_modinfo(syn_root: Path) -> None:
    c = kmod.resolve(["pci:v00001234d00005678sv0sd0bc01sc00i00"], SYN, root=str(syn_root))
    assert "acme" in names(c)
    relpath = syn_root / "usr/lib/modules" / SYN / "kernel/drivers/acme.ko.xz"
    info = kmod.read_modinfo(str(relpath))
    assert ("firmware", "acme/fw.bin") in info and ("name", "acme") in info


def test_synthetic_missing_hard_dependency(syn_root: Path) -> None:
    mdir = syn_root / "usr/lib/modules" / SYN
    with pytest.raises(BuildError, match="broken"):
        kmod.resolve(["broken"], SYN, root=str(syn_root))
    (mdir / "kernel/drivers/acme-core.ko.zst").unlink()
    with pytest.raises(BuildError, match=r"acme-core\.ko\.zst is missing \(dependency of acme\)"):
        kmod.resolve(["acme"], SYN, root=str(syn_root))


def test_synthetic_unknown(syn_root: Path) -> None:
    with pytest.raises(BuildError) as e:
        kmod.resolve(["acme_helpr"], SYN, root=str(syn_root))
    assert e.value.hint == "did you mean 'acme_helper'?"


def test_modinfo_section_matches_pyelftools_on_host_modules() -> None:
    """The section-header reader finds what pyelftools finds, on the host kernel's modules."""
    found = sorted(glob.glob("/lib/modules/*/kernel/fs/**/*.ko*", recursive=True))[:40]
    if not found:
        pytest.skip("no kernel modules on this host")
    for path in found:
        data = Path(path).read_bytes()
        data = lzma.decompress(data) if path.endswith(".xz") else data
        if path.endswith((".zst", ".gz")):
            continue
        sec = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
        assert sections.section(data, b".modinfo") == (sec.data() if sec else b""), path


def test_modinfo_of_a_damaged_module_is_one_clear_error(tmp_path: Path) -> None:
    if which("gcc") is None:
        pytest.skip("gcc not installed")
    good = _module(tmp_path, "good", ["name=good"])
    assert sections.section(good, b".modinfo") == b"name=good\0\0"  # the C literal's own NUL
    assert sections.section(good, b".absent") == b""
    for name, data in {"cut.ko": good[:100], "empty.ko": b"", "text.ko": b"hello" * 20,
                       "headers-past-end.ko": good[:0x28] + b"\xff" * 8 + good[0x30:]}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BuildError, match=f"cannot read module .*{name}"):
            kmod.read_modinfo(str(tmp_path / name))
