"""Writing files and folders so that a reader (or a resumed run) never sees half of one.

Every file a run may read back (results, summaries, run information, statistics,
vocabularies, metrics, exported models) is written to a temporary name in the same
folder and renamed over the target with ``os.replace``, which is atomic on POSIX and
Windows: a process killed at any moment leaves the old file or the new one.

A folder (a prepared dataset) is built in a hidden temporary sibling and moved into
place with ``replace_folder``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _sibling(path: Path, tag: str, suffix: str = "") -> Path:
    """A hidden, unique name beside ``path`` (same folder, so renames stay atomic)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def write_atomically(path: str | os.PathLike, data: str | bytes) -> Path:
    """Writes ``data`` (text as UTF-8, or bytes) to ``path`` atomically; creates the
    parent folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
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


@contextlib.contextmanager
def writing_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for a writer that takes a path (e.g.
    ``model.save``); renames it over ``path`` when the block ends without an error,
    removes it otherwise. The temporary name keeps the suffix of ``path``, for writers
    that pick the format from it. Creates the parent folder.

    Example::

        with writing_atomically(output_dir / "image_encoder.keras") as tmp:
            model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp", path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_folder(built: str | os.PathLike, final: str | os.PathLike,
                   overwrite: bool = False) -> Path:
    """Renames the complete folder ``built`` to ``final`` (its sibling), replacing an
    existing ``final`` only when ``overwrite``.

    ``final`` is never left half-written: it is the old folder or the new one (while
    an old one is swapped out, ``final`` is briefly absent). An existing ``final`` is
    first renamed to a hidden sibling, and renamed back if ``built`` cannot be moved
    in; the old copy is deleted only after the new folder is in place (a symlink is
    unlinked, never followed; a copy that cannot be deleted is left with a warning).

    Args:
        built: the finished folder, in the same parent folder as ``final``.
        final: the destination (a folder, file or symlink there is replaced only with
            ``overwrite``).
        overwrite: replace an existing ``final``.

    Returns:
        ``final`` as a ``Path``.

    Raises:
        FileExistsError: ``final`` exists and not ``overwrite`` (nothing is moved or
            deleted; callers re-raise it with their own message).
        OSError: a rename failed (``final`` is as before the call, ``built`` left in
            place).
    """
    built, final = Path(built), Path(final)
    if not (final.exists() or final.is_symlink()):
        os.rename(built, final)
        return final
    if not overwrite:
        raise FileExistsError(f"{final}: already exists and overwrite was not asked for")
    old = _sibling(final, "old")
    os.rename(final, old)
    try:
        os.rename(built, final)
    except BaseException:
        os.rename(old, final)
        raise
    try:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    except OSError as error:
        warnings.warn(f"{final} was replaced but its old copy {old} could not be deleted "
                      f"({error}); delete it by hand", stacklevel=2)
    return final


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
