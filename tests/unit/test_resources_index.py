"""The index of CPU requests under a state root (berth.runtime.resources._Index): it spares a
start of a guest with the default share from reading every other guest's state.json, and is
never trusted over the state dirs themselves (a dir it has not seen is read; a gone or remade
one is dropped)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from berth.runtime import resources
from berth.runtime import state as st

SHARE = {"share": 300, "reserve": 0.0, "cap": None, "burst_us": None}


def guest(root: Path, cid: str, cpu: dict | None = None, parent: str = "p") -> None:
    st.reserve(str(root), cid)
    berth = {"cgroup": f"{parent}/{cid}"} | ({"cpu": cpu} if cpu else {})
    st.write(str(root), cid, {"id": cid, "status": "running", "pid": 0, "berth": berth})


def load(root: Path) -> resources._Index:
    return resources._Index(str(root)).load()


def test_unseen_dirs_are_read_once_and_saved(tmp_path: Path) -> None:
    guest(tmp_path, "a")
    guest(tmp_path, "b", SHARE)
    idx = load(tmp_path)
    assert set(idx.seen) == {"a", "b"} and idx.cpu == {"b": ["p", SHARE]}
    assert idx.others("p", "new") and not idx.others("q", "new") and not idx.others("p", "b")
    idx.save()
    os.unlink(tmp_path / "b" / "state.json")  # the saved index is used: b is not read again
    assert load(tmp_path).cpu == {"b": ["p", SHARE]}


def test_gone_and_remade_dirs_are_dropped(tmp_path: Path) -> None:
    guest(tmp_path, "b", SHARE)
    load(tmp_path).save()
    shutil.rmtree(tmp_path / "b")
    assert load(tmp_path).cpu == {}
    # c deleted without forget (a crash) and made again with the default share (a restore): its
    # dir has another inode than the one the index saw, so it is read again.
    guest(tmp_path, "c")
    idx = load(tmp_path)
    idx.note("c", idx.seen["c"] + 1, "p/c", SHARE)
    idx.save()
    assert load(tmp_path).cpu == {}


def test_a_dir_being_reserved_is_read_later(tmp_path: Path) -> None:
    st.reserve(str(tmp_path), "d")  # no state.json yet
    idx = load(tmp_path)
    assert "d" not in idx.seen
    idx.save()
    st.write(str(tmp_path), "d", {"id": "d", "berth": {"cgroup": "p/d", "cpu": SHARE}})
    assert load(tmp_path).cpu == {"d": ["p", SHARE]}


def test_note_and_forget(tmp_path: Path) -> None:
    idx = load(tmp_path)
    idx.note("x", 1, "/p/x", SHARE)
    idx.note("y", 2, "p/y", None)
    assert idx.cpu == {"x": ["p", SHARE]} and set(idx.seen) == {"x", "y"}
    idx.note("x", 1, "p/x", dict(resources.DEFAULT))  # back to the default share
    assert idx.cpu == {}
    idx.forget("y")
    assert idx.seen == {"x": 1}


def test_a_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    guest(tmp_path, "b", SHARE)
    (tmp_path / resources.INDEX).write_text("{not json")
    assert load(tmp_path).cpu == {"b": ["p", SHARE]}
    (tmp_path / resources.INDEX).write_text('{"seen": [], "cpu": 3}')
    assert load(tmp_path).cpu == {"b": ["p", SHARE]}


def test_a_guest_with_the_default_share_writes_no_index(tmp_path: Path) -> None:
    """berth run's guests (the default share, made and removed in a few ms): their create and
    delete leave the index as it is, and a later load still reads a default guest that lives on."""
    guest(tmp_path, "a", SHARE, parent="q")
    load(tmp_path).save()
    index = tmp_path / resources.INDEX
    before = (index.stat().st_ino, index.read_text())
    st.reserve(str(tmp_path), "r")
    fd, extra = resources.place(str(tmp_path), "r", "p/r", {}, {})
    resources.unlock(fd)
    assert extra == {"cpu": dict(resources.DEFAULT)}
    assert (index.stat().st_ino, index.read_text()) == before  # a save renames a new file in
    st.write(str(tmp_path), "r", {"id": "r", "status": "running", "pid": 0, "berth": {"cgroup": "p/r"}})
    assert set(load(tmp_path).seen) == {"a", "r"}  # not saved: read by the next load
    shutil.rmtree(tmp_path / "r")
    resources.forget(str(tmp_path), "r", "p/r", None)
    assert (index.stat().st_ino, index.read_text()) == before
    assert load(tmp_path).cpu == {"a": ["q", SHARE]}
