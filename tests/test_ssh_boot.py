"""Remote unlock: a LUKS root unlocked over SSH in stage one, both flavours.

The host logs in with a test key through a QEMU port forward bound to 127.0.0.1, runs
cryptsetup-askpass and types the passphrase; the test root's token then proves the boot went on.
No traffic leaves the machine (QEMU user networking, forward on loopback only).
"""

from __future__ import annotations

import secrets
import socket
import subprocess
from pathlib import Path

import pexpect
import pytest

from bootgen.description import loads
from bootgen.vm import qemu
from bootgen.vm.luksdisk import TEST_PASSPHRASE
from bootgen.vm.verify import kernel_params, prepare, qemu_config

from .conftest import EXAMPLES, needs_kernel, needs_tool

pytestmark = [pytest.mark.vm, needs_kernel, needs_tool("ssh"), needs_tool("ssh-keygen"),
              needs_tool("dropbearconvert")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_text(keys: Path, server: str) -> str:
    return (EXAMPLES / "luks.toml").read_text() + f"""
[network]
enable = true

[[network.interfaces]]
mac = "52:54:00:12:34:56"
dhcp = true

[network.ssh]
enable = true
server = "{server}"
authorized_keys = ["{keys / 'client.pub'}"]
host_keys = ["{keys / 'ssh_host_ed25519_key'}"]
"""


@pytest.mark.parametrize("flavor,server", [("scripted", "dropbear"), ("systemd", "dropbear"),
                                           ("scripted", "openssh"), ("systemd", "openssh")])
def test_unlock_over_ssh(flavor: str, server: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("ssh_host_ed25519_key", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bootgen-test",
                        "-f", keys / name], check=True)
    h = loads(host_text(keys, server), "ssh.toml")
    prep = prepare(h, flavor, tmp_path)
    port = free_port()
    token = secrets.token_hex(6)
    cfg = qemu_config(h, prep, kernel_params(h, token, ()),
                      forwards=(qemu.PortForward(port, 22),))
    with qemu.Machine(cfg, log_path=tmp_path / "console.log") as m:
        m.start()
        m.wait_for_console_text(r"enter the passphrase for \S+|Please enter passphrase", 180)
        known = tmp_path / "known_hosts"
        host_pub = (keys / "ssh_host_ed25519_key.pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        ssh = pexpect.spawn("ssh", ["-tt", "-p", str(port), "-i", str(keys / "client"),
                                    "-o", f"UserKnownHostsFile={known}",
                                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                                    "-o", "ConnectTimeout=20", "root@127.0.0.1",
                                    "cryptsetup-askpass"], timeout=120, encoding="utf-8")
        try:
            ssh.expect(r"(?i)passphrase")
            ssh.sendline(TEST_PASSPHRASE)
            ssh.expect(pexpect.EOF, timeout=120)
        finally:
            ssh.close()
        m.wait_for_console_text(rf"BOOTGEN-RESULT token={token} .* verdict=PASS", 180)
