"""network: interfaces up in stage one (both flavours), from [network] or the ip= parameter.

systemd flavour: systemd-networkd with generated .network files (named 95-bootgen-* so that
files systemd-network-generator writes for ip= (90-*, 91-default) sort first and win),
systemd-networkd-wait-online when rd.neednet=1. Scripted flavour: busybox ip and udhcpc in a
post-udev hook, with a bounded wait. Addresses are flushed before switching to the real root
when flush_before_switch is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from .api import (
    Context,
    Contribution,
    Feature,
    Generated,
    Group,
    Hook,
    Host,
    HostFile,
    Module,
    Program,
    Report,
    Symlink,
    Table,
    User,
    bounded,
    check_cidr,
    check_ipv4,
    check_mac,
    matching,
    setting,
)
from .common import UNIT_DIR

# a kernel interface name: 1-15 bytes, no '/', ':', whitespace or quotes
check_ifname = matching(r"[A-Za-z0-9_.-]{1,15}", "an interface name", "e.g. 'eth0' or 'enp1s0'")


@dataclass(frozen=True)
class Interface:
    """A network interface configured in stage one."""

    name: str | None = setting("Interface name, e.g. eth0.", None, check=check_ifname)
    mac: str | None = setting("Match by MAC address instead of name.", None, check=check_mac)
    dhcp: bool = setting("Get an IPv4 address by DHCP.", False)
    address: str | None = setting("Static IPv4 address with prefix.", None, check=check_cidr,
                                  example='"10.0.2.15/24"')
    gateway: str | None = setting("Default gateway.", None, check=check_ipv4)
    dns: tuple[str, ...] = setting("DNS servers.", factory=tuple, check=check_ipv4)
    mtu: int | None = setting("MTU in bytes.", None, check=bounded(68, 65535))


@dataclass(frozen=True)
class Network:
    """Networking in stage one."""

    enable: bool = setting("Bring the network up in stage one.", False)
    flush_before_switch: bool = setting("Remove addresses before switching to the real root.",
                                        True)
    timeout: int = setting("Seconds to wait for the network when it is needed.", 30,
                           check=bounded(0, 86400, " s"))
    interfaces: tuple[Interface, ...] = setting("Interfaces to configure.", factory=tuple)


NETWORK = Table("network", Network)

# NIC drivers loaded on demand (udev or mdev load the one a device asks for).
NIC_MODULES = ("virtio_net", "e1000", "e1000e")
UNITS = ("systemd-networkd.service", "systemd-networkd.socket",
         "systemd-network-generator.service", "systemd-networkd-wait-online.service",
         "network.target", "network-pre.target", "network-online.target")


def interface_view(i: int, itf: Interface) -> dict[str, object]:
    return {"index": i, "name": itf.name or "", "mac": (itf.mac or "").lower(),
            "dhcp": itf.dhcp, "address": itf.address or "", "gateway": itf.gateway or "",
            "dns": list(itf.dns), "mtu": itf.mtu}


def check(host: Host, report: Report) -> None:
    add = report.add
    net = NETWORK.of(host)
    for i, itf in enumerate(net.interfaces):
        if (itf.name is None) == (itf.mac is None):
            add(f"network.interfaces[{i}]", "give exactly one of name and mac")
        if itf.dhcp and itf.address:
            add(f"network.interfaces[{i}].address", "dhcp and a static address exclude each other",
                "drop one")
        if not itf.dhcp and not itf.address:
            add(f"network.interfaces[{i}]", "neither dhcp nor address is set",
                "set dhcp = true or address = \"a.b.c.d/nn\"")
    if net.interfaces and not net.enable:
        add("network.enable", "interfaces are described but the network is disabled",
            "set enable = true")


# systemd-networkd runs as this user (both flavours carry it, as they always have)
ACCOUNTS = Contribution(
    users=(User("systemd-network", 998, 998, "systemd Network Management"),),
    groups=(Group("systemd-network", 998),))


def contribute(host: Host, ctx: Context) -> Contribution:
    net = NETWORK.of(host)
    interfaces = [interface_view(i, itf) for i, itf in enumerate(net.interfaces)]
    modules = tuple(Module(m, load=False) for m in NIC_MODULES)
    if ctx.flavor == "scripted":
        return Contribution(
            symlinks=(Symlink("/usr/sbin/ip", "../bin/busybox"),
                      Symlink("/usr/sbin/udhcpc", "../bin/busybox")),
            generated=(Generated("/etc/bootgen/udhcpc.script", mode=0o755,
                                 template="scripts-legacy/udhcpc.sh.j2"),),
            hooks=(Hook("post-udev", "scripts-legacy/network.sh.j2",
                        view={"interfaces": interfaces, "timeout": net.timeout}),
                   # addresses go last, after the servers that use them have stopped
                   Hook("cleanup", "scripts-legacy/network-flush.sh.j2", after=("ssh",),
                        view={"flush": net.flush_before_switch})),
            modules=modules,
            users=ACCOUNTS.users,
            groups=ACCOUNTS.groups,
        )
    generated = [
        Generated(f"/etc/systemd/network/95-bootgen-{i['index']}.network",
                  template="units/network.j2", view={"i": i}) for i in interfaces]
    generated.append(Generated(f"{UNIT_DIR}/systemd-networkd-wait-online.service.d/bootgen.conf",
                               template="units/wait-online.conf.j2",
                               view={"timeout": net.timeout}))
    links = [Symlink(f"{UNIT_DIR}/initrd.target.wants/systemd-networkd.service",
                     "../systemd-networkd.service"),
             Symlink(f"{UNIT_DIR}/sockets.target.wants/systemd-networkd.socket",
                     "../systemd-networkd.socket"),
             Symlink(f"{UNIT_DIR}/sysinit.target.wants/systemd-network-generator.service",
                     "../systemd-network-generator.service")]
    if net.flush_before_switch:
        generated.append(Generated(f"{UNIT_DIR}/bootgen-network-flush.service",
                                   template="units/bootgen-network-flush.service.j2"))
        links.append(Symlink(f"{UNIT_DIR}/initrd-switch-root.target.wants/"
                             "bootgen-network-flush.service", "../bootgen-network-flush.service"))
    return Contribution(
        programs=(Program("/usr/lib/systemd/systemd-networkd"),
                  Program("/usr/lib/systemd/systemd-network-generator"),
                  Program("/usr/lib/systemd/systemd-networkd-wait-online"),
                  Program("/usr/bin/networkctl")),
        files=tuple(HostFile(f"{UNIT_DIR}/{u}") for u in UNITS),
        generated=tuple(generated),
        symlinks=tuple(links) + (Symlink("/usr/sbin/ip", "../bin/busybox", weak=True),),
        modules=modules,
        users=ACCOUNTS.users,
        groups=ACCOUNTS.groups,
    )


FEATURE = Feature(
    name="network",
    doc="network interfaces in stage one ([network], ip=, rd.neednet)",
    applies=lambda host, ctx: NETWORK.of(host).enable,
    contribute=contribute,
    sections=(NETWORK,),
    check=check,
)
