"""The QEMU driver: exact command lines, the console driver against a fake guest, a real boot."""

from __future__ import annotations

import builtins
import glob
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

from bootgen.errors import BootError, CommandError, UsageError
from bootgen.vm import qemu
from bootgen.vm.qemu import (
    Drive,
    Machine,
    PortForward,
    QemuConfig,
    boot_append,
    default_kernel,
    kvm_check,
    qemu_argv,
    timeout_multiplier,
)

FAKE = Path(__file__).resolve().parent / "fake_guest.py"
REPO = FAKE.parent.parent
HEAD = [
    "qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot",
    "-chardev", "stdio,id=con0,mux=on,signal=off",
    "-serial", "chardev:con0", "-mon", "chardev=con0,mode=readline",
]  # fmt: skip


def small(**kw: Any) -> QemuConfig:
    return QemuConfig(kernel="/k/vmlinuz", initrd="/k/initrd", append="console=ttyS0", **kw)


def tail_after(argv: list[str], marker: str) -> list[str]:
    return argv[argv.index(marker) + 2 :]


# --- command line -------------------------------------------------------------------------


def test_argv_small_tcg() -> None:
    assert qemu_argv(small(memory_mb=512, cpus=2, accel="tcg"), kvm=False) == HEAD + [
        "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "512", "-smp", "2",
        "-kernel", "/k/vmlinuz", "-initrd", "/k/initrd", "-append", "console=ttyS0",
    ]  # fmt: skip


def test_argv_kvm_and_no_initrd() -> None:
    cfg = QemuConfig(kernel="/k/vmlinuz", initrd=None, append="quiet panic=-1")
    assert qemu_argv(cfg, kvm=True) == HEAD + [
        "-accel", "kvm", "-cpu", "host", "-m", "1024", "-smp", "1",
        "-kernel", "/k/vmlinuz", "-append", "quiet panic=-1",
    ]  # fmt: skip
    tcg = qemu_argv(cfg, kvm=False)
    assert "kvm" not in " ".join(tcg) and "-enable-kvm" not in tcg and "host" not in tcg
    # TCG's CPU has RDRAND, as real ones do: the kernel's random pool is ready at once
    assert tcg[tcg.index("-cpu") + 1] == qemu.TCG_CPU == "qemu64,+rdrand"


@pytest.mark.parametrize(
    ("drive", "expected"),
    [
        (Drive("/i/a.img"), ["-drive", "file=/i/a.img,format=raw,if=none,id=d0",
                             "-device", "virtio-blk-pci,drive=d0"]),
        (Drive("/i/a.qcow2", format="qcow2", serial="root"),
         ["-drive", "file=/i/a.qcow2,format=qcow2,if=none,id=d0",
          "-device", "virtio-blk-pci,drive=d0,serial=root"]),
        (Drive("/i/a.img", interface="ide", serial="IDE1"),
         ["-drive", "file=/i/a.img,format=raw,if=none,id=d0",
          "-device", "ide-hd,drive=d0,serial=IDE1"]),
        (Drive("/i/a.img", interface="scsi"),
         ["-drive", "file=/i/a.img,format=raw,if=none,id=d0",
          "-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,bus=scsi0.0,drive=d0"]),
        (Drive("/i/a.img", interface="nvme"),
         ["-drive", "file=/i/a.img,format=raw,if=none,id=d0",
          "-device", "nvme,drive=d0,serial=nvme0"]),
        (Drive("/i/a.img", interface="nvme", serial="SN9", readonly=True),
         ["-drive", "file=/i/a.img,format=raw,if=none,id=d0,readonly=on",
          "-device", "nvme,drive=d0,serial=SN9"]),
        (Drive("/i/a.img", snapshot=True, readonly=True),
         ["-drive", "file=/i/a.img,format=raw,if=none,id=d0,readonly=on,snapshot=on",
          "-device", "virtio-blk-pci,drive=d0"]),
        (Drive("/i/odd,name.img", serial="a,b"),
         ["-drive", "file=/i/odd,,name.img,format=raw,if=none,id=d0",
          "-device", "virtio-blk-pci,drive=d0,serial=a,,b"]),
    ],
)  # fmt: skip
def test_argv_drive(drive: Drive, expected: list[str]) -> None:
    assert tail_after(qemu_argv(small(drives=(drive,)), kvm=False), "-append") == expected


