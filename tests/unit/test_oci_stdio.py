"""berth.oci.stdio: the init's stdio kept in state.json and what of a checkpoint's goes to CRIU."""

from __future__ import annotations

import os

import pytest

from berth.oci import stdio


def test_descriptors_of_a_process() -> None:
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # fd 1 a pipe, fd 0 closed; then it says so and waits
        os.dup2(w, 1)
        os.close(0)
        os.write(ready_w, b"r")
        os.read(r, 1)
        os._exit(0)
    os.close(ready_w)
    try:
        want = f"pipe:[{os.fstat(w).st_ino}]"
        assert os.read(ready_r, 1) == b"r"
        got = stdio.descriptors(pid)
        assert got[0] == "" and got[1] == want and got[2] == os.readlink("/proc/self/fd/2")
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
        for fd in (r, w, ready_r):
            os.close(fd)


def test_record_and_read_back() -> None:
    state: dict = {"id": "c"}
    stdio.record(state, "self")
    assert stdio.recorded(state) == [os.readlink(f"/proc/self/fd/{n}") if _open(n) else "" for n in range(3)]
    state2: dict = {"berth": {"cpu": {}}}
    stdio.record(state2, os.getpid())
    assert state2["berth"]["cpu"] == {} and len(state2["berth"][stdio.KEY]) == 3


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"berth": None},
        {"berth": []},
        {"berth": {}},
        {"berth": {"stdio": "pipe:[1]"}},
        {"berth": {"stdio": ["pipe:[1]", "/dev/null"]}},
        {"berth": {"stdio": ["pipe:[1]", 2, "/dev/null"]}},
        {"berth": {"stdio": ["a", "b", "c", "d"]}},
    ],
)
def test_recorded_none_for_a_state_without_them(state: dict) -> None:
    assert stdio.recorded(state) is None


def test_inherited_pipes_and_sockets_by_fd() -> None:
    descs = ["/dev/null", "pipe:[123]", "socket:[45]"]
    assert stdio.inherited(descs) == [(1, "pipe:[123]"), (2, "socket:[45]")]
    assert stdio.inherited(["pipe:[7]", "", "anon_inode:[eventfd]"]) == [(0, "pipe:[7]")]


@pytest.mark.parametrize(
    "descs",
    [
        None,
        "pipe:[1]",
        {"1": "pipe:[1]"},
        ["", "pipe:[1]x", "pipe:[]"],
        ["pipe:[1]:extRootNetNS", "pipe:[-1]", "socket:[1] "],
        ["pipe:[\uff11]", "socket:[]", "pipe:[1"],
        [1, None, ["pipe:[1]"]],
        ["/dev/null", "/dev/null", "/dev/null", "pipe:[9]"],  # fd 3 is not the caller's stdio
    ],
)
def test_inherited_ignores_what_berth_does_not_record(descs: object) -> None:
    assert stdio.inherited(descs) == []
