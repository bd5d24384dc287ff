"""Writing files so that a reader (or a resumed run) never sees half a file.

Every file a run may read back (results, summaries, run information, statistics,
vocabularies, metrics) is written to a temporary name in the same folder and renamed
over the target with ``os.replace``, which is atomic on POSIX and Windows: a process
killed at any moment leaves the old file or the new one.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np


def write_atomically(path: str | os.PathLike, data: str | bytes) -> Path:
    """Writes ``data`` (text as UTF-8, or bytes) to ``path`` atomically; creates the
    parent folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def json_default(value: Any) -> Any:
    """JSON for numpy scalars and arrays and paths; anything else is refused."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_json(path: str | os.PathLike, value: Any, default=json_default) -> Path:
    """Writes ``value`` as indented JSON (numpy values and paths converted) atomically."""
    return write_atomically(path, json.dumps(value, indent=2, default=default) + "\n")
