"""LUKS2 test volumes built in userspace: no root, no loop devices, no device-mapper.

`cryptsetup luksFormat` writes the LUKS2 header into a plain file with a volume key we chose
(`--volume-key-file`); we then encrypt the inner filesystem image ourselves exactly as dm-crypt
would decrypt it: AES-XTS with "plain64" IVs, i.e. for the 512-byte sector number s counted
from the start of the data segment the XTS tweak is s as 16 bytes little-endian, and the
64-byte volume key holds the two AES-256 keys. The ciphertext goes at the data segment's
offset, read from the header's JSON metadata (16 MiB for an attached LUKS2 header, 0 with a
detached one).

Keyslot 0 holds `TEST_PASSPHRASE`, typed at the console by the tests and `bootgen verify`;
keyfiles get further keyslots. PBKDF2 with few iterations keeps unlocking fast under QEMU TCG.

FOR TEST DISKS ONLY: the volume keys and keyfiles made here are derived from public data (the
disk plan), so anybody can recompute them. Never use this module for a real host's volume.

cryptsetup draws random salts, so LUKS images are not byte-reproducible (the encrypted data,
made with the derived volume key, is); the content-addressed cache still makes repeated runs
fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import BuildError, CommandError
from ..run import run, which

TEST_PASSPHRASE = "bootgen-test-passphrase"  # keyslot 0 of every test volume, exactly these bytes
SECTOR_SIZE = 512  # dm-crypt sector size of the test volumes (--sector-size)
VOLUME_KEY_BYTES = 64  # aes-xts-plain64 with --key-size 512: two AES-256 keys
PBKDF_ITERATIONS = 1000
MAX_KEYFILE_BYTES = 4 << 20
_FORMAT = ("--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512",
           "--sector-size", str(SECTOR_SIZE))
_PBKDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", str(PBKDF_ITERATIONS))
_CHUNK = 1 << 20  # bytes encrypted per read/write


@dataclass(frozen=True)
class ExtraKey:
    """A keyfile added as a keyslot besides the test passphrase (cryptsetup's keyfile rules:
    `offset` bytes are skipped, then `size` bytes, or everything up to the end, are the key)."""

    path: Path
    size: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class Volume:
    """One test LUKS2 container to make."""

    uuid: str
    label: str | None
    volume_key: bytes  # VOLUME_KEY_BYTES
    keys: tuple[ExtraKey, ...] = ()


def derived_bytes(size: int, *parts: str) -> bytes:
    """`size` bytes that depend only on `parts`; a prefix of any longer result (SHAKE-256).

    Test disks only: whoever knows the plan knows these keys.
    """
    return hashlib.shake_256("\0".join(("bootgen-test-luks", *parts)).encode()).digest(size)


def test_volume_key(*parts: str) -> bytes:
    """The volume key of a test container (test disks only: derived from the plan)."""
    return derived_bytes(VOLUME_KEY_BYTES, "volume-key", *parts)


def cryptsetup() -> str:
    found = which("cryptsetup")
    if not found:
        raise BuildError("cryptsetup is missing (the LUKS test volumes are formatted with it)",
                         hint="install cryptsetup (Debian: cryptsetup-bin)")
    return found


# --- AES-XTS, plain64 --------------------------------------------------------------------------


def _xts(key: bytes, data: bytes | bytearray | memoryview, first_sector: int, encrypt: bool
         ) -> bytes:
    if len(key) != VOLUME_KEY_BYTES:
        raise ValueError(f"an aes-xts-plain64 key of {VOLUME_KEY_BYTES} bytes is needed")
    if len(data) % SECTOR_SIZE:
        raise ValueError(f"{len(data)} bytes are not whole {SECTOR_SIZE}-byte sectors")
    aes = algorithms.AES(key)
    view = memoryview(data)
    parts = []
    # The library's XTS takes one tweak per call (one data unit), so one call per sector:
    # about 5 µs each, 0.6-1 s for 64 MiB.
    for i in range(len(data) // SECTOR_SIZE):
        tweak = (first_sector + i).to_bytes(16, "little")  # plain64: the sector number, LE
        cipher = Cipher(aes, modes.XTS(tweak))
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        parts.append(ctx.update(view[i * SECTOR_SIZE:(i + 1) * SECTOR_SIZE]))
    out = b"".join(parts)
    assert len(out) == len(data)
    return out


def xts_encrypt(key: bytes, data: bytes | bytearray | memoryview, first_sector: int = 0
                ) -> bytes:
    """Encrypt whole sectors as dm-crypt's aes-xts-plain64 (512-byte sectors) does; sector
    numbers count from `first_sector` (the data segment starts at sector 0)."""
    return _xts(key, data, first_sector, True)


def xts_decrypt(key: bytes, data: bytes | bytearray | memoryview, first_sector: int = 0
                ) -> bytes:
    """The inverse of `xts_encrypt`."""
    return _xts(key, data, first_sector, False)


def encrypt_into(plain: Path, container: Path, offset: int, key: bytes) -> None:
    """Write `plain` (a filesystem image), encrypted, into `container` at `offset` (the data
    segment's start: sector 0 of the XTS numbering)."""
    size = plain.stat().st_size
    if size % SECTOR_SIZE:
        raise BuildError(f"{plain.name}: {size} bytes are not whole {SECTOR_SIZE}-byte sectors")
    room = container.stat().st_size - offset
    if size > room:
        raise BuildError(f"{plain.name} ({size} bytes) does not fit in the LUKS data segment "
                         f"of {container.name} ({room} bytes)")
    with open(plain, "rb") as fi, open(container, "r+b") as fo:
        fo.seek(offset)
        sector = 0
        while chunk := fi.read(_CHUNK):
            fo.write(xts_encrypt(key, chunk, sector))
            sector += len(chunk) // SECTOR_SIZE


# --- cryptsetup --------------------------------------------------------------------------------


def _header_args(header: Path | None) -> list[str | Path]:
    return ["--header", header] if header is not None else []


def _key_args(key: ExtraKey, new: bool) -> list[str | Path]:
    prefix = "--new-keyfile" if new else "--keyfile"
    args: list[str | Path] = [] if new else ["--key-file", key.path]
    if key.size is not None:
        args += [f"{prefix}-size", str(key.size)]
    if key.offset is not None:
        args += [f"{prefix}-offset", str(key.offset)]
    return args


def _secret_file(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def format_volume(container: Path, vol: Volume, scratch: Path, *, header: Path | None = None
                  ) -> None:
    """luksFormat `container` (an existing file of its final size) with the test passphrase in
    keyslot 0, then add `vol.keys`. With `header`, the LUKS2 header is written to that new
    file instead and `container` holds data only."""
    exe = cryptsetup()
    vk = _secret_file(scratch / "volume-key", vol.volume_key)
    passphrase = _secret_file(scratch / "passphrase", TEST_PASSPHRASE.encode())
    label: list[str | Path] = ["--label", vol.label] if vol.label else []
    try:
        run([exe, "luksFormat", "-q", *_FORMAT, *_PBKDF, "--volume-key-file", vk,
             "--uuid", vol.uuid, *label, "--key-file", passphrase, *_header_args(header),
             container])
        for key in vol.keys:
            run([exe, "luksAddKey", "-q", *_PBKDF, "--key-file", passphrase,
                 *_key_args(key, True), *_header_args(header), container, key.path])
    finally:
        vk.unlink()
        passphrase.unlink()


def metadata(container: Path, *, header: Path | None = None) -> dict[str, Any]:
    """The LUKS2 JSON metadata (luksDump --dump-json-metadata) of `container`."""
    proc = run([cryptsetup(), "luksDump", "--dump-json-metadata", header or container])
    try:
        meta = json.loads(proc.stdout)
    except ValueError as e:
        raise BuildError(f"cannot read the LUKS2 metadata of {container.name}: {e}") from e
    if not isinstance(meta, dict):
        raise BuildError(f"cannot read the LUKS2 metadata of {container.name}")
    return meta


def data_offset(container: Path, *, header: Path | None = None) -> int:
    """Where the encrypted data of `container` begins, in bytes (segment 0's offset)."""
    seg = metadata(container, header=header).get("segments", {}).get("0", {})
    if seg.get("encryption") != "aes-xts-plain64" or int(seg.get("sector_size", 0)) != SECTOR_SIZE \
            or str(seg.get("iv_tweak", "0")) != "0":
        raise BuildError(f"{container.name}: unexpected LUKS2 data segment {seg}",
                         hint="is this cryptsetup 2.x?")
    return int(seg["offset"])


def build_volume(container: Path, vol: Volume, scratch: Path, *, inner: Path | None = None,
                 header: Path | None = None) -> int:
    """Format `container` and, given a filesystem image `inner`, encrypt it into the data
    segment. Returns the data segment's offset in `container`."""
    format_volume(container, vol, scratch, header=header)
    offset = data_offset(container, header=header)
    if inner is not None:
        encrypt_into(inner, container, offset, vol.volume_key)
    return offset


def unlocks(container: Path, key_file: Path, *, header: Path | None = None,
            size: int | None = None, offset: int | None = None) -> bool:
    """Whether `key_file` opens a keyslot (cryptsetup --test-passphrase: no device-mapper)."""
    argv: list[str | Path] = [cryptsetup(), "luksOpen", "--test-passphrase",
                              *_key_args(ExtraKey(key_file, size, offset), False),
                              *_header_args(header), container]
    proc = run(argv, check=False)
    if proc.returncode not in (0, 2):  # 2: "no permission", i.e. no keyslot opens
        raise CommandError(f"cryptsetup luksOpen --test-passphrase failed on {container.name}: "
                           + proc.stderr.decode(errors="replace").strip())
    return proc.returncode == 0


def check_keyfile(data: bytes, keys: Sequence[ExtraKey], what: str) -> None:
    """Refuse keyfile parameters that leave no key in `data`."""
    for key in keys:
        if (key.offset or 0) + (key.size or 1) > len(data):
            raise BuildError(f"{what}: the keyfile has {len(data)} bytes, too few for "
                             f"key_file_offset {key.offset or 0} and key_file_size "
                             f"{key.size or 'unset'}")
