"""The migration sender's tree walk (berth.guests.fdwalk, used by transfer.send_tree): driven
step by step, a directory swapped for a symlink to a directory outside the tree (between its
listing and its opening, or while its files are read) never makes the walk yield, list or read
anything outside; a file swapped for a fifo is not opened; a delta never reads through a
symlinked directory (the by-path sender did: R20 HIGH 2)."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

from berth.guests import fdwalk, transfer

SECRET = b"h10d-outside-secret"


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "upper", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    (root / "e").mkdir()
    outside.mkdir()
    for n in ("f1", "f2", "f3"):
        (root / "d" / n).write_bytes(b"guest " + n.encode())
        (outside / n).write_bytes(SECRET)
    (outside / "only-outside").write_bytes(SECRET)
    (root / "e" / "g").write_bytes(b"guest g")
    return root, outside


def _swap(root: Path, outside: Path, name: str = "d") -> None:
    """What a hostile guest does: its directory away, a symlink to the host's in its place."""
    os.rename(root / name, root / f"{name}.away")
    os.symlink(outside, root / name)


def _read(e: fdwalk.Entry) -> bytes:
    return os.pread(e.fd, 1 << 16, 0) if e.fd >= 0 and not e.is_dir else b""


def test_walk_yields_the_tree_with_stats_and_open_files(tmp_path: Path) -> None:
    root, _outside = _trees(tmp_path)
    os.symlink("d/f1", root / "ln")
    os.mkfifo(root / "fifo")
    got = {e.rel: (stat.S_IFMT(e.st.st_mode), _read(e)) for e in fdwalk.walk(str(root))}
    assert list(got) == ["", "d", "e", "fifo", "ln", "d/f1", "d/f2", "d/f3", "e/g"]
    assert got["d/f2"] == (stat.S_IFREG, b"guest f2")
    assert got["ln"][0] == stat.S_IFLNK and got["fifo"][0] == stat.S_IFIFO
    assert {e.rel: e.st.st_ino for e in fdwalk.walk(str(root), read=False)} == {
        e.rel: e.st.st_ino for e in fdwalk.walk(str(root))
    }


def test_directory_swapped_after_its_listing_is_not_entered(tmp_path: Path) -> None:
    """``d`` is yielded (listed in the root), then swapped before the walk opens it to list it."""
    root, outside = _trees(tmp_path)
    seen = []
    for e in fdwalk.walk(str(root)):
        seen.append(e.rel)
        assert _read(e) != SECRET, e.rel
        if e.rel == "d":
            _swap(root, outside)
    assert not [r for r in seen if r.startswith("d/")], seen
    assert "e/g" in seen


def test_directory_swapped_while_its_files_are_read(tmp_path: Path) -> None:
    """``d/f1`` is being read when ``d`` becomes a symlink: the rest of ``d`` still comes from
    the directory the walk holds (now ``d.away``), never from outside."""
    root, outside = _trees(tmp_path)
    got = {}
    for e in fdwalk.walk(str(root)):
        got[e.rel] = _read(e)
        if e.rel == "d/f1":
            _swap(root, outside)
    assert got["d/f2"] == b"guest f2" and got["d/f3"] == b"guest f3"
    assert SECRET not in got.values() and "d/only-outside" not in got


def test_directory_swapped_for_another_one_is_not_entered(tmp_path: Path) -> None:
    """Between ``d``'s listing and its opening, another directory takes its name: its contents
    are not yielded as ``d``'s (the inode is checked), the delta sends them later."""
    root, _outside = _trees(tmp_path)
    seen = []
    for e in fdwalk.walk(str(root)):
        seen.append(e.rel)
        if e.rel == "e":
            os.rename(root / "d", root / "d.old")
            os.rename(root / "e", root / "d")
    assert not [r for r in seen if r.startswith("d/")], seen


def test_file_swapped_for_a_fifo_is_not_opened(tmp_path: Path) -> None:
    """Listed as a file, a fifo by the time it is opened: pinned with O_PATH and seen to be a
    fifo, not opened for reading (which would wait for a writer forever)."""
    root, _outside = _trees(tmp_path)
    (root / "z").write_bytes(b"z")
    kinds = {}
    for e in fdwalk.walk(str(root)):
        kinds[e.rel] = (stat.S_IFMT(e.st.st_mode), e.fd)
        if e.rel == "e":
            os.unlink(root / "z")
            os.mkfifo(root / "z")
    assert kinds["z"] == (stat.S_IFIFO, -1)


def test_lookup_refuses_symlinked_components(tmp_path: Path) -> None:
    root, outside = _trees(tmp_path)
    _swap(root, outside)
    with fdwalk.Lookup(str(root)) as look:
        assert look.get("d/f1") is None
        assert look.get("d/../e/g") is None
        e = look.get("d")
        assert e is not None and stat.S_ISLNK(e.st.st_mode) and e.fd == -1
        e.close()
        g = look.get("d.away/f2")
        assert g is not None and _read(g) == b"guest f2"
        g.close()


def _sent(send) -> bytes:  # type: ignore[no-untyped-def]
    a, b = socket.socketpair()
    chunks: list[bytes] = []

    def sink() -> None:
        while data := b.recv(1 << 16):
            chunks.append(data)

    t = threading.Thread(target=sink)
    t.start()
    try:
        send(transfer.Stream(a))
    finally:
        a.close()
        t.join()
        b.close()
    return b"".join(chunks)


def test_send_tree_never_reads_through_a_symlinked_directory(tmp_path: Path) -> None:
    """The pre-copy's manifest has ``d/f1``..; the guest swaps ``d`` for a symlink to the host's
    directory before the delta is sent: the by-path sender read ``upper/d/f1`` through it."""
    root, outside = _trees(tmp_path)
    before = _sent(lambda s: transfer.send_tree(s, {"upper": str(root)}))
    assert b"guest f1" in before and SECRET not in before
    _swap(root, outside)
    out = _sent(
        lambda s: transfer.send_tree(s, {"upper": str(root)}, only=["d/f1", "d/f2", "d/only-outside", "d"])
    )
    assert SECRET not in out
    assert b'"upper/d/f1"' not in out and b'"upper/d"' in out  # the symlink itself goes


def test_manifest_is_what_was_sent_and_the_delta_resends_what_was_skipped(tmp_path: Path) -> None:
    """send_tree's manifest holds only what it sent: a directory it skipped (swapped at the
    time) and put back before the freeze goes whole in the delta."""
    root, outside = _trees(tmp_path)
    walk = fdwalk.walk

    def swapping(path: str, *, read: bool = True):  # type: ignore[no-untyped-def]
        for e in walk(path, read=read):
            yield e
            if e.rel == "d":
                _swap(root, outside)

    before: dict = {}
    fdwalk.walk = swapping  # type: ignore[assignment]
    try:
        m = _sent(lambda s: before.update(transfer.send_tree(s, {"upper": str(root)})["upper"]))
    finally:
        fdwalk.walk = walk  # type: ignore[assignment]
    assert SECRET not in m
    assert not [r for r in before["entries"] if r.startswith("d/")]
    os.unlink(root / "d")
    os.rename(root / "d.away", root / "d")
    send, _remove = transfer.delta(str(root), before)
    assert {"d/f1", "d/f2", "d/f3"} <= set(send)
