"""luks: open LUKS devices in stage one (both flavours), keys kept out of the public image.

systemd flavour: an /etc/crypttab for systemd-cryptsetup-generator; passphrases are asked on
the console by systemd-tty-ask-password-agent; rd.luks.* keeps working. Scripted flavour: a
pre-mount hook that runs cryptsetup with a console prompt, retries and the same options, and
honours rd.luks.uuid= / rd.luks.name= / rd.luks=0. Keyfiles and detached headers from the build
host go to the separate secrets archive, never the reproducible main archive.

TPM2 (`tpm2 = true`): a key sealed in the TPM by systemd-cryptenroll unlocks the volume
without a prompt; when the TPM refuses (the bound PCRs changed) or is missing, the passphrase
is asked as usual. systemd flavour: crypttab `tpm2-device=auto`, `tpm2-pcrs=` and a bounded
`token-timeout=`; scripted flavour: `cryptsetup open --token-only` first. Both use
libcryptsetup's systemd-tpm2 token plugin and the tss2 libraries, loaded with dlopen.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .api import (
    Context,
    Contribution,
    Feature,
    Generated,
    Hook,
    Host,
    HostFile,
    Library,
    Module,
    Program,
    Report,
    Symlink,
    Tables,
    bounded,
    check_abs_path,
    check_device_word,
    matching,
    setting,
)
from .common import DM_RULES, UNIT_DIR, device_node, escape_name

# a device-mapper name that crypttab, the init script and unit names can carry
check_name = matching(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,126}", "a device-mapper name",
                      "letters, digits, '-' and '_'")
check_option = matching(r"[A-Za-z0-9_.:/=+-]+", "a crypttab option",
                        "e.g. 'no-read-workqueue' or 'cipher=...'")
# a path on the key device: crypttab writes it as PATH:DEVICE, so no ':' and no whitespace
check_key_path = matching(r"(/[A-Za-z0-9_.+@=~-]+)+", "a plain absolute path without ':'",
                          "e.g. '/keys/root.key'")
KEY_LIMIT = 8 << 20  # cryptsetup reads 8 MiB of a keyfile at most
HEADER_LIMIT = 64 << 20  # a LUKS2 header with its keyslots area (16 MiB by default)


def check_pcrs(value: int) -> tuple[str, str] | None:
    if not 0 <= value <= 23:
        return (f"PCR {value} does not exist", "TPM 2.0 PCRs are 0-23; 7 is Secure Boot state")
    return None


def check_tries(value: int) -> tuple[str, str] | None:
    if value < 1:
        return (f"{value} tries would never ask", "use 1 or more")
    if value > 100:
        return (f"{value} tries", "use 100 or fewer")
    return None


@dataclass(frozen=True)
class Luks:
    """An encrypted (LUKS) block device opened by stage one as /dev/mapper/<name>."""

    name: str = setting("Name of the opened device (/dev/mapper/<name>).", "", check=check_name)
    device: str = setting("The encrypted device.", "", check=check_device_word)
    key_file: str | None = setting(
        "Keyfile on the build host, embedded in the separate secrets archive.", None,
        check=check_abs_path)
    key_file_device: str | None = setting(
        "Device holding a keyfile read at boot (with `key_file_path`).", None,
        check=check_device_word)
    key_file_path: str | None = setting("Path of the keyfile on `key_file_device`.", None,
                                        check=check_key_path)
    key_file_size: int | None = setting("Bytes of the keyfile to use.", None,
                                        check=bounded(0, KEY_LIMIT))
    key_file_offset: int | None = setting("Offset of the key in the keyfile.", None,
                                          check=bounded(0, 1 << 40))
    header: str | None = setting("Detached LUKS header file on the build host.", None,
                                 check=check_abs_path)
    allow_discards: bool = setting("Pass discards (TRIM) through.", False)
    fallback_to_password: bool = setting("Ask for the passphrase when the keyfile fails.", False)
    try_empty_passphrase: bool = setting("Try an empty passphrase before asking.", False)
    tries: int = setting("Passphrase attempts before giving up.", 3, check=check_tries)
    timeout: int = setting("Seconds to wait for the passphrase; 0 = forever.", 0,
                           check=bounded(0, 86400, " s"))
    options: tuple[str, ...] = setting("Extra crypttab options.", factory=tuple,
                                       check=check_option)
    tpm2: bool = setting(
        "Unlock with a key sealed in the TPM 2.0 (enroll it with systemd-cryptenroll, see "
        "docs/trusted-boot.md); the passphrase is asked (console, SSH) when the TPM refuses.",
        False)
    tpm2_pcrs: tuple[int, ...] = setting(
        "PCRs the TPM key is bound to (`systemd-cryptenroll --tpm2-pcrs=`); the systemd "
        "flavour uses only a token bound to exactly these.", factory=lambda: (7,),
        check=check_pcrs, example="[7]")
    tpm2_pin: bool = setting("The TPM key also needs a PIN (`--tpm2-with-pin=yes`), asked at "
                             "the console.", False)


LUKS = Tables("luks", Luks)

KEY_DIR = "/etc/bootgen/luks"
# TPM2 through libcryptsetup: the systemd-tpm2 token plugin (dlopen'ed by libcryptsetup from its
# token directory) and the tss2 libraries libsystemd-shared dlopens; the TCTI for /dev/tpmrm0.
TOKEN_PLUGIN = "/usr/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-systemd-tpm2.so"
TSS2 = ("libtss2-esys.so.0", "libtss2-rc.so.0", "libtss2-mu.so.0", "libtss2-tcti-device.so.0")
# TPM drivers (built into Debian's kernel; modules elsewhere).
TPM_MODULES = ("tpm_tis", "tpm_crb")
TOKEN_TIMEOUT = 10  # seconds to wait for a TPM that is not there yet, then ask
# dm-crypt and the ciphers LUKS2 uses by default (aes-xts-plain64); AF_ALG for cryptsetup's
# own keyslot decryption through the kernel.
MODULES = ("dm_mod", "dm_crypt", "xts", "aes", "algif_skcipher")


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
    if lk.tpm2:
        opts += ["tpm2-device=auto", f"token-timeout={TOKEN_TIMEOUT}s"]
        if lk.tpm2_pcrs:
            opts.append("tpm2-pcrs=" + "+".join(str(p) for p in sorted(set(lk.tpm2_pcrs))))
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
        "udev_node": device_node(lk.device), "tpm2": lk.tpm2, "tpm2_pin": lk.tpm2_pin,
    }


def references(host: Host) -> Iterator[tuple[str, str]]:
    for i, lk in enumerate(LUKS.of(host)):
        yield f"luks[{i}].device", lk.device
        if lk.key_file_device:
            yield f"luks[{i}].key_file_device", lk.key_file_device


def devices(host: Host, refs: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for lk in LUKS.of(host):
        yield f"/dev/mapper/{lk.name}", f"[[luks]] '{lk.name}'"


def check(host: Host, report: Report) -> None:
    add = report.add
    volumes = LUKS.of(host)
    for i, lk in enumerate(volumes):
        for req in ("name", "device"):
            if not getattr(lk, req):
                add(f"luks[{i}].{req}", "missing", "every [[luks]] entry needs name and device")
    names: dict[str, int] = {}
    for i, lk in enumerate(volumes):
        if lk.name in names:
            add(f"luks[{i}].name", f"'{lk.name}' is also luks[{names[lk.name]}]")
        names.setdefault(lk.name, i)
        if (lk.key_file_device is None) != (lk.key_file_path is None):
            add(f"luks[{i}].key_file_device", "key_file_device and key_file_path go together",
                "set both, or neither")
        if lk.key_file and lk.key_file_device:
            add(f"luks[{i}].key_file", "key_file and key_file_device exclude each other",
                "embed a keyfile or read it from a device, not both")
        if lk.fallback_to_password and not (lk.key_file or lk.key_file_device):
            add(f"luks[{i}].fallback_to_password", "there is no keyfile to fall back from",
                "set key_file or key_file_device")
        if lk.tpm2 and (lk.key_file or lk.key_file_device):
            add(f"luks[{i}].tpm2", "tpm2 and a keyfile exclude each other",
                "unlock with the TPM (the passphrase as fallback) or with a keyfile")
        if not lk.tpm2 and (lk.tpm2_pin or lk.tpm2_pcrs != (7,)):
            add(f"luks[{i}].{'tpm2_pin' if lk.tpm2_pin else 'tpm2_pcrs'}",
                "has no effect without tpm2 = true", "set tpm2 = true or drop it")
    # a device on /dev/mapper/X names a [[luks]] entry, unless another feature makes X
    # (not when a name is missing or bad: that problem is reported already)
    for key, ref in report.references if all(lk.name for lk in volumes) else ():
        if volumes and ref.startswith("/dev/mapper/") and ref not in report.provided:
            mapped = ref.removeprefix("/dev/mapper/")
            close = difflib.get_close_matches(mapped, names, n=1)
            add(key, f"no [[luks]] entry is named '{mapped}'",
                f"did you mean '/dev/mapper/{close[0]}'?" if close else
                "add a [[luks]] entry with that name")


def ask_once(volumes: tuple[Luks, ...]) -> tuple[Generated, ...]:
    """Drop-ins that start each further passphrase volume after the first one is open.

    systemd-cryptsetup tries the passphrase the first volume got (kept in the kernel keyring)
    before asking, but only if it asks after that volume is open: volumes that appear together
    would all prompt at once. Ordering them makes "one passphrase, asked once" hold every time.
    """
    asked = [lk for lk in volumes if not (lk.key_file or lk.key_file_device)]
    if len(asked) < 2:
        return ()
    first = f"systemd-cryptsetup@{escape_name(asked[0].name)}.service"
    return tuple(
        Generated(f"{UNIT_DIR}/systemd-cryptsetup@{escape_name(lk.name)}.service.d/"
                  "bootgen-ask-once.conf",
                  content=f"# bootgen: ask once: try {asked[0].name}'s passphrase first\n"
                          f"[Unit]\nAfter={first}\n".encode())
        for lk in asked[1:])


def contribute(host: Host, ctx: Context) -> Contribution:
    secrets: list[HostFile] = []
    for i, lk in enumerate(LUKS.of(host)):
        if lk.key_file:
            secrets.append(HostFile(lk.key_file, target=key_path(lk), mode=0o400, secret=True,
                                    setting=f"luks[{i}].key_file", max_size=KEY_LIMIT,
                                    private=True))
        if lk.header:
            secrets.append(HostFile(lk.header, target=header_path(lk), mode=0o400, secret=True,
                                    setting=f"luks[{i}].header", max_size=HEADER_LIMIT))
    modules = tuple(Module(m) for m in MODULES)
    tpm = any(lk.tpm2 for lk in LUKS.of(host))
    if tpm:
        modules += tuple(Module(m, reason="luks.tpm2") for m in TPM_MODULES)
    libraries = tuple(Library(lib, reason="luks.tpm2") for lib in (TOKEN_PLUGIN, *TSS2)
                      ) if tpm else ()
    if ctx.flavor == "systemd":
        crypttab = "".join(crypttab_line(lk) + "\n" for lk in LUKS.of(host))
        return Contribution(
            programs=(Program("/usr/lib/systemd/systemd-cryptsetup"),
                      Program("/usr/lib/systemd/system-generators/systemd-cryptsetup-generator"),
                      Program("/usr/sbin/dmsetup")),
            files=tuple(secrets) + tuple(HostFile(f"/usr/lib/udev/rules.d/{r}") for r in DM_RULES),
            generated=(Generated("/etc/crypttab",
                                 content=("# bootgen: from [[luks]] in the host description\n"
                                          + crypttab).encode()),
                       *ask_once(LUKS.of(host))),
            # every volume opens, also those only LVM or RAID on top of them need (nothing
            # requires their /dev/mapper device): systemd installs this link too
            symlinks=(Symlink(f"{UNIT_DIR}/sysinit.target.wants/cryptsetup.target",
                              "../cryptsetup.target"),),
            modules=modules,
            libraries=libraries,
        )
    return Contribution(
        programs=(Program("/usr/sbin/cryptsetup"),),
        libraries=libraries,
        files=tuple(secrets),
        hooks=(Hook("pre-mount", "scripts-legacy/luks.sh.j2",
                    view={"devices": [luks_view(lk) for lk in LUKS.of(host)], "tpm2": tpm,
                          "token_timeout": TOKEN_TIMEOUT,
                          "all_consoles": "console" in ctx.features},
                    after=ctx.after([lk.device for lk in LUKS.of(host)], "luks")),),
        modules=modules,
    )


FEATURE = Feature(
    name="luks",
    doc="LUKS devices opened in stage one ([[luks]]), keys in the secrets archive",
    applies=lambda host, ctx: bool(LUKS.of(host)),
    contribute=contribute,
    sections=(LUKS,),
    check=check,
    devices=devices,
    references=references,
)
