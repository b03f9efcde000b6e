"""ssh: an SSH server in stage one (network.ssh), to type LUKS passphrases remotely.

dropbear (default) or OpenSSH. Host keys come from the build host and go to the secrets archive
(never generated into the image); authorized keys are given as text or files. A user who logs
in gets a root shell with `cryptsetup-askpass`, which answers the pending passphrase prompts:
in the systemd flavour through systemd-tty-ask-password-agent, in the scripted flavour through
the init's prompt FIFO. The server is stopped before switching to the real root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .api import (
    Context,
    Contribution,
    Dir,
    Feature,
    Generated,
    Group,
    Hook,
    Host,
    HostFile,
    Program,
    Report,
    Symlink,
    Table,
    User,
    check_port,
    setting,
)
from .common import UNIT_DIR


@dataclass(frozen=True)
class Ssh:
    """An SSH server in stage one, e.g. to type LUKS passphrases remotely."""

    enable: bool = setting("Start an SSH server in stage one.", False)
    port: int = setting("TCP port.", 22, check=check_port)
    server: str = setting("Which server to use.", "dropbear", choices=("dropbear", "openssh"))
    authorized_keys: tuple[str, ...] = setting(
        "Public keys (the key text, or an absolute path to a file of keys).", factory=tuple)
    host_keys: tuple[str, ...] = setting(
        "Host private keys on the build host (OpenSSH format), packed as secrets.",
        factory=tuple)


SSH = Table("network.ssh", Ssh)


def check(host: Host, report: Report) -> None:
    ssh = SSH.of(host)
    if not ssh.enable:
        return
    if not host.network.enable:
        report.add("network.ssh.enable", "SSH needs the network", "set network.enable = true")
    if not ssh.authorized_keys:
        report.add("network.ssh.authorized_keys", "nobody could log in", "add a public key")
    if not ssh.host_keys:
        report.add("network.ssh.host_keys", "no host key given",
                   "generate one: ssh-keygen -t ed25519 -N '' "
                   "-f /etc/bootgen/ssh_host_ed25519_key")

KEY_DIR = "/etc/bootgen/ssh"


def host_key_targets(host: Host) -> list[tuple[str, str]]:
    """(host path, image path) of each host key."""
    return [(k, f"{KEY_DIR}/{os.path.basename(k)}") for k in SSH.of(host).host_keys]


def contribute(host: Host, ctx: Context) -> Contribution:
    ssh = SSH.of(host)
    keys = host_key_targets(host)
    dropbear = ssh.server == "dropbear"
    secrets = tuple(HostFile(src, target=dst, mode=0o600, secret=True,
                             convert="dropbear-key" if dropbear else None) for src, dst in keys)
    literal = "".join(k.strip() + "\n" for k in ssh.authorized_keys if not k.startswith("/"))
    files = tuple(k for k in ssh.authorized_keys if k.startswith("/"))
    view = {"port": ssh.port, "keys": [dst for _, dst in keys], "server": ssh.server}
    generated = [
        Generated("/root/.ssh/authorized_keys", content=literal.encode(), include=files,
                  mode=0o600),
        Generated("/usr/bin/cryptsetup-askpass", template=f"units/askpass-{ctx.flavor}.sh.j2"
                  if ctx.flavor == "systemd" else "scripts-legacy/askpass.sh.j2", mode=0o755),
    ]
    programs = [Program("/usr/sbin/dropbear" if dropbear else "/usr/sbin/sshd")]
    # OpenSSH's privilege separation runs as sshd; both servers' users map to nogroup
    accounts = Contribution(
        users=() if dropbear else (User("sshd", 101, 65534, home="/run/sshd"),),
        groups=(Group("nogroup", 65534),))
    dirs = [Dir("/root/.ssh", 0o700), Dir("/root", 0o700)]
    if not dropbear:
        generated.append(Generated("/etc/ssh/sshd_config", template="units/sshd_config.j2",
                                   view=view))
    if ctx.flavor == "systemd":
        generated.append(Generated(f"{UNIT_DIR}/bootgen-sshd.service",
                                   template="units/bootgen-sshd.service.j2", view=view))
        links = (Symlink(f"{UNIT_DIR}/sysinit.target.wants/bootgen-sshd.service",
                         "../bootgen-sshd.service"),)
        return Contribution(programs=tuple(programs), files=secrets, generated=tuple(generated),
                            symlinks=links, dirs=tuple(dirs), users=accounts.users,
                            groups=accounts.groups)
    return Contribution(
        programs=tuple(programs), files=secrets, generated=tuple(generated), dirs=tuple(dirs),
        hooks=(Hook("post-udev", "scripts-legacy/sshd.sh.j2", view=view, after=("network",)),
               Hook("cleanup", "scripts-legacy/sshd-stop.sh.j2", view=view)),
        users=accounts.users, groups=accounts.groups,
    )


FEATURE = Feature(
    name="ssh",
    doc="SSH server in stage one for remote unlock ([network.ssh])",
    applies=lambda host, ctx: host.network.enable and SSH.of(host).enable,
    contribute=contribute,
    sections=(SSH,),
    check=check,
)
