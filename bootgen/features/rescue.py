"""rescue: sulogin for the rescue/emergency shell (both flavours), per [rescue].

Policy, the same in both flavours: with `root_password_hash` the shell asks for that password
(util-linux sulogin); with `allow_passwordless` it opens without one; otherwise the root account
stays locked and stage one says how to enable the shell instead of dead-ending. The root
account itself is the base feature's; the [rescue] section is core (both flavours read it).
"""

from __future__ import annotations

from .api import Context, Contribution, Feature, Generated, Host, Program


def contribute(host: Host, ctx: Context) -> Contribution:
    return Contribution(
        programs=(Program("/usr/sbin/sulogin"),),
        generated=(Generated("/etc/shells", content=b"/bin/sh\n"),),
    )


FEATURE = Feature(
    name="rescue",
    doc="sulogin for the rescue shell, per [rescue]",
    applies=lambda host, ctx: True,
    contribute=contribute,
)
