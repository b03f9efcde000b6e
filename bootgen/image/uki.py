"""Unified kernel images: a PE/COFF writer and reader for systemd-stub, without objcopy.

A UKI is the EFI stub (systemd-boot-efi's linuxx64.efi.stub) with sections appended: `.osrel`,
`.cmdline`, `.uname`, `.initrd`, `.linux`. systemd-stub finds them by name (prefix match on the
8-byte name), uses VirtualSize bytes at VirtualAddress, measures every section it knows into
PCR 11 (name with its NUL, then the data, in a fixed order) and boots `.linux` with `.initrd`.

`build` is pure: stub bytes + sections → image bytes. It truncates the stub after its last
section (dropping the COFF symbol table, so nothing unauthenticated sits inside a signed file),
puts each section at the next FileAlignment boundary in the file and the next page in memory,
and rewrites NumberOfSections, SizeOfInitializedData, SizeOfImage, TimeDateStamp (0, or
SOURCE_DATE_EPOCH) and the PE checksum. Building twice gives the same bytes, unlike objcopy,
which stamps the current time. `read` takes any PE (signed or not) apart again; `pcr11`
predicts the PCR 11 value systemd-stub 252 extends from the sections.
"""

from __future__ import annotations

import array
import hashlib
import os
import struct
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Host
from ..errors import BuildError
from ..features.uki import UKI, key_path
from ..run import run

SCN_INIT_DATA_READ = 0x40000040  # IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
PAGE = 4096
# The order of the sections in the file: small ones first, the kernel last.
FILE_ORDER = (".osrel", ".cmdline", ".uname", ".splash", ".dtb", ".initrd", ".linux")
# What systemd-stub 252 measures into PCR 11, in this order (.pcrsig is never measured).
MEASURED = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
_SECURITY_DIR = 4  # index of the certificate table in the data directories


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass(frozen=True)
class Section:
    name: str
    virtual_size: int  # the payload's length (what systemd-stub uses)
    virtual_address: int
    raw_size: int  # padded to FileAlignment
    raw_pointer: int
    characteristics: int


@dataclass(frozen=True)
class PeFile:
    """The headers of a PE32+ image, as far as a UKI needs them."""

    coff: int  # offset of the COFF header (after "PE\\0\\0")
    optional: int  # offset of the optional header
    section_table: int
    section_alignment: int
    file_alignment: int
    size_of_headers: int
    checksum: int
    security: tuple[int, int]  # certificate table (offset, size); (0, 0): unsigned
    sections: tuple[Section, ...]

    @property
    def signed(self) -> bool:
        return self.security != (0, 0)

    @property
    def checksum_offset(self) -> int:
        return self.optional + 64


def parse(data: bytes, what: str = "the file") -> PeFile:
    """Read the headers of a PE32+ image; BuildError if `data` is not one."""
    def bad(why: str) -> BuildError:
        return BuildError(f"{what} is not a PE32+ EFI image: {why}")

    if data[:2] != b"MZ":
        raise bad("no MZ header")
    try:
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        if data[pe:pe + 4] != b"PE\0\0":
            raise bad("no PE signature")
        coff = pe + 4
        _machine, count, _stamp, _symbols, _nsym, opt_size, _chars = struct.unpack_from(
            "<HHIIIHH", data, coff)
        opt = coff + 20
        if struct.unpack_from("<H", data, opt)[0] != 0x20B:
            raise bad("not PE32+ (64-bit)")
        section_alignment, file_alignment = struct.unpack_from("<II", data, opt + 32)
        size_of_headers, checksum = struct.unpack_from("<II", data, opt + 60)
        ndirs = struct.unpack_from("<I", data, opt + 108)[0]
        security = (struct.unpack_from("<II", data, opt + 112 + 8 * _SECURITY_DIR)
                    if ndirs > _SECURITY_DIR else (0, 0))
        table = opt + opt_size
        sections = []
        for i in range(count):
            raw_name, vsize, va, rawsize, rawptr = struct.unpack_from("<8sIIII", data,
                                                                       table + 40 * i)
            chars = struct.unpack_from("<I", data, table + 40 * i + 36)[0]
            sections.append(Section(raw_name.rstrip(b"\0").decode("ascii", "replace"), vsize,
                                    va, rawsize, rawptr, chars))
    except struct.error:
        raise bad("truncated headers") from None
    return PeFile(coff, opt, table, section_alignment, file_alignment, size_of_headers,
                  checksum, (security[0], security[1]), tuple(sections))


