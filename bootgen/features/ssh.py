"""ssh: an SSH server in stage one (network.ssh), to type LUKS passphrases remotely.

dropbear (default) or OpenSSH. Host keys come from the build host and go to the secrets archive
(never generated into the image); authorized keys are given as text or files. A user who logs
in gets a root shell with `cryptsetup-askpass`, which answers the pending passphrase prompts:
in the systemd flavour through systemd-tty-ask-password-agent, in the scripted flavour through
the init's prompt FIFO. The server is stopped before switching to the real root.
"""

from __future__ import annotations

import base64
import os
import re
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
    check_abs_path,
    check_port,
    setting,
)
from .common import UNIT_DIR

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss")
_KEY = re.compile(r"(?:^|\s)(" + "|".join(re.escape(t) for t in KEY_TYPES)
                  + r")\s+([A-Za-z0-9+/]+={0,2})(?:\s|$)")
KEYS_HINT = "give public keys (the .pub file or its text), e.g. 'ssh-ed25519 AAAA... me@host'"
HOST_KEY_LIMIT = 64 << 10


def public_key_problem(line: str) -> str | None:
    """What is wrong with one authorized_keys line (options allowed before the key), or None."""
    if "PRIVATE KEY" in line:
        return "holds a private key, which must never leave the machine it belongs to"
    m = _KEY.search(line)
    if m is None:
        return "is not a public key line (type, then base64)"
    try:
        blob = base64.b64decode(m.group(2), validate=True)
    except ValueError:
        return "has a key that is not valid base64"
    n = int.from_bytes(blob[:4], "big")
    if blob[4:4 + n].decode("ascii", "replace") != m.group(1):
        return f"has a key whose data is not a {m.group(1)} key"
    options = line[: m.start()].strip()  # e.g. from="10.0.0.0/8",no-pty
    if options.startswith(KEY_TYPES):
        return "is not a public key line (type, then base64)"
    return None


def check_public_keys(text: str) -> tuple[str, str] | None:
    """authorized_keys text: public keys only, one a line; '#' comments and blank lines."""
    if "PRIVATE KEY" in text:
        return ("holds a private key, which must never go into an image", KEYS_HINT)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        bad = public_key_problem(line)
        if bad is not None:
            return (f"line {n} {bad}", KEYS_HINT)
    return None


def check_key_bytes(data: bytes) -> tuple[str, str] | None:
    """An authorized_keys file named by the description: UTF-8 text of public keys."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ("is not UTF-8 text", KEYS_HINT)
    if any(ord(c) < 0x20 and c not in "\n\t\r" for c in text):
        return ("holds control characters", KEYS_HINT)
    return check_public_keys(text)


def is_key_file(value: str) -> bool:
    """An authorized_keys entry that names a file (else it is the keys' text)."""
    return value.startswith("/") and "\n" not in value


def check_authorized_key(value: str) -> tuple[str, str] | None:
    """One authorized_keys entry: an absolute path to a file of keys, or keys' text (one a
    line)."""
    if is_key_file(value):
        return check_abs_path(value)
    if "PRIVATE KEY" in value:
        return ("this is a private key, which must never go into an image", KEYS_HINT)
    if not value.strip():
        return ("an empty key", KEYS_HINT)
    bad = check_public_keys(value)
    if bad is not None and "\n" not in value.strip():
        return (f"the key text {bad[0].removeprefix('line 1 ')}",
                KEYS_HINT + "; a file is given by its absolute path")
    return bad


def check_host_key(value: str) -> tuple[str, str] | None:
    """A host key on the build host: an absolute path whose file name can be an argument."""
    bad = check_abs_path(value)
    if bad is None and not re.fullmatch(r"[A-Za-z0-9_.@+-]+", os.path.basename(value)):
        return (f"the file name of '{value}' holds characters other than A-Za-z0-9_.@+-",
                "rename the key file, e.g. ssh_host_ed25519_key")
    return bad


@dataclass(frozen=True)
class Ssh:
    """An SSH server in stage one, e.g. to type LUKS passphrases remotely."""

    enable: bool = setting("Start an SSH server in stage one.", False)
    port: int = setting("TCP port.", 22, check=check_port)
    server: str = setting("Which server to use.", "dropbear", choices=("dropbear", "openssh"))
    authorized_keys: tuple[str, ...] = setting(
        "Public keys (the keys' text, one a line, or an absolute path to a file of keys); "
        "private keys are refused.", factory=tuple, check=check_authorized_key, multiline=True)
    host_keys: tuple[str, ...] = setting(
        "Host private keys on the build host (absolute paths, OpenSSH format), packed as "
        "secrets.", factory=tuple, check=check_host_key)


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
    names: dict[str, int] = {}
    for i, key in enumerate(ssh.host_keys):
        name = os.path.basename(key)
        if name in names:
            report.add(f"network.ssh.host_keys[{i}]", f"its file name '{name}' is also "
                       f"host_keys[{names[name]}]'s", "give each host key its own file name")
        names.setdefault(name, i)

KEY_DIR = "/etc/bootgen/ssh"


def host_key_targets(host: Host) -> list[tuple[str, str]]:
    """(host path, image path) of each host key."""
    return [(k, f"{KEY_DIR}/{os.path.basename(k)}") for k in SSH.of(host).host_keys]


def contribute(host: Host, ctx: Context) -> Contribution:
    ssh = SSH.of(host)
    keys = host_key_targets(host)
    dropbear = ssh.server == "dropbear"
    secrets = tuple(HostFile(src, target=dst, mode=0o600, secret=True,
                             convert="dropbear-key" if dropbear else None,
                             setting=f"network.ssh.host_keys[{i}]", max_size=HOST_KEY_LIMIT,
                             private=True)
                    for i, (src, dst) in enumerate(keys))
    literal = "".join(k.strip() + "\n" for k in ssh.authorized_keys if not is_key_file(k))
    files = tuple(k for k in ssh.authorized_keys if is_key_file(k))
    view = {"port": ssh.port, "keys": [dst for _, dst in keys], "server": ssh.server}
    generated = [
        Generated("/root/.ssh/authorized_keys", content=literal.encode(), include=files,
                  mode=0o600, include_setting="network.ssh.authorized_keys",
                  include_check=check_key_bytes),
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
