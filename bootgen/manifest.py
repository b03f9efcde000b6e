"""The bill of materials of an image: every path, mode, size, sha256, source and reason."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from . import __version__
from .pack import read_source
from .spec import Image


def manifest(image: Image, image_sha256: str) -> dict[str, Any]:
    spec = image.spec
    rows = []
    for e in image.entries:
        row: dict[str, Any] = {"path": e.path, "kind": e.kind, "mode": f"{e.mode:04o}",
                               "reason": e.reason}
        if e.kind == "file":
            data = e.data if e.data is not None else read_source(e)
            row["size"] = len(data)
            if e.secret:
                row["secret"] = True  # listed, but its content hash would leak information
            else:
                row["sha256"] = hashlib.sha256(data).hexdigest()
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
        "entries": rows,
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
