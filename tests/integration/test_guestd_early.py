"""guestd's early exits (pids it reaped before a worker told it whose they were) count for a
guest only if reaped after its run began: an orphan reparented to guestd and reaped long before,
whose pid (pids are reused: pid_max may be 32768) a new guest's init was given, is no exit of
that guest."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def _daemon(tmp_path: Path):
    from berth.guests.daemon import Daemon

    (tmp_path / ".guests").mkdir()
    return Daemon(str(tmp_path))


def _start_time(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _record(tmp_path: Path, name: str, pid: int, started_at: float) -> None:
    rec = {"status": "running", "pid": pid, "start_time": _start_time(pid), "started_at": started_at}
    (tmp_path / ".guests" / f"{name}.json").write_text(json.dumps(rec))


def test_an_exit_reaped_before_the_run_began_is_not_the_guests(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    gone: list[tuple[str, int, int | None]] = []
    d.exited = lambda name, pid, code, rec=None: gone.append((name, pid, code))  # type: ignore[method-assign]
    child = subprocess.Popen(["sleep", "30"])
    try:
        now = time.time()
        _record(tmp_path, "stale", child.pid, now)
        d.early[child.pid] = (0, now - 60)  # an earlier process of the same pid, reaped a minute ago
        d.watch("stale")
        assert gone == [] and d.guests == {child.pid: "stale"}  # followed as running
        del d.guests[child.pid]
        d.early[child.pid] = (3, now + 0.01)  # reaped after the run began: this guest's exit
        d.watch("stale")
        assert gone == [("stale", child.pid, 3)] and child.pid not in d.early
    finally:
        child.kill()
        child.wait()
