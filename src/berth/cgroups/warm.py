"""Overlap the kernel's wait of a container's first cgroup attach with the starter's own work.

Every write to a ``cgroup.procs`` file takes the kernel's global ``cgroup_threadgroup_rwsem`` for
writing.  Its first writer after a quiet spell waits an RCU grace period (rcu_sync: ~10–20 ms on
this kind of host); writers within about a grace period after the last one do not.  A container's
init attaches itself (every v1 hierarchy, then cgroup2) before it makes its namespaces, so that
wait sits on the start's critical path.

:func:`warm` moves the calling process into the cgroup it is in already (a no-op for the
cgroups) from a new thread, at once: the grace period then passes while the caller goes on
preparing the container (reading its spec, making and limiting its cgroup), and the init's
attach, which still happens before anything of the guest runs, finds the lock warm.  Nothing
about where the container's processes are or when changes.  Best effort: any failure is ignored.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def procs_file() -> str | None:
    """The ``cgroup.procs`` of the caller's own cgroup in one hierarchy (a v1 controller's, or
    cgroup2's on a cgroup2-only host), None if none is found."""
    try:
        with open("/proc/self/cgroup", "rb") as f:
            lines = f.read().decode().splitlines()
    except OSError:
        return None
    for line in lines:
        _hid, controllers, path = line.split(":", 2)
        if controllers and not controllers.startswith("name="):  # a v1 hierarchy
            top = f"/sys/fs/cgroup/{controllers.split(',')[0]}"
        elif not controllers and os.path.exists("/sys/fs/cgroup/cgroup.procs"):  # cgroup2 only
            top = "/sys/fs/cgroup"
        else:
            continue
        procs = f"{top}{path}/cgroup.procs"
        if os.path.exists(procs):
            return procs
    return None


#: Seconds between the no-op attaches that keep the lock warm (:func:`warm` with ``keep``): the
#: kernel lets it go cold again one to two grace periods after its last writer (~10 ms here).
KEEP_EVERY = 0.004
#: The stop flags of the keeping threads not settled yet (a flag is a list: non-empty = stop).
_live: list[list[bool]] = []
#: Until when (time.monotonic) a keeping thread not settled yet keeps the lock warm.
_kept_until = 0.0
#: A keeping thread that goes on for this long (s) is enough for a container's creation.
ENOUGH = 0.5


def _own_cgroups() -> bytes:
    try:
        with open("/proc/self/cgroup", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _move_self(procs: str, done: Any, keep: float = 0.0, stop: list[bool] | None = None) -> None:
    import _thread

    # On a v1 hierarchy this thread alone (its tid in ``tasks``: an explicit id takes the global
    # lock, "0" there would not), so a supervisor's move of the process between our check and a
    # write leaves the process where it was moved (only this thread, about to end, goes back);
    # on cgroup2 (no ``tasks``) the process ("0": the writer's own, into the cgroup it is in).
    tasks = os.path.join(os.path.dirname(procs), "tasks")
    me = str(_thread.get_native_id()).encode()
    target, data = (tasks, me) if os.path.exists(tasks) else (procs, b"0")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
            if keep > 0 and stop is not None:
                import time

                where = _own_cgroups()
                end = time.monotonic() + keep
                while not stop and time.monotonic() < end:
                    time.sleep(KEEP_EVERY)
                    # Moved meanwhile (a supervisor, a test): a write would move it back.
                    if stop or _own_cgroups() != where:
                        break
                    os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        pass
    finally:
        done.release()


def warm(keep: float = 0.0) -> Any:
    """Start the no-op attach in a thread and return at once (see the module's docstring): a
    lock released when the thread is done (None if there was nothing to do).

    ``keep``: seconds to keep the lock warm after that (a no-op attach every
    :data:`KEEP_EVERY`, stopped early if the process is moved to another cgroup), until
    :func:`settle`: for a caller whose container's first attach may come later than the lock
    stays warm after a single write (a loaded host, a slow start).  Each write blocks the
    host's forks for its duration, so callers keep it only around a container's creation.
    Nothing is started (None) if a keeping thread of this process keeps it for ``keep`` or
    :data:`ENOUGH` more already (a guestd spare's, berth.guests.worker.spare_waits, for the run
    it was handed)."""
    import _thread
    import time

    global _kept_until
    if keep > 0 and _live and _kept_until >= time.monotonic() + min(keep, ENOUGH):
        return None
    procs = procs_file()
    if procs is None:
        return None
    stop: list[bool] = []
    if keep > 0:
        _live.append(stop)
        _kept_until = max(_kept_until, time.monotonic() + keep)
    done = _thread.allocate_lock()
    done.acquire()
    _thread.start_new_thread(_move_self, (procs, done, keep, stop))
    return done


def settle() -> None:
    """Stop every keeping thread (the container's init has attached itself)."""
    global _kept_until
    _kept_until = 0.0
    while _live:
        _live.pop().append(True)
