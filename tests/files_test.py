"""Tests of lovt_keras.files: atomic writes of files and whole folders."""

import json
import os

import numpy as np
import pytest

from lovt_keras import files
from lovt_keras.files import replace_folder, write_atomically, write_json, writing_atomically


def _folder(path, **contents):
    path.mkdir()
    for name, text in contents.items():
        (path / name).write_text(text)
    return path


def _contents(path):
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def _names(parent):
    return sorted(p.name for p in parent.iterdir())


def test_write_atomically_and_write_json(tmp_path):
    path = write_atomically(tmp_path / "sub" / "a.txt", "first")
    assert path.read_text() == "first"
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    write_json(tmp_path / "b.json", {"x": np.float32(0.5), "y": np.arange(2), "p": tmp_path})
    assert json.loads((tmp_path / "b.json").read_text()) == {
        "x": 0.5, "y": [0, 1], "p": str(tmp_path),
    }
    assert _names(tmp_path) == ["b.json", "sub"] and _names(tmp_path / "sub") == ["a.txt"]


def test_writing_atomically_keeps_the_suffix_and_the_old_file_on_an_error(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer died"):
        with writing_atomically(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".keras" and tmp != target
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old" and _names(tmp_path) == ["model.keras"]

    with writing_atomically(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # replaced only when the block ends
    assert target.read_text() == "new" and _names(tmp_path) == ["model.keras"]


def test_replace_folder_moves_into_an_empty_place(tmp_path):
    built = _folder(tmp_path / ".out.tmp", a="new")
    assert replace_folder(built, tmp_path / "out") == tmp_path / "out"
    assert _names(tmp_path) == ["out"] and _contents(tmp_path / "out") == {"a": "new"}


def test_replace_folder_replaces_only_when_asked(tmp_path):
    final = _folder(tmp_path / "out", a="old", b="old only")
    built = _folder(tmp_path / ".out.tmp", a="new")
    # A refusal moves and deletes nothing.
    with pytest.raises(FileExistsError, match="already exists"):
        replace_folder(built, final)
    assert _contents(final) == {"a": "old", "b": "old only"}
    assert _contents(built) == {"a": "new"}

    replace_folder(built, final, overwrite=True)
    assert _contents(final) == {"a": "new"}
    assert _names(tmp_path) == ["out"]  # the old copy is deleted, nothing else is left


def test_replace_folder_restores_the_original_when_the_move_fails(tmp_path, monkeypatch):
    final = _folder(tmp_path / "out", a="old")
    built = _folder(tmp_path / ".out.tmp", a="new")
    real_rename = os.rename

    def failing_rename(src, dst):
        if os.fspath(src) == os.fspath(built):  # after the old folder was moved aside
            raise OSError("simulated failure")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated failure"):
        replace_folder(built, final, overwrite=True)
    monkeypatch.undo()
    assert _contents(final) == {"a": "old"} and _contents(built) == {"a": "new"}
    assert _names(tmp_path) == [".out.tmp", "out"]  # no ".out.old-..." copy left over


def test_replace_folder_unlinks_a_symlink_without_touching_its_target(tmp_path):
    target = _folder(tmp_path / "user_data", a="keep me")
    final = tmp_path / "out"
    final.symlink_to(target, target_is_directory=True)
    built = _folder(tmp_path / ".out.tmp", a="new")
    with pytest.raises(FileExistsError):
        replace_folder(built, final)
    assert final.is_symlink()
    replace_folder(built, final, overwrite=True)
    assert not final.is_symlink() and _contents(final) == {"a": "new"}
    assert _contents(target) == {"a": "keep me"}
    assert _names(tmp_path) == ["out", "user_data"]


def test_replace_folder_warns_when_the_old_copy_cannot_be_deleted(tmp_path, monkeypatch):
    final = _folder(tmp_path / "out", a="old")
    built = _folder(tmp_path / ".out.tmp", a="new")

    def failing_rmtree(path, *args, **kwargs):
        raise PermissionError(f"cannot delete {path}")

    monkeypatch.setattr(files.shutil, "rmtree", failing_rmtree)
    with pytest.warns(UserWarning, match="could not be deleted"):
        replace_folder(built, final, overwrite=True)
    assert _contents(final) == {"a": "new"}
    (left,) = [p for p in tmp_path.iterdir() if p.name != "out"]
    assert left.name.startswith(".out.old-") and _contents(left) == {"a": "old"}
