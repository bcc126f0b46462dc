"""Content digests of files and folders (md5, as DVC uses) and of configs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def path_digest(path: Path) -> str:
    """md5 of a file, or of a folder's sorted (relative path, file md5) listing; '' if absent."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        return ""
    listing = [(str(p.relative_to(path)), file_md5(p)) for p in sorted(path.rglob("*"))
               if p.is_file() and not p.name.startswith(".")]
    return hashlib.md5(json.dumps(listing).encode()).hexdigest()


def config_digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
