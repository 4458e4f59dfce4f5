"""Atomic writes, tested directly: a write that fails halfway leaves the old content and no
temp file (no full disk needed), and what killed saves left is cleaned up."""

from __future__ import annotations

import errno
import json
import os

import pytest

from hexsweep import atomic
from hexsweep.atomic import atomic_write, atomic_write_json, atomic_write_text, remove_stale_temps


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_then_full(f):
    f.write("new content, first half ")
    f.flush()
    _no_space()


@pytest.mark.parametrize("fail", ["writer", "fsync", "rename", "unserialisable"])
def test_a_write_that_fails_halfway_leaves_the_old_content_and_no_temp_file(tmp_path, monkeypatch, fail):
    path = tmp_path / "result.json"
    path.write_text('{"old": true}\n')
    if fail == "writer":
        with pytest.raises(OSError, match="No space left"):
            atomic_write(path, _half_then_full)
    elif fail == "fsync":  # the data reached the temp file, the disk refused to keep it
        monkeypatch.setattr(atomic.os, "fsync", _no_space)
        with pytest.raises(OSError, match="No space left"):
            atomic_write_text(path, "new content")
    elif fail == "rename":
        monkeypatch.setattr(atomic.os, "replace", _no_space)
        with pytest.raises(OSError, match="No space left"):
            atomic_write_json(path, {"new": True})
    else:  # json.dumps fails after a part of the object: nothing may be written at all
        with pytest.raises(TypeError):
            atomic_write_json(path, {"new": True, "bad": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_binary_write_interrupted_by_ctrl_c_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old state")

    def interrupted(f):
        f.write(b"half of a new state")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted, mode="wb")
    assert path.read_bytes() == b"old state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_stale_temp_files_of_one_file_are_removed_and_nothing_else(tmp_path):
    """What kill -9 during saves leaves (``.last.pt.<random>.tmp``) goes; another file's temp
    files, a folder of that name and the file itself stay."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"state")
    stale = [tmp_path / ".last.pt.k9x2a1b0.tmp", tmp_path / ".last.pt.zz_1.tmp"]
    for p in stale:
        p.write_bytes(b"PK half")
    kept = [tmp_path / ".best.pt.3fz8q0wn.tmp", tmp_path / "last.pt.tmp", tmp_path / ".last.pt.old"]
    for p in kept:
        p.write_bytes(b"")
    (tmp_path / ".last.pt.dir.tmp").mkdir()
    assert sorted(remove_stale_temps(path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.pt", ".last.pt.dir.tmp", *(p.name for p in kept)])
    assert remove_stale_temps(tmp_path / "[odd]*name") == []  # glob characters in a name match only it
