"""Networking in both stage ones, proven by QEMU boots with user-mode networking.

The test root reports the IPv4 addresses stage one left behind (net=...), so keeping them
(flush_before_switch = false) shows what stage one configured, and the default shows the flush.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bootgen.description import loads
from bootgen.vm.verify import BootResult, boot, prepare

from .conftest import EXAMPLES, needs_kernel

pytestmark = [pytest.mark.vm, needs_kernel]
FLAVORS = ("scripted", "systemd")
NETWORK = (EXAMPLES / "network.toml").read_text()


def run(text: str, flavor: str, work: Path, append: tuple[str, ...] = ()) -> BootResult:
    h = loads(text, "net.toml")
    r = boot(h, prepare(h, flavor, work), work, append=append)
    assert r.passed, f"{r.reason}\n" + "\n".join(r.tail)
    return r


def keep(text: str) -> str:
    return text.replace("enable = true\n", "enable = true\nflush_before_switch = false\n", 1)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_dhcp_lease(flavor: str, tmp_path: Path) -> None:
    assert run(keep(NETWORK), flavor, tmp_path).result["net"] == "10.0.2.15/24"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_addresses_flushed_before_switch_root(flavor: str, tmp_path: Path) -> None:
    r = run(NETWORK, flavor, tmp_path)
    assert r.result["net"] == "none"
    # the address was there before the flush: the scripted init logs its lease, systemd
    # reports the flush unit it ran
    log = r.log.read_text(errors="replace")
    if flavor == "scripted":
        assert "has 10.0.2.15" in log
    else:
        assert "flush stage-one network addresses" in log


@pytest.mark.parametrize("flavor", FLAVORS)
def test_static_address_from_the_description(flavor: str, tmp_path: Path) -> None:
    text = keep(NETWORK).replace('dhcp = true', 'address = "10.0.2.20/24"\ngateway = "10.0.2.2"'
                                 '\ndns = ["10.0.2.3"]')
    assert run(text, flavor, tmp_path).result["net"] == "10.0.2.20/24"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_ip_parameter_overrides_the_description(flavor: str, tmp_path: Path) -> None:
    r = run(keep(NETWORK), flavor, tmp_path,
            append=("ip=10.0.2.30::10.0.2.2:255.255.255.0::eth0:none", "rd.neednet=1"))
    assert r.result["net"] == "10.0.2.30/24"
