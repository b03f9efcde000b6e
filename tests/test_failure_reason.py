"""Why a boot failed, read from its console: whole lines, and the systemd flavour's list of
failed units read to its end, however the output arrived (no QEMU: the console is fed here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootgen.vm import verify
from bootgen.vm.qemu import Machine, QemuConfig


class Console(Machine):
    """A machine whose console output is fed by the test, then ends (as QEMU's would)."""

    def _running(self):  # type: ignore[no-untyped-def]
        return None

    def _dead(self, timeout: float) -> bool:
        return True


SYSTEMD = (b"[    8.8] systemd[1]: Timed out waiting for device "
           b"dev-disk-by\\x2dlabel-nowhere.device - /dev/disk/by-label/nowhere.\r\n"
           b"[    8.9] systemd[1]: Dependency failed for sysroot.mount - /sysroot.\r\n"
           b"\r\nbootgen: stage one failed; failed units:\r\n"
           b"bootgen:   systemd-cryptsetup@cryptroot.service loaded failed failed Cryptography\r\n"
           b"bootgen: see journalctl -xb in the shell\r\n")


def failure(stream: bytes, cut: int, tmp_path: Path) -> str:
    """Feed the console up to `cut`, stop the wait where the test harness would, feed the
    rest, and say why stage one failed."""
    cfg = QemuConfig(kernel="/k", initrd="/i", append="console=ttyS0")
    m = Console(cfg, log_path=tmp_path / "c.log")
    m._feed(stream[:cut])
    pattern = "|".join([verify.RESULT.pattern, *verify.FAILED])
    first = m.wait_for_console_text(pattern, 1)
    m._feed(stream[cut:])
    m._feed(b"", eof=True)
    return verify._failure(m, verify._whole_line(m, first.group(0)))


FIRST_MATCH = SYSTEMD.index(b"bootgen: stage") + len("bootgen: stage one failed")


@pytest.mark.parametrize("cut", range(FIRST_MATCH, len(SYSTEMD) + 1, 7))
def test_systemd_failure_names_timed_out_jobs_and_failed_units(cut: int, tmp_path: Path) -> None:
    assert failure(SYSTEMD, cut, tmp_path) == (
        "stage one failed: Timed out waiting for device dev-disk-by\\x2dlabel-nowhere.device - "
        "/dev/disk/by-label/nowhere; failed units: systemd-cryptsetup@cryptroot.service")


def test_systemd_failure_without_failed_units_says_none(tmp_path: Path) -> None:
    stream = (b"bootgen: stage one failed; failed units:\nbootgen: see journalctl -xb in the "
              b"shell\n")
    assert failure(stream, 30, tmp_path) == "stage one failed: failed units: none"


def test_scripted_failure_is_its_whole_line(tmp_path: Path) -> None:
    stream = b"bootgen: stage one failed: root device LABEL=x did not appear within 5 s\n"
    for cut in (len("bootgen: stage one failed"), 40, len(stream)):
        assert failure(stream, cut, tmp_path) == (
            "stage one failed: bootgen: stage one failed: root device LABEL=x did not appear "
            "within 5 s")
