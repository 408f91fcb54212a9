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
