"""The guest's supervisor: enforces the limits the kernel has no knob for (ANON and MEMLOCK).

Linux-VServer limited a context's anonymous memory (ANON) and its locked memory (MEMLOCK).  The
memory cgroup limits RSS + page cache together, and ``RLIMIT_MEMLOCK`` bounds one process, not a
guest, so berth watches the guest from the outside:

* **How**: ``berth run`` waits for the guest's init on a pidfd with a 100 ms timeout instead of a
  plain ``waitpid`` (only when ``--anon-memory`` or ``--memlock`` is set: otherwise nothing
  changes).  Every 100 ms it reads the guest cgroup's ``memory.stat`` (anonymous memory:
  :func:`berth.policy.memory.anon_bytes`, ``total_rss`` on v1, ``anon`` on v2) and, for MEMLOCK,
  ``VmLck`` from ``/proc/PID/status`` of every process in the cgroup.
* **Reaction time**: an overrun is seen within one period (≤ 100 ms plus the time to read the
  files, ~1 ms for a few dozen processes) and the victim is killed at once.  Between two checks a
  guest can overshoot its ANON limit by what it allocates in 100 ms, bounded by its
  ``--memory`` limit if any.  ``RLIMIT_MEMLOCK`` (set to the MEMLOCK limit in every guest process,
  lowered to the host's hard limit) stops any *single* process from locking more, immediately.
* **What is killed**: one process per check, with SIGKILL.  ANON: the process with the largest
  anonymous RSS (``RssAnon``), the youngest on ties.  MEMLOCK:
  :func:`berth.policy.memory.memlock_victim` (largest ``VmLck``, then youngest).  The next check
  looks again, so one overrun never kills more than needed.  If the victim is the guest's init,
  the guest ends (exit status 137).
* **What is reported**: one line on berth's stderr per kill, e.g.
  ``berth: guest web: anon memory 210 MiB over its 64 MiB limit: killed pid 12 (python3)``
  (pid as seen from the host).
* **Live changes**: new limits written to state.json (``berth.limits``) by
  :func:`berth.runtime.resources.update` are picked up at the next check.
"""

from __future__ import annotations

import os
import select
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

INTERVAL = 0.1
_MIB = 1024 * 1024


def _mib(n: int) -> str:
    return f"{n / _MIB:.0f} MiB" if n >= _MIB else f"{n // 1024} KiB"


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def _proc(pid: int) -> tuple[dict[str, int], str, int] | None:
    """(numeric status fields, name, start time) of a process, None if gone."""
    from berth.policy.memory import parse_proc_status

    text = _read(f"/proc/{pid}/status")
    stat = _read(f"/proc/{pid}/stat")
    if text is None or stat is None:
        return None
    name = ""
    for line in text.splitlines():
        if line.startswith("Name:"):
            name = line.split(":", 1)[1].strip()
            break
    try:
        start = int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        start = 0
    return parse_proc_status(text), name, start


class Supervisor:
    """Checks one guest's ANON and MEMLOCK limits; :meth:`check` kills at most one process."""

    def __init__(
        self,
        name: str,
        cgroup: Any,
        limits: dict[str, int],
        *,
        state_file: str | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.cg = cgroup
        self.limits = dict(limits)
        self.state_file = state_file
        self._mtime = 0.0
        self.report = report or (lambda line: sys.stderr.write(f"berth: {line}\n"))
        self.kills: list[str] = []

    def _reload(self) -> None:
        if not self.state_file:
            return
        try:
            mtime = os.stat(self.state_file).st_mtime
        except OSError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        import json

        try:
            with open(self.state_file) as f:
                self.limits = dict((json.load(f).get("berth") or {}).get("limits") or {})
        except (OSError, ValueError):
            pass

    def _memory_stat(self) -> dict[str, int] | None:
        d = self.cg.dir("memory")
        if d is None:
            d = self.cg.unified_dir()
        text = _read(f"{d}/memory.stat") if d else None
        if text is None:
            return None
        from berth.cgroups.stats import parse_flat

        return parse_flat(text)

    def check(self) -> str | None:
        """One look at the guest; the report line if a process was killed."""
        self._reload()
        anon_limit = self.limits.get("anon")
        lock_limit = self.limits.get("memlock")
        if anon_limit is None and lock_limit is None:
            return None
        if anon_limit is not None:
            ms = self._memory_stat()
            if ms is not None:
                from berth.policy.memory import anon_bytes

                used = anon_bytes(ms)
                if used > anon_limit:
                    procs = self._processes()
                    if procs:
                        victim = max(procs, key=lambda p: (p[1].get("RssAnon", 0), p[3], p[0]))
                        pid, name = victim[0], victim[2]
                        what = f"anon memory {_mib(used)} over its {_mib(anon_limit)} limit"
                        return self._kill(pid, name, what)
        if lock_limit is not None:
            from berth.policy.memory import memlock_victim

            procs = self._processes()
            rows = [(p[0], p[1].get("VmLck", 0), p[1].get("VmRSS", 0), p[3]) for p in procs]
            pid_v = memlock_victim(lock_limit, rows)
            if pid_v is not None:
                total = sum(r[1] for r in rows)
                name = next((p[2] for p in procs if p[0] == pid_v), "")
                what = f"locked memory {_mib(total)} over its {_mib(lock_limit)} limit"
                return self._kill(pid_v, name, what)
        return None

    def _processes(self) -> list[tuple[int, dict[str, int], str, int]]:
        out = []
        for pid in self.cg.pids():
            info = _proc(pid)
            if info is not None:
                out.append((pid, info[0], info[1], info[2]))
        return out

    def _kill(self, pid: int, name: str, what: str) -> str | None:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            return None
        line = f"guest {self.name}: {what}: killed pid {pid} ({name})"
        self.kills.append(line)
        self.report(line)
        return line


def wait(pid: int, supervisor: Supervisor, interval: float = INTERVAL) -> int:
    """Wait for our child ``pid`` (the guest's init) while checking the guest every ``interval``
    seconds; its exit status (128+N when killed by signal N)."""
    from berth.runtime.container import wait_exit

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return wait_exit(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while True:
            try:
                if poller.poll(interval * 1000):
                    break
            except InterruptedError:
                continue
            try:
                supervisor.check()
            except OSError:
                pass
    finally:
        os.close(pidfd)
    return wait_exit(pid)


def supervisor_for(container: Any) -> Supervisor | None:
    """The supervisor a created container needs, None if it has no supervised limits."""
    berth = container.data.get("berth") or {}
    limits = berth.get("limits") or {}
    if not limits:
        return None
    cg = container.cgroup()
    if cg is None:
        return None
    return Supervisor(container.id, cg, limits, state_file=os.path.join(container.dir, "state.json"))