def test_argv_several_drives_share_one_scsi_controller() -> None:
    drives = (Drive("/a", interface="scsi"), Drive("/b"), Drive("/c", interface="scsi"))
    argv = qemu_argv(small(drives=drives), kvm=False)
    assert tail_after(argv, "-append") == [
        "-drive", "file=/a,format=raw,if=none,id=d0",
        "-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,bus=scsi0.0,drive=d0",
        "-drive", "file=/b,format=raw,if=none,id=d1", "-device", "virtio-blk-pci,drive=d1",
        "-drive", "file=/c,format=raw,if=none,id=d2", "-device", "scsi-hd,bus=scsi0.0,drive=d2",
    ]  # fmt: skip


def test_argv_net_forwards_bound_to_localhost() -> None:
    fwd = (PortForward(2222, 22), PortForward(8080, 80))
    argv = qemu_argv(small(net=True, forwards=fwd, mac="52:54:00:aa:bb:cc"), kvm=False)
    assert tail_after(argv, "-append") == [
        "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:cc",
    ]  # fmt: skip
    assert "restrict" not in " ".join(argv)
    # forwards imply networking; no networking at all without net or forwards
    assert qemu_argv(small(forwards=fwd), kvm=False) == argv[:-1] + [
        "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"]
    assert tail_after(qemu_argv(small(net=True), kvm=False), "-append") == [
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"]
    assert "-netdev" not in qemu_argv(small(), kvm=False)


def test_argv_instruction_clock() -> None:
    argv = qemu_argv(small(clock="instructions", accel="tcg"), kvm=False)
    assert argv[argv.index("-accel"):argv.index("-accel") + 6] == [
        "-accel", "tcg", "-cpu", qemu.TCG_CPU, "-icount", "shift=0,sleep=on"]
    assert "-icount" not in qemu_argv(small(), kvm=False)
    with pytest.raises(UsageError, match="instruction-counted clock needs TCG"):
        qemu_argv(small(clock="instructions"), kvm=True)


def test_argv_extra_comes_last() -> None:
    argv = qemu_argv(small(drives=(Drive("/a"),), net=True, extra=("-cpu", "max")), kvm=False)
    assert argv[-2:] == ["-cpu", "max"] and argv[0] == "qemu-system-x86_64"
    assert qemu_argv(small(qemu="/opt/q"), kvm=False)[0] == "/opt/q"


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"memory_mb": 0}, "must be positive"),
        ({"cpus": 0}, "must be positive"),
        ({"accel": "hvf"}, "unknown accelerator"),
        ({"clock": "wall"}, "unknown clock"),
        ({"mac": "52:54:00:12:34"}, "invalid MAC"),
        ({"drives": (Drive("/a", format="vmdk"),)}, "unknown format"),
        ({"drives": (Drive("/a", interface="sata"),)}, "unknown interface"),
        ({"drives": (Drive("/a", interface="ide", readonly=True),)}, "read-only IDE"),
        ({"drives": tuple(Drive(f"/{i}", interface="ide") for i in range(5))}, "4 IDE"),
        ({"drives": (Drive(""),)}, "empty path"),
        ({"forwards": (PortForward(0, 22),)}, "out of range"),
        ({"forwards": (PortForward(2222, 22), PortForward(2222, 23))}, "forwarded twice"),
    ],
)
def test_argv_rejects_bad_settings(kw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        qemu_argv(small(**kw), kvm=False)


def test_argv_is_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    def touched(*a: object, **k: object) -> None:
        raise AssertionError(f"qemu_argv touched the disk: {a}")

    for name in ("stat", "lstat", "access", "listdir"):
        monkeypatch.setattr(os, name, touched)
    monkeypatch.setattr(builtins, "open", touched)
    monkeypatch.setattr(qemu, "kvm_usable", touched)
    cfg = small(drives=(Drive("/nope/a.img", interface="scsi"),), forwards=(PortForward(1, 2),))
    assert qemu_argv(cfg, kvm=True)[:2] == ["qemu-system-x86_64", "-nodefaults"]


# --- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([], "console=ttyS0 panic=-1"),
        (["root=/dev/vda", "quiet"], "root=/dev/vda quiet console=ttyS0 panic=-1"),
        (["panic=5", "console=ttyS0,115200n8", "rd.x"], "panic=5 console=ttyS0,115200n8 rd.x"),
        (["console=tty0", "", "b"], "console=tty0 b console=ttyS0 panic=-1"),
        (["console=ttyS0", "panic=-1", "a"], "console=ttyS0 panic=-1 a"),
    ],
)
def test_boot_append(params: list[str], expected: str) -> None:
    assert boot_append(params) == expected


