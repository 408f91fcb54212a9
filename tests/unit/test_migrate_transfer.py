"""The migration stream's trees (berth.guests.transfer): a round trip over a socketpair, the
upper layer's delta, and the paths a hostile stream must not reach."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from berth.errors import BerthError
from berth.guests import transfer
from berth.linux import sparse
from berth.runtime import checkpoint as ck


def _pair() -> tuple[transfer.Stream, transfer.Stream]:
    a, b = socket.socketpair()
    return transfer.Stream(a), transfer.Stream(b)


def _send_recv(send, dests: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    tx, rx = _pair()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            send(tx)
        except BaseException as e:  # the receiver may stop reading: a broken pipe is expected
            errors.append(e)
        finally:
            tx.sock.close()

    t = threading.Thread(target=run)
    t.start()
    try:
        transfer.recv_tree(rx, dests)
    finally:
        rx.sock.close()
        t.join()
    assert rx.sha.hexdigest() == tx.sha.hexdigest()


def _tree(root: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", oct(p.stat().st_mode & 0o7777))
        else:
            out[rel] = ("file", p.read_bytes().hex()[:64] + oct(p.stat().st_mode & 0o7777))
    return out


def _sample(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello\n")
    (root / "big").write_bytes(os.urandom(3 * transfer.CHUNK + 17))
    (root / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o750)
    (root / "etc" / "link").symlink_to("../big")
    os.link(root / "big", root / "hard")


def test_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src" / "upper"
    _sample(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    _send_recv(lambda s: transfer.send_tree(s, {"upper": str(src)}), {"upper": str(dst)})
    assert _tree(dst / "upper") == _tree(src)
    assert os.stat(dst / "upper" / "hard").st_ino == os.stat(dst / "upper" / "big").st_ino
    assert os.stat(dst / "upper" / "big").st_mtime_ns == os.stat(src / "big").st_mtime_ns


def test_delta_sends_what_changed_and_removes_what_went(tmp_path: Path) -> None:
    src = tmp_path / "upper"
    _sample(src)
    before = transfer.manifest(str(src))
    before["started"] += 10 * transfer.SLACK_NS  # as if the pre-copy began long after these were made
    (src / "etc" / "motd").write_text("changed\n")
    (src / "new").write_text("new\n")
    (src / "empty").unlink()
    os.utime(src / "etc" / "motd", ns=(1, 1))  # an old mtime: the ctime still tells
    send, remove = transfer.delta(str(src), before)
    assert "etc/motd" in send and "new" in send
    assert "big" not in send and "run.sh" not in send
    assert remove == ["empty"]


def test_delta_resends_files_touched_during_the_precopy(tmp_path: Path) -> None:
    src = tmp_path / "upper"
    _sample(src)
    before = transfer.manifest(str(src))  # everything was just written: within the slack
    send, remove = transfer.delta(str(src), before)
    assert "big" in send and "etc/motd" in send and remove == []


def test_delta_applied_on_the_destination(tmp_path: Path) -> None:
    src = tmp_path / "src" / "upper"
    _sample(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    _send_recv(lambda s: transfer.send_tree(s, {"upper": str(src)}), {"upper": str(dst)})
    before = transfer.manifest(str(src))
    before["started"] += 10 * transfer.SLACK_NS
    (src / "etc" / "motd").write_text("changed\n")
    (src / "run.sh").unlink()
    (src / "run.sh").mkdir()  # a file became a directory
    (src / "empty").unlink()
    send, remove = transfer.delta(str(src), before)
    transfer.remove_paths(str(dst / "upper"), remove)
    _send_recv(lambda s: transfer.send_tree(s, {"upper": str(src)}, only=send), {"upper": str(dst)})
    assert _tree(dst / "upper") == _tree(src)


def _hostile(entries: list[dict], dests: dict[str, str]) -> None:
    def send(s: transfer.Stream) -> None:
        for e in entries:
            s.send(json.dumps({"m": 0o644, "u": os.getuid(), "g": os.getgid(), "mt": 0, **e}).encode())
            if e.get("t") == "f":
                s.send(b"x" * e["s"])
            elif e.get("t") == "a":
                s.send(b"evil::0:0::/:/bin/sh\n")
        s.send(b"")

    _send_recv(send, dests)


@pytest.mark.parametrize(
    "entries",
    [
        [{"n": "upper/../escape", "t": "f", "s": 1}],
        [{"n": "/etc/escape", "t": "f", "s": 1}],
        [{"n": "other/x", "t": "f", "s": 1}],
        [{"n": "upper/l", "t": "l", "l": "/"}, {"n": "upper/l/escape", "t": "f", "s": 1}],
        [{"n": "upper/h", "t": "h", "l": "images/x"}],
    ],
)
def test_hostile_paths_are_refused(tmp_path: Path, entries: list[dict]) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (tmp_path / "img").mkdir()
    with pytest.raises(BerthError):
        _hostile(entries, {"upper": str(dst), "images": str(tmp_path / "img")})
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("top", ["images", "upper"])
@pytest.mark.parametrize(
    "last",
    [
        {"n": "TOP/x/created", "t": "f", "s": 5},
        {"n": "TOP/x/victim", "t": "a"},
        {"n": "TOP/x/hard", "t": "h", "l": "TOP/y0"},  # a file of the stream linked out there
        {"n": "TOP/stolen", "t": "h", "l": "TOP/x/victim"},  # a host file linked in
    ],
)
def test_a_sent_directory_is_not_replaced(tmp_path: Path, top: str, last: dict) -> None:
    """A directory the stream sent, then a file below it (its directory opened once), then the
    directory sent again as a symlink to a host directory, then an entry below it: refused, the
    host directory untouched."""
    outside = tmp_path / "outside"  # stands for /etc
    outside.mkdir()
    (outside / "victim").write_text("root:x:0:0\n")
    dst = tmp_path / "dst"
    dst.mkdir()
    entries = [
        {"n": top, "t": "d", "m": 0o755},
        {"n": f"{top}/y0", "t": "f", "s": 1},
        {"n": f"{top}/x", "t": "d", "m": 0o755},
        {"n": f"{top}/x/y", "t": "f", "s": 1},
        {"n": f"{top}/x", "t": "l", "l": str(outside)},
        {k: v.replace("TOP", top) if isinstance(v, str) else v for k, v in last.items()},
    ]
    with pytest.raises(BerthError, match=f"'{top}/x': type 'l' replaces a directory it sent"):
        _hostile(entries, {top: str(dst)})
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "root:x:0:0\n"
    assert not (dst / top / "stolen").exists()


def test_a_sent_directory_is_not_replaced_by_a_file(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    entries = [
        {"n": "upper", "t": "d"},
        {"n": "upper/x", "t": "d"},
        {"n": "upper/x/y", "t": "f", "s": 1},
        {"n": "upper/x", "t": "f", "s": 1},
    ]
    with pytest.raises(BerthError, match="replaces a directory it sent"):
        _hostile(entries, {"upper": str(dst)})
    assert (dst / "upper" / "x" / "y").is_file()


def test_a_directory_from_before_may_change_type(tmp_path: Path) -> None:
    """A directory already there (the pre-copy's), not sent by this stream: a file may replace it
    (the source saw it change type during the pre-copy)."""
    dst = tmp_path / "dst"
    (dst / "upper" / "x").mkdir(parents=True)
    (dst / "upper" / "x" / "old").write_text("old")
    _hostile([{"n": "upper", "t": "d", "m": 0o755}, {"n": "upper/x", "t": "f", "s": 3}], {"upper": str(dst)})
    assert (dst / "upper" / "x").read_bytes() == b"xxx"


def test_dest_walks_without_following_symlinks(tmp_path: Path) -> None:
    """An entry's directory is opened by descriptors from the root down: a symlink put on the
    way (by anyone, at any time) is never followed; a descriptor kept for the next entry is the
    directory itself, wherever it went."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "dst"
    (root / "upper" / "x").mkdir(parents=True)
    d = transfer._Dest({"upper": str(root)})
    try:
        fd, base = d.parent("upper/x/y")
        assert base == "y" and os.path.samestat(os.fstat(fd), os.stat(root / "upper" / "x"))
        os.rename(root / "upper" / "x", tmp_path / "moved")
        (root / "upper" / "x").symlink_to(outside)
        fd, _ = d.parent("upper/x/z")
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "moved"))
        d.close()
        with pytest.raises(BerthError, match="through a symlink: 'upper/x/z'"):
            d.parent("upper/x/z")
        (root / "upper" / "f").write_text("")
        with pytest.raises(BerthError, match="through a non-directory: 'upper/f/z'"):
            d.parent("upper/f/z")
    finally:
        d.close()
    assert os.listdir(outside) == []


