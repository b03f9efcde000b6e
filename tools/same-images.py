#!/usr/bin/env python3
"""Prove that two revisions of bootgen build the same bytes.

    tools/same-images.py REV_A REV_B        # e.g. 168da3e HEAD; WORKTREE for the work tree

Checks each revision out into a temporary git worktree and builds, with that revision's code,
every examples/*.toml of REV_B in both flavours, plus a few richer descriptions written here
(LUKS with keyfile and detached header, key device, OpenSSH and dropbear, extra files and units,
vfat/ext2 needed-for-boot mounts, every compression). Inputs (keys, keyfiles) are made once
and shared by both revisions. Prints one line per image and exits 1 when any sha256 differs.
Used for refactorings that promise byte-identical images (issue 11).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLAVORS = ("systemd", "scripted")
LITERAL_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
               " literal")  # well-formed: bootgen checks that public keys are public keys


def extra_hosts(inputs: Path) -> dict[str, str]:
    key = inputs / "root.key"
    key.write_bytes(b"fixed test key material\n")
    header = inputs / "root.header"
    header.write_bytes(b"HEADER" * 100)
    for name in ("ssh_host_ed25519_key", "client"):
        if not (inputs / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "same-images",
                            "-f", inputs / name], check=True)
    extra_file = inputs / "hello.txt"
    extra_file.write_text("hello\n")
    base = """
[boot]
kernel_params = ["console=ttyS0"]
{boot}
[kernel]
modules = ["virtio_pci", "virtio_blk", "ext4"]
available_modules = ["virtio_net"]
"""
    root_luks = """
[[filesystems]]
mountpoint = "/"
device = "/dev/mapper/cryptroot"
fstype = "ext4"
options = ["rw"]
"""
    return {
        "luks-keyfile": base.format(boot="") + root_luks + f"""
[[luks]]
name = "cryptroot"
device = "UUID=0b7a3f6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
key_file = "{key}"
header = "{header}"
allow_discards = true
fallback_to_password = true
options = ["no-read-workqueue"]

[[luks]]
name = "data"
device = "PARTLABEL=data"
key_file_device = "LABEL=usb"
key_file_path = "/keys/data.key"
key_file_size = 64
fallback_to_password = true
timeout = 30

[[filesystems]]
mountpoint = "/data"
device = "/dev/mapper/data"
fstype = "ext4"
needed_for_boot = true

[rescue]
root_password_hash = "$6$salt$abcdefghijklmnopqrstuvwxyz"
""",
        "ssh-openssh": base.format(boot='compression = "xz"') + root_luks + f"""
[[luks]]
name = "cryptroot"
device = "PARTLABEL=cryptroot"

[network]
enable = true
flush_before_switch = true

[[network.interfaces]]
mac = "52:54:00:12:34:56"
dhcp = true

[[network.interfaces]]
name = "eth1"
address = "10.0.3.15/24"
gateway = "10.0.3.2"
dns = ["10.0.3.3"]
mtu = 1400

[network.ssh]
enable = true
server = "openssh"
port = 2222
authorized_keys = ["{inputs / 'client.pub'}", "{LITERAL_KEY}"]
host_keys = ["{inputs / 'ssh_host_ed25519_key'}"]
""",
        "ssh-dropbear": base.format(boot='compression = "gzip"') + root_luks + f"""
[[luks]]
name = "cryptroot"
device = "PARTLABEL=cryptroot"

[network]
enable = true
flush_before_switch = false

[[network.interfaces]]
name = "eth0"
dhcp = true

[network.ssh]
enable = true
authorized_keys = ["{inputs / 'client.pub'}"]
host_keys = ["{inputs / 'ssh_host_ed25519_key'}"]

[rescue]
allow_passwordless = true
""",
        "extras": base.format(boot='compression = "lz4"\ndevice_timeout = 7\ninit = "/bin/init"')
        + f"""
[[filesystems]]
mountpoint = "/"
device = "PARTUUID=0b7a3f6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
fstype = "ext4"
options = ["ro", "noatime"]

[[filesystems]]
mountpoint = "/boot"
device = "LABEL=boot"
fstype = "vfat"
needed_for_boot = true

[[filesystems]]
mountpoint = "/usr"
device = "PARTLABEL=usr"
fstype = "ext2"
needed_for_boot = true
fsck = false

[[filesystems]]
mountpoint = "/home"
device = "LABEL=home"
fstype = "ext4"

[systemd]
units = {{ "hello.service" = "[Service]\\nExecStart=/bin/true\\n" }}
wants = ["hello.service"]

[extra]
binaries = ["lsblk"]
libraries = ["libnss_files.so.2"]
files = [{{ source = "{extra_file}", target = "/etc/hello.txt", mode = 0o600 }}]

[rescue]
shell_on_fail = false
""",
        "plain-none": base.format(boot='compression = "none"') + """
[[filesystems]]
mountpoint = "/"
device = "/dev/vda"
fstype = "ext4"
""",
    }


def build_all(rev: str, hosts: dict[str, Path], out: Path) -> dict[str, str]:
    if rev == "WORKTREE":
        tree = REPO
        cleanup = None
    else:
        tree = out / f"tree-{rev}"
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "-q", tree, rev],
                       check=True)
        cleanup = tree
    # A private segment cache shared by both revisions: it is keyed by the raw archive bytes,
    # so a hit cannot hide a difference, and the second revision builds fast.
    env = dict(os.environ, PYTHONPATH=str(tree), SOURCE_DATE_EPOCH="1700000000",
               XDG_CACHE_HOME=str(out / "cache"))
    digests = {}
    try:
        for name, path in sorted(hosts.items()):
            for flavor in FLAVORS:
                img = out / f"{rev}-{name}-{flavor}.img"
                proc = subprocess.run(
                    [sys.executable, "-c", "from bootgen.cli import main; main()", "build",
                     str(path), "-o", str(img), "--flavor", flavor],
                    env=env, cwd=out, capture_output=True, text=True)
                if proc.returncode != 0:
                    digests[f"{name} {flavor}"] = "FAILED: " + proc.stderr.strip()[-300:]
                    continue
                digests[f"{name} {flavor}"] = hashlib.sha256(img.read_bytes()).hexdigest()
                img.unlink()
    finally:
        if cleanup is not None:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", cleanup],
                           check=False)
    return digests


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="same-images-") as tmp:
        work = Path(tmp)
        inputs = work / "inputs"
        inputs.mkdir()
        hosts = {p.stem: p for p in sorted((REPO / "examples").glob("*.toml"))}
        for name, text in extra_hosts(inputs).items():
            (inputs / f"{name}.toml").write_text(text)
            hosts[f"+{name}"] = inputs / f"{name}.toml"
        a = build_all(argv[0], hosts, work)
        b = build_all(argv[1], hosts, work)
    differ = 0
    for key in sorted(a):
        same = a[key] == b[key] and not a[key].startswith("FAILED")
        differ += not same
        print(f"{'same' if same else 'DIFF'}  {key:<28} {a[key][:16]}  {b[key][:16]}")
        if not same:
            print(f"      {argv[0]}: {a[key]}\n      {argv[1]}: {b[key]}")
    print(f"{len(a) - differ} of {len(a)} images identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
