#!/usr/bin/env python3
"""Capture the detect fixtures (tests/fixtures/detect/<layout>.json) from real layouts.

For each layout: the test disks `bootgen verify` builds for its description, attached to a
guest whose root is this machine's own root shared read-only (bootgen.vm.hostroot). In the
guest, the host's udevd, cryptsetup, mdadm and lvm bring the system up and mount it under
/mnt as an installer would (with the /etc/fstab and /etc/crypttab an installer writes), then
tools/capture-host.sh --mounted /mnt copies what `bootgen detect` reads. The capture is stored
as one JSON file: {"files": {path: text}, "links": {path: target}}.

    .venv/bin/python tools/capture-fixtures.py [LAYOUT...]     # default: all of them

Takes a few minutes per layout under TCG (helper VM for stacked disks, then the guest).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bootgen.description import loads  # noqa: E402
from bootgen.image import kmod  # noqa: E402
from bootgen.vm import hostroot, qemu  # noqa: E402
from bootgen.vm.diskbuild import build_disks  # noqa: E402
from bootgen.vm.luksdisk import TEST_PASSPHRASE  # noqa: E402
from bootgen.vm.stack import needs_helper  # noqa: E402
from bootgen.vm.stackbuild import build_stack  # noqa: E402

EXAMPLES = REPO / "examples"
OUT = REPO / "tests" / "fixtures" / "detect"
LAYOUTS = {
    "plain": (EXAMPLES / "minimal.toml", "root=LABEL=root rw console=ttyS0,115200n8 quiet"),
    "luks": (EXAMPLES / "luks.toml", "root=/dev/mapper/cryptroot console=ttyS0 rw"),
    "lvm": (EXAMPLES / "lvm.toml", "root=/dev/mapper/vg0-root ro console=tty0 console=ttyS0"),
    "raid": (EXAMPLES / "raid.toml", "root=/dev/md/root ro console=ttyS0"),
    "btrfs": (EXAMPLES / "btrfs.toml", "root=LABEL=pool rootflags=subvol=@root ro console=ttyS0"),
    "network": (EXAMPLES / "network.toml", "root=LABEL=root ro console=ttyS0 ip=dhcp"),
}
CAPTURE = f"""
sh {REPO}/tools/capture-host.sh --mounted /mnt /run/capture
tar -C /run/capture -cf "$OUT_DISK" .
"""
NETWORK = """
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
ip link set "$nic" up
ip addr add 10.0.2.15/24 dev "$nic"
ip route add default via 10.0.2.2
printf 'auto %s\\niface %s inet static\\n    address 10.0.2.15/24\\n    gateway 10.0.2.2\\n' \\
    "$nic" "$nic" > /run/interfaces
"""
NETWORK_ETC = """
mkdir -p /mnt/etc/network && cp /run/interfaces /mnt/etc/network/interfaces
"""


def capture(name: str, work: Path) -> dict[str, dict[str, str]]:
    path, params = LAYOUTS[name]
    host = loads(path.read_text(), str(path))
    kver = kmod.newest_kernel()
    kernel = qemu.default_kernel(kver)
    if needs_helper(host):
        built, _ = build_stack(host, work, kver=kver, kernel=kernel)
    else:
        built, _ = build_disks(host, work)
    drives = [qemu.Drive(str(d.path), serial=d.spec.serial, snapshot=True) for d in built]
    script = hostroot.system_script(host, TEST_PASSPHRASE) + CAPTURE
    extra: tuple[str, ...] = ()
    if name == "network":
        script = hostroot.system_script(host, TEST_PASSPHRASE) + NETWORK + NETWORK_ETC + CAPTURE
        extra = ("-netdev", "user,id=n0", "-device",
                 "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56")
    r = hostroot.run_job(script, work, kver=kver, kernel=kernel, drives=drives,
                         append=params, extra=extra, name=f"capture {name}")
    files = {k.removeprefix("./"): v.decode("utf-8", errors="replace")
             for k, v in sorted(r.files.items())}
    links = {k.removeprefix("./"): v for k, v in sorted(r.links.items())}
    return {"files": files, "links": links}


def main(names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names or list(LAYOUTS):
        keep = os.environ.get("CAPTURE_WORK")  # keep the work folder (console logs) there
        if keep:
            data = capture(name, Path(keep) / name)
        else:
            with tempfile.TemporaryDirectory(prefix=f"capture-{name}-") as tmp:
                data = capture(name, Path(tmp))
        target = OUT / f"{name}.json"
        target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"{target}: {len(data['files'])} files, {len(data['links'])} links")


if __name__ == "__main__":
    main(sys.argv[1:])
