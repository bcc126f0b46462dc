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
    """md5 of a file; of a folder, DVC's directory hash (``<md5>.dir``, as in dvc.lock); '' if absent."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        return ""
    files = sorted((p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.relative_to(path).parts)
    listing = [{"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()} for p in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def config_digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
