"""berth.guests.specinputs.CodeWatch: the code stamp guestd remembers is the walked one, and any
change to the tree (a file edited, touched, added, removed; a new directory; the tree replaced)
is seen before guestd has read its events, as a forked worker would ask."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from berth.guests import specinputs
from berth.guests.specinputs import CodeWatch, walk_stamp


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "berth"
    (top / "sub").mkdir(parents=True)
    (top / "__pycache__").mkdir()
    (top / "a.py").write_text("a = 1\n")
    (top / "sub" / "b.py").write_text("b = 2\n")
    return top


def check(w: CodeWatch, top: Path, *, changed: bool) -> None:
    """The watch's stamp is the tree's as walked now; ``changed``: it knows it must walk."""
    assert w.changed() is changed
    assert w.stamp() == walk_stamp(str(top))
    w.refresh()  # as guestd does when the descriptor is readable
    assert not w.changed()
    assert w.stamp() == walk_stamp(str(top))


def test_a_quiet_tree_is_not_walked_again(tree: Path) -> None:
    w = CodeWatch(str(tree))
    try:
        assert not w.changed()
        assert w.stamp() == walk_stamp(str(tree)) != ""
        (tree / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"x")  # not code: unwatched
        assert not w.changed()
    finally:
        w.close()


@pytest.mark.parametrize(
    "change",
    [
        lambda t: (t / "a.py").write_text("a = 10\n"),  # edited in place (size)
        lambda t: os.utime(t / "sub" / "b.py", ns=(1, 1)),  # touched (mtime only)
        lambda t: (t / "sub" / "c.py").write_text(""),  # added
        lambda t: (t / "a.py").unlink(),  # removed
        lambda t: (t / "a.py").rename(t / "sub" / "a.py"),  # moved
    ],
    ids=["edited", "touched", "added", "removed", "moved"],
)
def test_a_change_is_seen_before_the_events_are_read(tree: Path, change) -> None:  # type: ignore[no-untyped-def]
    w = CodeWatch(str(tree))
    try:
        before = w.stamp()
        change(tree)
        assert w.stamp() != before
        check(w, tree, changed=True)
    finally:
        w.close()


def test_a_new_directory_is_watched_too(tree: Path) -> None:
    w = CodeWatch(str(tree))
    try:
        (tree / "new").mkdir()
        check(w, tree, changed=True)
        (tree / "new" / "d.py").write_text("d = 4\n")  # in the directory made after the watch
        check(w, tree, changed=True)
    finally:
        w.close()


def test_a_replaced_tree_is_seen(tree: Path) -> None:
    w = CodeWatch(str(tree))
    try:
        before = w.stamp()
        w.refresh()
        # The whole tree swapped for another one (a reinstall): new inodes at the same path.
        fresh = tree.parent / "berth.new"
        shutil.copytree(tree, fresh)
        (fresh / "a.py").write_text("a = 'new'\n")
        shutil.rmtree(tree)
        fresh.rename(tree)
        assert w.stamp() != before
        check(w, tree, changed=True)
    finally:
        w.close()


def test_without_a_watch_code_stamp_walks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(specinputs, "_WATCH", None)
    assert specinputs.code_stamp() == walk_stamp(specinputs._berth_dir())


def test_a_worker_forked_before_a_refresh_walks_again(tree: Path) -> None:
    """A worker forked before a change, asking after guestd has read the events (the queue they
    share is empty then), still walks: its own walk is of an older generation."""
    w = CodeWatch(str(tree))
    try:
        r, wr = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: waits until guestd has taken the change in, then asks
            code = 1
            try:
                os.close(r)
                os.read(go_r, 1)
                os.write(wr, b"%d %d" % (int(w.changed()), int(w.stamp() == walk_stamp(str(tree)))))
                code = 0
            finally:
                os._exit(code)
        os.close(wr)
        (tree / "a.py").write_text("a = 100\n")
        w.refresh()  # guestd: reads the events, walks
        assert not w.changed()
        os.write(go_w, b"x")
        got = os.read(r, 16)
        os.waitpid(pid, 0)
        assert got == b"1 1"  # the worker knew its walk was old, and walked
        for fd in (r, go_r, go_w):
            os.close(fd)
    finally:
        w.close()
