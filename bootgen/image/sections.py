"""ELF sections by name, read from the section headers alone (no pyelftools, whose ELFFile
parses far more and takes 10 ms to import): a module's .modinfo (kmod) and the sonames a
program declares it may dlopen (systemd's .note.dlopen)."""

from __future__ import annotations

import json
import struct

from ..errors import BuildError
from . import hostfs

NT_FDO_DLOPEN = 0x407C0C0A


def section(data: bytes, name: bytes) -> bytes:
    """The content of the named section of an ELF file (b"" when it has none), read from the
    section headers alone: a module's .modinfo without parsing the rest of it."""
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ValueError("not an ELF file")
    end = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # ELF64: e_shoff at 0x28, e_shentsize/shnum/shstrndx at 0x3a
        (shoff,), (entsize, count, names) = (struct.unpack_from(end + "Q", data, 0x28),
                                             struct.unpack_from(end + "HHH", data, 0x3A))
        header = end + "IIQQQQ"  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
    else:
        (shoff,), (entsize, count, names) = (struct.unpack_from(end + "I", data, 0x20),
                                             struct.unpack_from(end + "HHH", data, 0x2E))
        header = end + "IIIIII"
    if count and entsize < struct.calcsize(header):
        raise ValueError(f"section header size {entsize} is too small")
    headers = [struct.unpack_from(header, data, shoff + i * entsize) for i in range(count)]
    if names >= count:
        raise ValueError("no section name table")
    table = data[headers[names][4]:headers[names][4] + headers[names][5]]
    for h in headers:
        if table[h[0]:h[0] + len(name) + 1] == name + b"\0":
            if h[4] + h[5] > len(data):
                raise ValueError(f"section {name.decode()} runs past the end of the file")
            return data[h[4]:h[4] + h[5]]
    return b""


def dlopen_notes(path: str, root: str = "/") -> tuple[str, ...]:
    """Sonames declared in the ELF ".note.dlopen" section (systemd >= 253 format), in order.

    Each note has owner "FDO", type 0x407c0c0a and a JSON array of objects whose "soname" lists
    alternatives. Returns () when the file has no such section (or is not ELF).
    """
    hpath = hostfs.host_path(hostfs.resolve(path, root), root)
    try:
        with open(hpath, "rb") as f:
            whole = f.read()
        data, little = section(whole, b".note.dlopen"), whole[5] == 1
    except (OSError, ValueError, struct.error, IndexError):
        return ()
    out: list[str] = []
    fmt = "<III" if little else ">III"
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(fmt, data, off)
        off += 12
        name = data[off : off + namesz].rstrip(b"\0")
        off += (namesz + 3) & ~3
        desc = data[off : off + descsz]
        off += (descsz + 3) & ~3
        if name != b"FDO" or ntype != NT_FDO_DLOPEN:
            continue
        try:
            entries = json.loads(desc.rstrip(b"\0").decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise BuildError(f"malformed .note.dlopen in {path}: {e}") from e
        for entry in entries if isinstance(entries, list) else [entries]:
            sonames = entry.get("soname", []) if isinstance(entry, dict) else []
            for so in [sonames] if isinstance(sonames, str) else sonames:
                if isinstance(so, str) and so not in out:
                    out.append(so)
    return tuple(out)