def pe_checksum(data: bytes | bytearray, checksum_offset: int) -> int:
    """The PE image checksum (CheckSumMappedFile): the ones'-complement sum of the 16-bit
    words, with the checksum field counted as 0, folded to 16 bits, plus the file length."""
    buf = bytearray(data[:checksum_offset]) + b"\0\0\0\0" + data[checksum_offset + 4:]
    if len(buf) % 2:
        buf += b"\0"
    words = array.array("H")
    words.frombytes(bytes(buf))
    if sys.byteorder != "little":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF


def timestamp() -> int:
    """TimeDateStamp of the images built: SOURCE_DATE_EPOCH, or 0."""
    try:
        return max(0, min(int(os.environ.get("SOURCE_DATE_EPOCH", "0")), 0xFFFFFFFF))
    except ValueError:
        return 0


def build(stub: bytes, sections: Sequence[tuple[str, bytes]], *, stamp: int = 0) -> bytes:
    """The stub with `sections` appended, in the order given. Pure and reproducible."""
    pe = parse(stub, "the EFI stub")
    if pe.signed:
        raise BuildError("the EFI stub is signed already",
                         hint="use the unsigned linuxx64.efi.stub; sign the UKI afterwards")
    if not pe.sections:
        raise BuildError("the EFI stub has no sections")
    taken = {s.name for s in pe.sections}
    room = (pe.size_of_headers - (pe.section_table + 40 * len(pe.sections))) // 40
    if len(sections) > room:
        raise BuildError(f"the EFI stub has room for {room} more section headers, "
                         f"not {len(sections)}", hint="leave out optional sections")
    raw_end = max(s.raw_pointer + s.raw_size for s in pe.sections)
    virt_end = max(s.virtual_address + _align(s.virtual_size, pe.section_alignment)
                   for s in pe.sections)
    out = bytearray(stub[:raw_end])  # without the COFF symbol table after the sections
    va = _align(virt_end, max(PAGE, pe.section_alignment))
    added = 0
    last_end = virt_end
    for i, (name, payload) in enumerate(sections):
        encoded = name.encode("ascii", "replace")
        if not name.startswith(".") or len(encoded) > 8 or name in taken:
            raise BuildError(f"cannot add a PE section named {name!r}",
                             hint="a new name of at most 8 ASCII characters, starting with '.'")
        taken.add(name)
        pointer = _align(len(out), pe.file_alignment)
        size = _align(len(payload), pe.file_alignment)
        out += bytes(pointer - len(out)) + payload + bytes(size - len(payload))
        struct.pack_into("<8sIIIIIIHHI", out, pe.section_table + 40 * (len(pe.sections) + i),
                         encoded, len(payload), va, size, pointer, 0, 0, 0, 0,
                         SCN_INIT_DATA_READ)
        added += size
        last_end = va + len(payload)
        va = _align(last_end, max(PAGE, pe.section_alignment))
    opt = pe.optional
    struct.pack_into("<HII I", out, pe.coff + 2, len(pe.sections) + len(sections), stamp, 0, 0)
    initialized = struct.unpack_from("<I", out, opt + 8)[0]
    struct.pack_into("<I", out, opt + 8, (initialized + added) & 0xFFFFFFFF)
    struct.pack_into("<I", out, opt + 56, _align(last_end, pe.section_alignment))  # SizeOfImage
    struct.pack_into("<I", out, pe.checksum_offset, pe_checksum(out, pe.checksum_offset))
    return bytes(out)


@dataclass(frozen=True)
class Uki:
    """A unified kernel image taken apart."""

    pe: PeFile
    payloads: dict[str, bytes]  # section name → its VirtualSize bytes

    @property
    def signed(self) -> bool:
        return self.pe.signed

    def text(self, name: str) -> str:
        return self.payloads.get(name, b"").decode("utf-8", "replace").strip("\0\n ")


def is_pe(data: bytes) -> bool:
    return data[:2] == b"MZ"


