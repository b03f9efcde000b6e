"""The bill of materials of an image: every path, mode, size, sha256, source and reason, and
each segment's sizes. Made from what pack recorded: nothing is read from the host again."""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from .pack import Packed
from .spec import Image


def manifest(image: Image, packed: Packed, image_sha256: str) -> dict[str, Any]:
    spec = image.spec
    rows = []
    for e in image.entries:
        row: dict[str, Any] = {"path": e.path, "kind": e.kind, "mode": f"{e.mode:04o}",
                               "feature": e.feature, "reason": e.reason}
        if e.kind == "file":
            recorded = packed.files[e.path]
            row["size"] = recorded.size
            if e.secret:
                row["secret"] = True  # listed, but its content hash would leak information
            else:
                row["sha256"] = recorded.sha256
            row["source"] = e.source or "generated"
        elif e.kind == "symlink":
            row["target"] = e.target
        elif e.kind in ("char", "block"):
            row["rdev"] = f"{e.rdev[0]}:{e.rdev[1]}"
        rows.append(row)
    return {
        "bootgen": __version__,
        "flavor": spec.flavor,
        "kernel": spec.kver,
        "compression": spec.compression,
        "features": list(spec.features),
        "modules": list(image.modules),
        "image_sha256": image_sha256,
        "early_bytes": len(packed.early),  # the uncompressed microcode archive in front
        "segments": [{"name": s.name, "entries": s.entries, "raw_bytes": s.raw_size,
                      "bytes": len(s.data)} for s in packed.segments],
        "secrets_bytes": len(packed.secrets),  # the uncompressed secrets archive (appended)
        "entries": rows,
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
