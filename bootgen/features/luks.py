"""luks: open LUKS devices in stage one (both flavours), keys kept out of the public image.

systemd flavour: an /etc/crypttab for systemd-cryptsetup-generator; passphrases are asked on
the console by systemd-tty-ask-password-agent; rd.luks.* keeps working. Scripted flavour: a
pre-mount hook that runs cryptsetup with a console prompt, retries and the same options, and
honours rd.luks.uuid= / rd.luks.name= / rd.luks=0. Keyfiles and detached headers from the build
host go to the separate secrets archive, never the reproducible main archive.
"""

from __future__ import annotations

from ..schema import Host, Luks
from ..spec import Contribution, Generated, Hook, HostFile, Module, Program
from . import Context, Feature
from .systemd import device_node

KEY_DIR = "/etc/bootgen/luks"
# dm-crypt and the ciphers LUKS2 uses by default (aes-xts-plain64); AF_ALG for cryptsetup's
# own keyslot decryption through the kernel.
MODULES = ("dm_mod", "dm_crypt", "xts", "aes", "algif_skcipher")
DM_RULES = ("55-dm.rules", "60-persistent-storage-dm.rules", "95-dm-notify.rules")


def key_path(lk: Luks) -> str | None:
    return f"{KEY_DIR}/{lk.name}.key" if lk.key_file else None


def header_path(lk: Luks) -> str | None:
    return f"{KEY_DIR}/{lk.name}.header" if lk.header else None


def crypttab_line(lk: Luks) -> str:
    key = "none"
    if lk.key_file:
        key = key_path(lk) or "none"
    elif lk.key_file_device and lk.key_file_path:
        key = f"{lk.key_file_path}:{lk.key_file_device}"
    opts = ["luks", f"tries={lk.tries}"]
    if lk.timeout:
        opts.append(f"timeout={lk.timeout}s")
    if lk.allow_discards:
        opts.append("discard")
    if lk.header:
        opts.append(f"header={header_path(lk)}")
    if lk.key_file_size is not None:
        opts.append(f"keyfile-size={lk.key_file_size}")
    if lk.key_file_offset is not None:
        opts.append(f"keyfile-offset={lk.key_file_offset}")
    if lk.key_file_device and lk.fallback_to_password:
        opts.append("keyfile-timeout=10s")  # then ask for the passphrase
    if (lk.key_file or lk.key_file_device) and not lk.fallback_to_password:
        opts.append("headless=yes")  # a keyfile that fails must not turn into a prompt
    if lk.try_empty_passphrase:
        opts.append("try-empty-password=yes")
    opts += list(lk.options)
    return f"{lk.name} {lk.device} {key} {','.join(opts)}"


def luks_view(lk: Luks) -> dict[str, object]:
    return {
        "name": lk.name, "device": lk.device, "key": key_path(lk) or "",
        "header": header_path(lk) or "", "key_device": lk.key_file_device or "",
        "key_device_path": lk.key_file_path or "", "key_size": lk.key_file_size,
        "key_offset": lk.key_file_offset, "discards": lk.allow_discards,
        "fallback": lk.fallback_to_password, "try_empty": lk.try_empty_passphrase,
        "tries": lk.tries, "timeout": lk.timeout, "options": list(lk.options),
        "udev_node": device_node(lk.device),
    }


def contribute(host: Host, ctx: Context) -> Contribution:
    secrets: list[HostFile] = []
    for lk in host.luks:
        if lk.key_file:
            secrets.append(HostFile(lk.key_file, target=key_path(lk), mode=0o400, secret=True))
        if lk.header:
            secrets.append(HostFile(lk.header, target=header_path(lk), mode=0o400, secret=True))
    modules = tuple(Module(m) for m in MODULES)
    if ctx.flavor == "systemd":
        crypttab = "".join(crypttab_line(lk) + "\n" for lk in host.luks)
        return Contribution(
            programs=(Program("/usr/lib/systemd/systemd-cryptsetup"),
                      Program("/usr/lib/systemd/system-generators/systemd-cryptsetup-generator"),
                      Program("/usr/sbin/dmsetup")),
            files=tuple(secrets) + tuple(HostFile(f"/usr/lib/udev/rules.d/{r}") for r in DM_RULES),
            generated=(Generated("/etc/crypttab",
                                 content=("# bootgen: from [[luks]] in the host description\n"
                                          + crypttab).encode()),),
            modules=modules,
        )
    return Contribution(
        programs=(Program("/usr/sbin/cryptsetup"),),
        files=tuple(secrets),
        hooks=(Hook("pre-mount", "scripts-legacy/luks.sh.j2", order=20,
                    view={"devices": [luks_view(lk) for lk in host.luks]}),),
        modules=modules,
    )


FEATURE = Feature(
    name="luks",
    doc="LUKS devices opened in stage one ([[luks]]), keys in the secrets archive",
    applies=lambda host, ctx: bool(host.luks),
    contribute=contribute,
)