@pytest.mark.parametrize(("raw", "value"), [(None, 1.0), ("", 1.0), ("2.5", 2.5), (" 3 ", 3.0)])
def test_timeout_multiplier(monkeypatch: pytest.MonkeyPatch, raw: str | None, value: float) -> None:
    if raw is None:
        monkeypatch.delenv("BOOTGEN_TIMEOUT_MULTIPLIER", raising=False)
    else:
        monkeypatch.setenv("BOOTGEN_TIMEOUT_MULTIPLIER", raw)
    assert timeout_multiplier() == value


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf"])
def test_timeout_multiplier_invalid(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("BOOTGEN_TIMEOUT_MULTIPLIER", raw)
    with pytest.raises(UsageError, match="BOOTGEN_TIMEOUT_MULTIPLIER"):
        timeout_multiplier()


def test_default_kernel() -> None:
    with pytest.raises(UsageError) as info:
        default_kernel("0.0.0-nonexistent")
    assert "/boot/vmlinuz-0.0.0-nonexistent" in info.value.message
    assert "linux-image-amd64" in info.value.hint and "--kernel" in info.value.hint
    for path in glob.glob("/boot/vmlinuz-*"):
        assert default_kernel(path.removeprefix("/boot/vmlinuz-")) == path


def test_use_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    def usable(q: str = "") -> bool:
        calls.append(q)
        return True

    monkeypatch.setattr(qemu, "kvm_usable", usable)
    assert qemu.use_kvm(small(accel="tcg")) is False and calls == []
    assert qemu.use_kvm(small(accel="kvm")) is True and calls == []
    assert qemu.use_kvm(small(accel="auto", qemu="/q")) is True and calls == ["/q"]
    with pytest.raises(UsageError):
        qemu.use_kvm(small(accel="xen"))


# --- KVM detection --------------------------------------------------------------------------

CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse {} sse2\n\n"


def test_kvm_check_needs_flag_and_probe() -> None:
    probes: list[int] = []

    def probe(result: bool) -> Callable[[], bool]:
        def run() -> bool:
            probes.append(1)
            return result

        return run

    assert kvm_check(CPUINFO.format("hypervisor"), probe(True)) is False
    assert probes == []  # no flag: the probe is not even run
    assert kvm_check(CPUINFO.format("vmx"), probe(True)) is True
    assert kvm_check(CPUINFO.format("svm"), probe(True)) is True
    assert kvm_check(CPUINFO.format("vmx"), probe(False)) is False  # the device node lies
    assert kvm_check("flags\t: fpu\nbugs\t: vmx_thing svm\n", probe(True)) is False


@pytest.mark.parametrize(
    ("result", "usable"),
    [
        ((0, b"SeaBIOS (version 1.16)\nRunning on KVM\nNo bootable device.\n"), True),
        ((0, b"SeaBIOS (version 1.16)\nNo bootable device.\n"), False),  # fell back to TCG?
        ((134, b"Running on KVM\n"), False),  # qemu aborted (e.g. "failed to set MSR")
        (CommandError("timed out"), False),  # the guest hung
    ],
)
def test_kvm_probe_reads_the_firmware_output(
    monkeypatch: pytest.MonkeyPatch, result: tuple[int, bytes] | Exception, usable: bool
) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        seen.append(argv)
        assert kw["timeout"] <= 10 and kw["input"] == b""  # never the user's terminal
        if isinstance(result, Exception):
            raise result
        return subprocess.CompletedProcess(argv, result[0], result[1], b"")

    monkeypatch.setattr(qemu, "run", fake_run)
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    assert qemu.kvm_probe("/q") is usable
    assert seen[0][:5] == ["/q", "-accel", "kvm", "-cpu", "host"] and "-no-reboot" in seen[0]
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # no usable /dev/kvm
    assert qemu.kvm_probe("/q") is False and len(seen) == 1


def test_kvm_usable_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def judge(cpuinfo: str, exists: bool, accessible: bool, probe: object) -> tuple[bool, str]:
        calls.append(cpuinfo)
        return False, "no"

    monkeypatch.setattr(qemu, "judge_kvm", judge)
    qemu.kvm_verdict.cache_clear()
    try:
        assert qemu.kvm_usable() is False and qemu.kvm_usable() is False
        assert len(calls) == 1
    finally:
        qemu.kvm_verdict.cache_clear()


def test_kvm_verdict_says_why_in_one_line() -> None:
    vmx = "flags\t: fpu vmx sse\n"
    probed: list[int] = []

    def probe() -> bool:
        probed.append(1)
        return True

    assert qemu.judge_kvm("flags\t: fpu sse\n", True, True, probe)[1].startswith(
        "the CPU shows no VT-x/AMD-V")
    assert "does not exist" in qemu.judge_kvm(vmx, False, True, probe)[1]
    assert "add yourself to the kvm group" in qemu.judge_kvm(vmx, True, False, probe)[1]
    assert probed == []  # nothing is started when the answer is known
    assert qemu.judge_kvm(vmx, True, True, probe) == (True, "")
    assert qemu.judge_kvm(vmx, True, True, lambda: False) == (False,
                                                              "a KVM test boot did not start")
    for line in (qemu.accel_line(),):
        assert "\n" not in line and ("KVM" in line or "TCG" in line)


def test_unreadable_kernel_is_named_with_the_fix(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz-x"
    kernel.write_bytes(b"MZ")
    kernel.chmod(0o000)  # as a kernel readable by root only is to a normal user
    if os.access(kernel, os.R_OK):
        pytest.skip("root reads any file: this runs as a normal user (CI does)")
    with pytest.raises(UsageError) as e:
        qemu.readable_kernel(str(kernel))
    assert f"cannot read the kernel {kernel}" in e.value.message
    assert e.value.hint.startswith(f"sudo chmod 0644 {kernel}")


def test_kvm_not_usable_on_this_host() -> None:
    flags = " ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    if "vmx" in flags or "svm" in flags:
        pytest.skip("this CPU offers virtualization; KVM may well work")
    t0 = time.monotonic()
    assert qemu.kvm_usable() is False
    assert time.monotonic() - t0 < 8


# --- the console driver against the fake guest ----------------------------------------------


@pytest.fixture()
def fake_qemu(tmp_path: Path) -> str:
    wrapper = tmp_path / "fake-qemu"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture(autouse=True)
def _no_multiplier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOOTGEN_TIMEOUT_MULTIPLIER", raising=False)


def fake_machine(fake_qemu: str, tmp_path: Path, *opts: str) -> Machine:
    cfg = QemuConfig(kernel="/k", initrd=None, append="root=/dev/vda console=ttyS0",
                     accel="tcg", qemu=fake_qemu, extra=opts)
    return Machine(cfg, log_path=tmp_path / "logs" / "console.log", name="fake")


def test_wait_send_and_order(fake_qemu: str, tmp_path: Path) -> None:
    with fake_machine(fake_qemu, tmp_path) as m:
        m.start()
        assert m.wait_for_console_text("Linux version", 10).group() == "Linux version"
        cmdline = m.wait_for_console_text(r"Command line: (\S+) (\S+)", 10)
        assert cmdline.groups() == ("root=/dev/vda", "console=ttyS0")
        m.wait_for_console_text("login: $", 10)  # an unfinished line is matched too
        m.send_console("root\n")
        assert m.wait_for_console_text(r"got: (\w+)", 10).group(1) == "root"
        token = m.wait_for_console_text(r"TOKEN-\w+", 10).group()
        # "Linux version" came before the last match: a new wait does not see it again
        with pytest.raises(BootError):
            m.wait_for_console_text("Linux version", 0.3)
        m.send_console("second line\r")
        assert m.wait_for_console_text("got: (.*)$", 10).group(1) == "second line"
        m.send_console("poweroff\n")
        assert m.wait_for_exit(10) == 0
    assert token == "TOKEN-7f3a"
    texts = [line.text for line in m.lines]
    assert texts[0].startswith("[    0.000000] Linux version 6.1.0-fake")
    assert "login: " in texts and "got: root" in texts and texts[-1] == "reboot: Power down"
    stamps = [line.host_seconds for line in m.lines]
    assert stamps == sorted(stamps) and stamps[0] >= 0 and stamps[-1] > stamps[0] + 0.05
    assert all("\r" not in t and "\n" not in t for t in texts)
    log = m.log_path.read_bytes()
    assert log.startswith(b"[    0.000000] Linux version") and b"\r\n" in log
    assert log.endswith(b"reboot: Power down\r\n") and b"got: second line" in log


def test_ansi_and_crlf_are_stripped_from_lines_not_from_the_log(
    fake_qemu: str, tmp_path: Path
) -> None:
    with fake_machine(fake_qemu, tmp_path, "--fake-ansi", "--fake-partial") as m:
        m.start()
        m.wait_for_console_text(r"\] Reached target Basic System\.$", 10)
        m.wait_for_console_text("Password: ", 10)  # printed in two pieces, no newline
        texts = [line.text for line in m.lines]
    assert "  OK  ] Reached target Basic System." in texts
    assert not any("\x1b" in t or "\r" in t or "[0;32m" in t or "title" in t for t in texts)
    log = m.log_path.read_bytes()
    assert b"\x1b[0;32m  OK  \x1b[0m" in log and b"\x1b]0;title\x07" in log


def test_console_cleaning_does_not_depend_on_chunking(tmp_path: Path) -> None:
    stream = (b"\x1b[1;31mred\x1b[0m line\r\n\xc3\xa9t\xc3\xa9 \x1b]0;t\x1b\\done\x1b(B\r\n"
              b"\x1b[?25l\x1b7bell\x07\x1b8\r\npro\rmpt: ")
    expected = ["red line", "\u00e9t\u00e9 done", "bell", "prompt: "]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1, 3):
            m = Machine(small(), log_path=tmp_path / "unused.log")
            for piece in (stream[:i], stream[i:j], stream[j:]):
                m._feed(piece)
            assert m._pending == "\n".join(expected)  # what wait_for_console_text searches
            m._feed(b"", eof=True)
            assert [line.text for line in m.lines] == expected, (i, j)


def test_timeout_names_pattern_log_and_last_lines(fake_qemu: str, tmp_path: Path) -> None:
    with fake_machine(fake_qemu, tmp_path, "--fake-flood=60") as m:
        m.start()
        m.wait_for_console_text("login: ", 10)
        t0 = time.monotonic()
        with pytest.raises(BootError) as info:
            m.wait_for_console_text(r"never (printed)", 0.5)
        assert 0.45 < time.monotonic() - t0 < 3
    msg = info.value.message
    assert "'never (printed)'" in msg and "0.5s" in msg and str(m.log_path) in msg
    assert info.value.location == "fake" and "BOOTGEN_TIMEOUT_MULTIPLIER" in info.value.hint
    assert "flood line 59" in msg and "login: " in msg  # the unfinished last line too
    assert "flood line 21" in msg and "flood line 20" not in msg  # 40 lines, no more


def test_timeout_multiplier_scales_waits(
    fake_qemu: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_machine(fake_qemu, tmp_path) as m:
        m.start()
        monkeypatch.setenv("BOOTGEN_TIMEOUT_MULTIPLIER", "0.001")
        with pytest.raises(BootError, match="0.01s"):  # 10 s scaled down to 10 ms
            m.wait_for_console_text("login: ", 10)
        monkeypatch.setenv("BOOTGEN_TIMEOUT_MULTIPLIER", "200")
        t0 = time.monotonic()
        m.wait_for_console_text("login: ", 0.01)  # 10 ms scaled up to 2 s: enough
        assert time.monotonic() - t0 > 0.01


def test_early_exit_reports_status(fake_qemu: str, tmp_path: Path) -> None:
    with fake_machine(fake_qemu, tmp_path, "--fake-exit=3") as m:
        m.start()
        t0 = time.monotonic()
        with pytest.raises(BootError) as info:
            m.wait_for_console_text("login: ", 30)
        assert time.monotonic() - t0 < 10  # reported at exit, not at the timeout
        assert m.wait_for_exit(5) == 3 and m.exit_status == 3
    msg = info.value.message
    assert "exit status 3" in msg and "'login: '" in msg and str(m.log_path) in msg
    assert "Kernel panic - not syncing" in msg


def test_wait_for_exit_timeout(fake_qemu: str, tmp_path: Path) -> None:
    with fake_machine(fake_qemu, tmp_path, "--fake-hang") as m:
        m.start()
        m.wait_for_console_text("Run /init", 10)
        with pytest.raises(BootError, match="still running after 0.3s"):
            m.wait_for_exit(0.3)


@pytest.mark.parametrize("opts", [("--fake-hang",), ("--fake-hang", "--fake-stubborn"), ()])
def test_shutdown_kills_and_is_idempotent(
    fake_qemu: str, tmp_path: Path, opts: tuple[str, ...]
) -> None:
    m = fake_machine(fake_qemu, tmp_path, *opts)
    m.shutdown()  # not started: nothing to do
    m.start()
    m.wait_for_console_text("Run /init", 10)
    pid = m._child.pid if m._child else 0
    t0 = time.monotonic()
    m.shutdown()
    assert time.monotonic() - t0 < 10
    m.shutdown()
    with pytest.raises(OSError):
        os.kill(pid, 0)  # gone and reaped
    if opts:
        assert m.exit_status is not None and m.exit_status < 0  # killed by a signal
    else:
        assert m.exit_status == 0  # quit by Ctrl-a x
        assert m.lines[-1].text.endswith("QEMU: Terminated")
    with pytest.raises(UsageError):
        m.send_console("x")


def test_context_manager_shuts_down_on_error(fake_qemu: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), fake_machine(fake_qemu, tmp_path, "--fake-hang") as m:
        m.start()
        raise RuntimeError("test failed")
    assert m.exit_status is not None and m._child is not None and not m._child.isalive()
    assert b"Run /init" in m.log_path.read_bytes()


def test_usage_errors(fake_qemu: str, tmp_path: Path) -> None:
    cfg = QemuConfig(kernel="/k", initrd=None, append="", accel="tcg", qemu="/nonexistent/qemu")
    with pytest.raises(UsageError, match="cannot run /nonexistent/qemu"):
        Machine(cfg, log_path=tmp_path / "log").start()
    m = fake_machine(fake_qemu, tmp_path)
    with pytest.raises(UsageError, match="not running"):
        m.wait_for_console_text("x", 1)
    with m:
        m.start()
        with pytest.raises(UsageError, match="already started"):
            m.start()
        with pytest.raises(UsageError, match="invalid console pattern"):
            m.wait_for_console_text("(unclosed", 1)
        m.wait_for_console_text("login: ", 10)


def test_interact_hands_over_the_terminal(fake_qemu: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from bootgen.vm.qemu import Machine, QemuConfig
        cfg = QemuConfig(kernel="/k", initrd=None, append="", accel="tcg", qemu={fake_qemu!r})
        with Machine(cfg, log_path={str(tmp_path / "i.log")!r}) as m:
            m.start()
            m.wait_for_console_text("login: ", 10)
            print("READY", flush=True)
            m.interact()
            print("STATUS", m.wait_for_exit(5), len(m.lines))
    """)
    child = pexpect.spawn(sys.executable, ["-c", script], cwd=str(REPO), timeout=20)
    try:
        child.expect("READY")
        for _ in range(20):  # interact() drops what is typed before it set the terminal to raw
            child.send("hello\r")
            if child.expect(["got: hello", pexpect.TIMEOUT], timeout=0.5) == 0:
                break
        else:
            pytest.fail("the console never answered through interact()")
        child.send("\x01x")  # Ctrl-a x, as a user would type it
        child.expect(r"STATUS 0 (\d+)")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    log = (tmp_path / "i.log").read_bytes()
    assert b"got: hello" in log and log.endswith(b"QEMU: Terminated\r\n")


# --- real QEMU ------------------------------------------------------------------------------

KERNELS = sorted(glob.glob("/boot/vmlinuz-*"))
needs_qemu = pytest.mark.skipif(
    not KERNELS or not any(os.access(os.path.join(d, "qemu-system-x86_64"), os.X_OK)
                           for d in os.environ.get("PATH", "").split(os.pathsep)),
    reason="needs qemu-system-x86_64 and a kernel in /boot",
)


@pytest.mark.vm
@needs_qemu
def test_real_boot_panics_and_exits(tmp_path: Path) -> None:
    append = boot_append(["root=/dev/nonexistent"])
    cfg = QemuConfig(kernel=KERNELS[-1], initrd=None, append=append, memory_mb=512)
    with Machine(cfg, log_path=tmp_path / "boot.log") as m:
        m.start()
        m.wait_for_console_text(r"Linux version \S+", 60)
        m.wait_for_console_text("VFS: Unable to mount root fs", 120)
        assert m.wait_for_exit(60) == 0  # panic=-1 reboots, -no-reboot makes qemu exit
    texts = [line.text for line in m.lines]
    assert any("Kernel panic" in t for t in texts)
    assert all("\r" not in t for t in texts)
    assert b"Command line: root=/dev/nonexistent console=ttyS0 panic=-1" in m.log_path.read_bytes()


@pytest.mark.vm
@needs_qemu
def test_real_qemu_accepts_every_drive_kind_and_quits_on_ctrl_a_x(tmp_path: Path) -> None:
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("virtio", {"serial": "v1"}), ("ide", {}), ("scsi", {"readonly": True}),
        ("scsi", {}), ("nvme", {"snapshot": True}),
    ]
    drives = []
    for i, (iface, kw) in enumerate(kinds):
        img = tmp_path / f"d{i}.img"
        img.write_bytes(b"\0" * 1024 * 1024)
        drives.append(Drive(str(img), interface=iface, **kw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = QemuConfig(kernel=KERNELS[-1], initrd=None, append=boot_append(["root=/dev/nonexistent"]),
                     memory_mb=256, drives=tuple(drives), forwards=(PortForward(port, 22),),
                     accel="tcg")
    with Machine(cfg, log_path=tmp_path / "boot.log") as m:
        m.start()
        m.wait_for_console_text(r"Linux version", 60)
        listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if line.split()[3] == "0A"]  # state LISTEN
        mine = [a for a in listening if a.endswith(f":{port:04X}")]
        assert mine == [f"0100007F:{port:04X}"]  # bound on 127.0.0.1 only
        m.shutdown()
        assert m.exit_status == 0  # quit through the monitor mux, not killed
    assert "QEMU: Terminated" in m.log_path.read_text(errors="replace")
