"""network: interfaces up in stage one (both flavours), from [network] or the ip= parameter.

systemd flavour: systemd-networkd with generated .network files (named 95-bootgen-* so that
files systemd-network-generator writes for ip= (90-*, 91-default) sort first and win),
systemd-networkd-wait-online when rd.neednet=1. Scripted flavour: busybox ip and udhcpc in a
post-udev hook, with a bounded wait. Addresses are flushed before switching to the real root
when flush_before_switch is set.
"""

from __future__ import annotations

from ..schema import Host, Interface
from ..spec import Contribution, Generated, Hook, HostFile, Module, Program, Symlink
from . import Context, Feature
from .systemd import UNIT_DIR

# NIC drivers loaded on demand (udev or mdev load the one a device asks for).
NIC_MODULES = ("virtio_net", "e1000", "e1000e")
UNITS = ("systemd-networkd.service", "systemd-networkd.socket",
         "systemd-network-generator.service", "systemd-networkd-wait-online.service",
         "network.target", "network-pre.target", "network-online.target")


def interface_view(i: int, itf: Interface) -> dict[str, object]:
    return {"index": i, "name": itf.name or "", "mac": (itf.mac or "").lower(),
            "dhcp": itf.dhcp, "address": itf.address or "", "gateway": itf.gateway or "",
            "dns": list(itf.dns), "mtu": itf.mtu}


def contribute(host: Host, ctx: Context) -> Contribution:
    net = host.network
    interfaces = [interface_view(i, itf) for i, itf in enumerate(net.interfaces)]
    modules = tuple(Module(m, load=False) for m in NIC_MODULES)
    if ctx.flavor == "scripted":
        return Contribution(
            symlinks=(Symlink("/usr/sbin/ip", "../bin/busybox"),
                      Symlink("/usr/sbin/udhcpc", "../bin/busybox")),
            generated=(Generated("/etc/bootgen/udhcpc.script", mode=0o755,
                                 template="scripts-legacy/udhcpc.sh.j2"),),
            hooks=(Hook("post-udev", "scripts-legacy/network.sh.j2", order=30,
                        view={"interfaces": interfaces, "timeout": net.timeout}),
                   Hook("cleanup", "scripts-legacy/network-flush.sh.j2", order=80,
                        view={"flush": net.flush_before_switch})),
            modules=modules,
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
    )


FEATURE = Feature(
    name="network",
    doc="network interfaces in stage one ([network], ip=, rd.neednet)",
    applies=lambda host, ctx: host.network.enable,
    contribute=contribute,
)