def read(data: bytes, what: str = "the file") -> Uki:
    """The sections of a PE image (a UKI, signed or not)."""
    pe = parse(data, what)
    payloads: dict[str, bytes] = {}
    for s in pe.sections:
        end = s.raw_pointer + min(s.virtual_size, s.raw_size)
        if end > len(data):
            raise BuildError(f"{what}: section {s.name} runs past the end of the file")
        payloads.setdefault(s.name, data[s.raw_pointer:end])
    return Uki(pe, payloads)


def pcr11(payloads: dict[str, bytes]) -> str:
    """The sha256 PCR 11 value systemd-stub 252 leaves after measuring these sections into a
    fresh PCR (before systemd-pcrphase adds anything), upper-case hex."""
    pcr = bytes(32)
    for name in MEASURED:
        if name in payloads:
            for blob in (name.encode() + b"\0", payloads[name]):
                pcr = hashlib.sha256(pcr + hashlib.sha256(blob).digest()).digest()
    return pcr.hex().upper()


def kernel_release(bzimage: bytes) -> str | None:
    """The release string in a bzImage header (setup header's kernel_version pointer)."""
    if len(bzimage) < 0x210 or bzimage[0x202:0x206] != b"HdrS":
        return None
    pointer = struct.unpack_from("<H", bzimage, 0x20E)[0]
    if not pointer:
        return None
    start = pointer + 0x200
    text = bzimage[start:start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split(" ", 1)[0] or None


def ordered(sections: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Sections in FILE_ORDER (names outside it last, sorted)."""
    rank = {n: i for i, n in enumerate(FILE_ORDER)}
    return sorted(sections.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


# --- a UKI for a host: its kernel, os-release and command line around the built initrd -------


def _read(path: Path, what: str, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read {what} {path}: {e.strerror}", hint=hint) from None


def make(host: Host, initrd: bytes, kver: str, *, cmdline: Sequence[str] | None = None,
         root: str = "/") -> bytes:
    """The UKI of `host` around `initrd`, signed when [uki] names a key. `cmdline` replaces
    [uki] cmdline (verify embeds its per-run parameters)."""
    u = UKI.of(host)

    def host_path(p: str) -> Path:
        return Path(root, p.lstrip("/")) if root != "/" else Path(p)

    stub = _read(host_path(u.stub), "the EFI stub", "install systemd-boot-efi or set uki.stub")
    kernel_file = host_path(u.kernel or f"/boot/vmlinuz-{kver}")
    kernel = _read(kernel_file, "the kernel", "install its linux-image package or set uki.kernel "
                   "(some distributions make kernels readable by root only: sudo chmod 0644)")
    release = kernel_release(kernel)
    if release is not None and release != kver:
        raise BuildError(f"{kernel_file} is kernel {release}, the initrd is for {kver}",
                         hint="set kernel.version or uki.kernel so that they match")
    params = list(u.cmdline if cmdline is None else cmdline)
    sections = {".osrel": _read(host_path(u.os_release), "os-release", "set uki.os_release"),
                ".uname": kver.encode(), ".initrd": initrd, ".linux": kernel}
    if params:
        sections[".cmdline"] = " ".join(params).encode()
    image = build(stub, ordered(sections), stamp=timestamp())
    if u.sign_key and u.sign_cert:
        image = sign(image, key_path(host, u.sign_key), key_path(host, u.sign_cert))
    return image


def sign(image: bytes, key: Path, cert: Path) -> bytes:
    """Sign a PE image with sbsign, then check the signature with sbverify. sbsign stamps the
    signing time into the signature; everything else is the reproducible unsigned image
    (`sbattach --remove` gives its bytes back)."""
    for path, what in ((key, "signing key"), (cert, "certificate")):
        if not os.access(path, os.R_OK):
            raise BuildError(f"cannot read the {what} {path}",
                             hint="check uki.sign_key and uki.sign_cert")
    with tempfile.TemporaryDirectory(prefix="bootgen-uki-") as tmp:
        unsigned, signed = Path(tmp, "unsigned.efi"), Path(tmp, "signed.efi")
        unsigned.write_bytes(image)
        run(["sbsign", "--key", key, "--cert", cert, "--output", signed, unsigned])
        run(["sbverify", "--cert", cert, signed])
        return signed.read_bytes()