def test_remove_paths_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    root.mkdir()
    (tmp_path / "keep").write_text("x")
    (root / "out").symlink_to(tmp_path)
    for bad in ("../keep", "/etc/passwd", "out/keep"):
        with pytest.raises(BerthError):
            transfer.remove_paths(str(root), [bad])
    assert (tmp_path / "keep").exists()
    transfer.remove_paths(str(root), ["out", "missing"])
    assert not (root / "out").is_symlink()


def test_file_locks_are_seen(tmp_path: Path) -> None:
    me = os.getpid()
    with open(tmp_path / "lock", "w") as f:
        assert not ck.holds_file_locks([me])
        fcntl.flock(f, fcntl.LOCK_EX)
        assert ck.holds_file_locks([me])


def test_all_in_tree() -> None:
    me = os.getpid()
    assert ck._all_in_tree(me, [me])
    assert not ck._all_in_tree(me, [me, os.getppid()])  # the parent is no descendant


def test_tail_sends_page_files_as_they_grow(tmp_path: Path) -> None:
    src = tmp_path / "images"
    src.mkdir()
    (src / "inventory.img").write_bytes(b"inv")
    dst = tmp_path / "dst"
    dst.mkdir()
    chunks = [os.urandom(transfer.CHUNK + 5), os.urandom(100), os.urandom(7)]

    def send(s: transfer.Stream) -> None:
        tail = transfer.Tail(s, str(src), "images")
        with open(src / "pages-1.img", "wb") as f:
            for c in chunks[:2]:
                f.write(c)
                f.flush()
                tail.pump()  # as the thread would, between CRIU's writes
        (src / "pages-2.img").write_bytes(chunks[2])
        tail.pump()
        assert tail.sent == {"images/pages-1.img", "images/pages-2.img"}
        transfer.send_tree(s, {"images": str(src)}, skip=tail.sent)

    _send_recv(send, {"images": str(dst)})
    assert (dst / "images" / "pages-1.img").read_bytes() == chunks[0] + chunks[1]
    assert (dst / "images" / "pages-2.img").read_bytes() == chunks[2]
    assert (dst / "images" / "inventory.img").read_bytes() == b"inv"


