"""berth.cgroups.warm: it finds the caller's own cgroup.procs and its no-op attach leaves the
caller where it was."""

from __future__ import annotations

import os
import threading
from pathlib import Path

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
