"""berth.net.guest._starttime: how gc and the /etc writer tell a guest's init is gone."""

from __future__ import annotations

import os
import signal
import time

from berth.net.guest import _starttime


def test_live_process_has_a_start_time() -> None:
    assert _starttime(os.getpid()) is not None
    assert _starttime(os.getpid()) == _starttime(os.getpid())


def test_zombie_counts_as_gone() -> None:
    """A killed guest init stays a zombie until the host's pid 1 reaps it: its network is
    removed then, by the same gc that removed its state."""
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    try:
        assert _starttime(pid) is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _stat_state(pid) != "Z":
            assert time.monotonic() < deadline, "child did not become a zombie"
            time.sleep(0.01)
        assert _starttime(pid) is None
    finally:
        os.waitpid(pid, 0)
    assert _starttime(pid) is None


def _stat_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