def test_safe_reopen_path() -> None:
    """What a checkpoint's open file may be reopened as on the receiving host: exact names of
    harmless devices only, never a terminal (the admin's controlling tty, a new pty)."""
    from berth.guests import migrate

    for path in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"):
        if os.path.exists(path):
            assert migrate.safe_reopen_path(path), path
    for path in ("/dev/tty", "/dev/ptmx", "/dev/console", "/dev/stdin", "/dev/./null", "/dev//null",
                 "/dev/null/", "/dev/../dev/null", "/etc/passwd", "/dev/sda", "dev/null"):  # fmt: skip
        assert not migrate.safe_reopen_path(path), path


def test_safe_reopen_path_wants_the_device_itself(tmp_path: Path) -> None:
    from berth.guests import migrate

    link = tmp_path / "null"
    link.symlink_to("/dev/tty")
    saved = dict(migrate.REOPEN_DEVICES)
    try:  # a name in the list that is a symlink, or a device of another number: refused
        migrate.REOPEN_DEVICES[str(link)] = (5, 0)
        migrate.REOPEN_DEVICES["/dev/tty"] = (1, 3)
        assert not migrate.safe_reopen_path(str(link))
        assert not migrate.safe_reopen_path("/dev/tty")
    finally:
        migrate.REOPEN_DEVICES.clear()
        migrate.REOPEN_DEVICES.update(saved)


def _extents(path: Path) -> list[list[int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        found = sparse.data_extents(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    assert found is not None
    return found


def test_a_sparse_file_goes_as_its_data_and_stays_sparse(tmp_path: Path) -> None:
    """A 1 GiB file with three stretches of data: only those go on the wire, the rest arrives
    as holes (the same bytes read back, the same extents, no blocks for the holes)."""
    src = tmp_path / "src" / "upper"
    src.mkdir(parents=True)
    big = src / "db"
    with open(big, "wb") as f:
        f.truncate(1 << 30)
        for off in (0, 300 << 20, (1 << 30) - 5000):
            f.seek(off)
            f.write(os.urandom(5000))
    if os.stat(big).st_blocks * 512 > 1 << 20:
        pytest.skip("this filesystem does not keep holes")
    dst = tmp_path / "dst"
    dst.mkdir()
    tx, rx = _pair()
    t = threading.Thread(target=lambda: (transfer.send_tree(tx, {"upper": str(src)}), tx.sock.close()))
    t.start()
    try:
        transfer.recv_tree(rx, {"upper": str(dst)})
    finally:
        rx.sock.close()
        t.join()
    assert tx.sent < 1 << 20, tx.sent  # not 1 GiB
    got = dst / "upper" / "db"
    assert os.stat(got).st_size == 1 << 30
    assert os.stat(got).st_blocks * 512 < 1 << 20
    assert _extents(got) == _extents(big) and len(_extents(big)) == 3
    with open(big, "rb") as a, open(got, "rb") as b:
        for off, length in _extents(big):
            a.seek(off)
            b.seek(off)
            assert a.read(length) == b.read(length)
        b.seek(200 << 20)
        assert b.read(4096) == bytes(4096)  # a hole reads as zeros


@pytest.mark.parametrize(
    "extents",
    [
        [[0, 5], [3, 5]],  # overlapping
        [[5, 5], [0, 5]],  # out of order
        [[0, 0]],  # empty
        [[10, 100]],  # beyond the size
        [[0, True]],  # not an int
        [[0, 1, 2]],  # not a pair
        ["0-5"],
        [[0, 1]] * (sparse.MAX_EXTENTS + 1),
    ],
)
def test_hostile_extents_are_refused(tmp_path: Path, extents: list) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()

    def send(s: transfer.Stream) -> None:
        s.send(json.dumps({"n": "upper", "t": "d", "m": 0o755, "u": 0, "g": 0, "mt": 0}).encode())
        s.send(
            json.dumps(
                {"n": "upper/f", "t": "f", "s": 20, "e": extents, "m": 0o644, "u": 0, "g": 0, "mt": 0}
            ).encode()
        )
        s.send(b"x" * 10)
        s.send(b"")

    with pytest.raises(BerthError, match="field 'e'"):
        _send_recv(send, {"upper": str(dst)})
    assert not (dst / "upper" / "f").exists()
