"""Stage one unit by unit: spans from the guest's console, the picture, the slowest table, and
`bootgen verify --timeline` on a real boot."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from bootgen.cli import main
from bootgen.report import steps
from bootgen.vm.qemu import ConsoleLine
from bootgen.vm.timeline import Span, spans

from .conftest import EXAMPLES, needs_kernel

# ruff: noqa: E501 (console lines as they come)

SYSTEMD_LOG = """\
[    2.500000] Run /init as init process
[    3.000000] systemd[1]: Expecting device dev-disk-by\\x2dlabel-root.device - /dev/disk/by-label/root...
[    3.100000] systemd[1]: Listening on systemd-udevd-kernel.socket - udev Kernel Socket.
[    3.200000] systemd[1]: Starting systemd-journald.service - Journal Service...
[    3.300000] systemd[1]: Starting systemd-udev-trigger.service - Coldplug All udev Devices...
[  OK  ] Started systemd-journald.service - Journal Service.
[    3.900000] systemd[1]: Started systemd-journald.service - Journal Service.
[    4.600000] systemd[1]: Found device dev-disk-by\\x2dlabel-root.device - /dev/disk/by-label/root.
[    4.700000] systemd[1]: Finished systemd-udev-trigger.service - Coldplug All udev Devices.
[    4.800000] systemd[1]: Starting systemd-fsck@dev-disk-by\\x2dlabel-root.service - File System Check...
[    5.400000] systemd[1]: Failed to start systemd-fsck@dev-disk-by\\x2dlabel-root.service - File System Check.
[    5.500000] systemd[1]: Reached target initrd-root-fs.target - Initrd Root File System.
[    5.600000] systemd[1]: Mounting sysroot.mount - /sysroot...
[    6.000000] systemd[1]: Starting initrd-switch-root.service - Switch Root...
"""

SCRIPTED_LOG = """\
[    2.100000] bootgen: stage one started (scripted, kernel 6.1.0-test-amd64)
[    2.150000] bootgen: loading modules: virtio_pci virtio_blk ext4
[    2.500000] bootgen: modules loaded
[    2.600000] bootgen: hotplug started (mdev), devices probed
[    2.900000] bootgen: root device LABEL=root is /dev/vda
[    3.100000] bootgen: root mounted on /sysroot (rw)
[    3.200000] bootgen: switching to the root filesystem, exec /sbin/init
"""


def lines(text: str) -> list[ConsoleLine]:
    return [ConsoleLine(i * 0.05, t) for i, t in enumerate(text.splitlines())]


def test_systemd_units() -> None:
    found = {s.name: s for s in spans(lines(SYSTEMD_LOG))}
    assert found["systemd-journald.service"] == Span("systemd-journald.service", 3.2, 3.9)
    assert found["systemd-udev-trigger.service"].seconds == 1.4
    assert found["dev-disk-by\\x2dlabel-root.device"] == Span(
        "dev-disk-by\\x2dlabel-root.device", 3.0, 4.6)
    fsck = found["systemd-fsck@dev-disk-by\\x2dlabel-root.service"]
    assert (fsck.result, fsck.seconds) == ("failed", 0.6)
    assert found["initrd-root-fs.target"].seconds == 0  # an event
    # still running when the log ends: up to the last timestamp
    assert found["sysroot.mount"] == Span("sysroot.mount", 5.6, 6.0, "unfinished")
    assert found["initrd-switch-root.service"].result == "unfinished"
    table = steps.table(list(found.values()), 3)
    assert table[0].split()[:3] == ["1.60", "s", "dev-disk-by\\x2dlabel-root.device"]
    assert len(table) == 3 and "(failed)" not in table[0]


def test_scripted_steps() -> None:
    found = spans(lines(SCRIPTED_LOG))
    assert [s.name for s in found][:3] == [
        "stage one started (scripted, kernel 6.1.0-test-amd64)",
        "loading modules: virtio_pci virtio_blk ext4", "modules loaded"]
    loading = found[1]
    assert (loading.start, loading.end) == (2.15, 2.5)
    assert found[-1].seconds == 0  # the last step ends where the log does


def test_picture_is_well_formed_and_deterministic() -> None:
    found = spans(lines(SYSTEMD_LOG))
    doc = steps.picture("t", "s", found)
    assert doc == steps.picture("t", "s", found)
    root = ET.fromstring(doc)
    groups = root.findall("{http://www.w3.org/2000/svg}g[@class='span']")
    assert len(groups) == len(found)
    assert [g.get("data-result") for g in groups].count("failed") == 1


def test_output_paths() -> None:
    assert steps.output_path(Path("t.svg"), "systemd", False) == Path("t.svg")
    assert steps.output_path(Path("d/t.svg"), "scripted", True) == Path("d/t-scripted.svg")


@pytest.mark.vm
@needs_kernel
def test_verify_timeline_both_flavours(tmp_path: Path) -> None:
    out = tmp_path / "tl.svg"
    # the instruction clock: the timeline users get to compare runs on a busy machine
    res = CliRunner().invoke(main, ["verify", str(EXAMPLES / "minimal.toml"), "--flavor", "both",
                                    "--workdir", str(tmp_path / "w"), "--timeline", str(out),
                                    "--clock", "instructions"])
    assert res.exit_code == 0, res.output
    for flavor in ("systemd", "scripted"):
        picture = (tmp_path / f"tl-{flavor}.svg").read_text()
        count = picture.count('class="span"')
        assert count >= (10 if flavor == "systemd" else 5), flavor
        assert f"{flavor}: timeline of {count} " in res.output
    assert "systemd-udev-trigger.service" in (tmp_path / "tl-systemd.svg").read_text()
    assert "root mounted on /sysroot" in (tmp_path / "tl-scripted.svg").read_text()


def test_verify_passes_the_clock_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bootgen.vm import verify as v

    seen: dict[str, object] = {}

    def fake(host: object, flavors: object, **kw: object) -> list[object]:
        seen.update(kw)
        return []

    monkeypatch.setattr(v, "verify", fake)
    res = CliRunner().invoke(main, ["verify", str(EXAMPLES / "minimal.toml"), "--workdir",
                                    str(tmp_path), "--clock", "instructions"])
    assert res.exit_code == 0, res.output
    assert seen["clock"] == "instructions"
    res = CliRunner().invoke(main, ["verify", str(EXAMPLES / "minimal.toml"), "--disk",
                                    str(tmp_path / "d.img"), "--clock", "instructions"])
    assert res.exit_code != 0 and "--clock instructions is for test disks" in res.output
