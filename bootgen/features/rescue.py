"""rescue: accounts and the password check for the rescue/emergency shell (both flavours).

Policy, the same in both flavours: with `root_password_hash` the shell asks for that password
(util-linux sulogin); with `allow_passwordless` it opens without one; otherwise the root account
stays locked and stage one says how to enable the shell instead of dead-ending.
"""

from __future__ import annotations

from ..schema import Host
from ..spec import Contribution, Generated, Program
from . import Context, Feature

LOCKED_HINT = ("rescue shell is locked: set rescue.root_password_hash or "
               "rescue.allow_passwordless = true in the host description")


# The groups udev rules name (50-udev-default.rules), with Debian's ids.
GROUPS = (("root", 0), ("tty", 5), ("disk", 6), ("lp", 7), ("kmem", 15), ("dialout", 20),
          ("cdrom", 24), ("floppy", 25), ("tape", 26), ("audio", 29), ("video", 44),
          ("utmp", 43), ("input", 105), ("sgx", 106), ("kvm", 107), ("render", 108))


def passwd(host: Host) -> bytes:
    lines = ["root:x:0:0:root:/root:/bin/sh"]
    if host.network.enable:  # systemd-networkd runs as this user
        lines.append("systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin")
    if host.network.ssh.enable and host.network.ssh.server == "openssh":  # privilege separation
        lines.append("sshd:x:101:65534::/run/sshd:/usr/sbin/nologin")
    return "".join(line + "\n" for line in lines).encode()


def groups(host: Host) -> tuple[tuple[str, int], ...]:
    return GROUPS + ((("systemd-network", 998),) if host.network.enable else ()) + (
        (("nogroup", 65534),) if host.network.ssh.enable else ())


def shadow_field(host: Host) -> str:
    if host.rescue.root_password_hash:
        return host.rescue.root_password_hash
    return "" if host.rescue.allow_passwordless else "*"


def shell_access(host: Host) -> str:
    """'password', 'open' or 'locked'."""
    if host.rescue.root_password_hash:
        return "password"
    return "open" if host.rescue.allow_passwordless else "locked"


def contribute(host: Host, ctx: Context) -> Contribution:
    return Contribution(
        programs=(Program("/usr/sbin/sulogin"),),
        generated=(
            Generated("/etc/passwd", content=passwd(host)),
            Generated("/etc/shadow", content=f"root:{shadow_field(host)}:19000:0:99999:7:::\n"
                      .encode(), mode=0o600),
            Generated("/etc/group", content="".join(f"{g}:x:{gid}:\n" for g, gid in groups(host))
                      .encode()),
            Generated("/etc/shells", content=b"/bin/sh\n"),
        ),
    )


FEATURE = Feature(
    name="rescue",
    doc="root account and sulogin for the rescue shell, per [rescue]",
    applies=lambda host, ctx: True,
    contribute=contribute,
)
