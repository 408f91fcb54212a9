"""berth.cgroups.warm: it finds the caller's own cgroup.procs and its no-op attach leaves the
caller where it was."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from berth.cgroups import warm


def test_procs_file_is_the_callers_own_cgroup() -> None:
    procs = warm.procs_file()
    assert procs is not None and procs.endswith("/cgroup.procs") and os.path.exists(procs)
    assert str(os.getpid()) in Path(procs).read_text().split()


def test_warm_leaves_the_process_in_its_cgroups() -> None:
    before = Path("/proc/self/cgroup").read_text()
    threads = threading.active_count()
    done = warm.warm()
    assert done is not None and done.acquire(timeout=5)  # the thread's write is done
    procs = warm.procs_file()
    assert procs is not None and str(os.getpid()) in Path(procs).read_text().split()
    assert Path("/proc/self/cgroup").read_text() == before
    assert threading.active_count() == threads  # a bare _thread: no threading.Thread left behind


def _second_attach_ms(gap: float) -> float:
    """Milliseconds of a no-op attach ``gap`` seconds after the calling thread's last one."""
    procs = warm.procs_file()
    assert procs is not None
    fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
        time.sleep(gap)
        t = time.perf_counter()
        os.write(fd, b"0")
        return (time.perf_counter() - t) * 1000
    finally:
        os.close(fd)


def test_warm_keeps_the_lock_warm_until_settled() -> None:
    """With ``keep`` the thread goes on until settle() (or its time is up), the process where it
    was; an attach long after the first write finds the lock warm meanwhile."""
    before = Path("/proc/self/cgroup").read_text()
    done = warm.warm(keep=10.0)
    assert done is not None
    try:
        time.sleep(0.1)  # well past the ~10 ms one write keeps the lock warm
        assert not done.acquire(blocking=False), "the keeping thread ended before settle()"
        # Not a proof of the kernel's rcu_sync (a loaded host has its own writers): the attach is
        # timed against a cold one, each the minimum of a few.
        kept = min(_second_attach_ms(0.0) for _ in range(3))
    finally:
        warm.settle()
    assert done.acquire(timeout=2), "settle() did not stop the keeping thread"
    cold = min(_second_attach_ms(0.3) for _ in range(3))
    assert Path("/proc/self/cgroup").read_text() == before
    if cold < 2.0:
        pytest.skip(f"a cold attach takes {cold:.2f} ms here: nothing to keep warm")
    assert kept < cold


def test_warm_keep_is_bounded() -> None:
    done = warm.warm(keep=0.05)
    assert done is not None and done.acquire(timeout=2)  # gone on its own, without settle()


def test_settle_stops_every_keeper() -> None:
    """Two warm(keep=) without a settle() between (a batch of starts): one settle() stops both."""
    warm.settle()
    first = warm.warm(keep=0.2)
    second = warm.warm(keep=10.0)  # the first ends too soon to be enough: a second keeper
    assert first is not None and second is not None
    try:
        time.sleep(0.05)
        assert not first.acquire(blocking=False) and not second.acquire(blocking=False)
    finally:
        warm.settle()
    assert first.acquire(timeout=2) and second.acquire(timeout=2), "settle() left a keeper running"


def test_a_keeper_that_keeps_long_enough_is_not_doubled() -> None:
    """A guestd spare's keeper (berth.guests.worker.spare_waits) serves the run it is handed: the
    run's own warm(keep=) starts no second thread while it keeps ENOUGH more; after a settle()
    it does again."""
    warm.settle()
    first = warm.warm(keep=10.0)
    try:
        assert first is not None
        assert warm.warm(keep=2.0) is None
    finally:
        warm.settle()
    assert first.acquire(timeout=2)
    again = warm.warm(keep=2.0)
    try:
        assert again is not None
    finally:
        warm.settle()
    assert again.acquire(timeout=2)


@pytest.mark.skipif(os.geteuid() != 0, reason="moves the test's process between cgroups (root)")
def test_keeper_does_not_undo_a_move() -> None:
    """A process moved to another cgroup while the keeper runs stays there: the keeper stops
    instead of moving it back with its next no-op attach."""
    procs = warm.procs_file()
    assert procs is not None
    home = os.path.dirname(procs)
    other = os.path.join(home, f"berth-ut-warm-{os.getpid()}")
    os.mkdir(other)
    done = warm.warm(keep=10.0)
    assert done is not None
    try:
        time.sleep(0.05)
        Path(other, "cgroup.procs").write_text(str(os.getpid()))
        assert done.acquire(timeout=2), "the keeper went on after the process was moved"
        time.sleep(0.05)
        assert str(os.getpid()) in Path(other, "cgroup.procs").read_text().split(), "moved back"
    finally:
        warm.settle()
        Path(procs).write_text(str(os.getpid()))
        os.rmdir(other)
    assert not os.path.exists(other)
