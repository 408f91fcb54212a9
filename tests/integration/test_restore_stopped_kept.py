"""A guest process that was stopped (SIGSTOP) when its guest was checkpointed or migrated is
still stopped after the restore, and the others run: berth restores the guest stopped
(``criu restore --leave-stopped``), checks it (berth.runtime.ckverify) and continues only the
processes whose core image says they were running (``task_state``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import test_checkpoint
import test_migrate
from test_checkpoint import GUEST, Host, wait
from test_migrate import migrate, receiver

from helpers import cgroup_roots

hosts = test_migrate.hosts  # the two-host fixture
host_a = test_checkpoint.host_a  # one host

# A process to stop ("sleep 99999": found by its arguments), and berth's counter and echo guest.
STOPPED_GUEST = "sleep 99999 & " + GUEST


def _procs(h: Host, name: str) -> list[int]:
    for top in cgroup_roots() if len(cgroup_roots()) == 1 else [Path("/sys/fs/cgroup/pids")]:
        f = top / h.parent / name / "cgroup.procs"
        if f.exists():
            return [int(x) for x in f.read_text().split()]
    return []


def _sleeper(h: Host, name: str) -> int | None:
    for pid in _procs(h, name):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0099999\x00":
                return pid
        except OSError:
            pass
    return None


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _start(h: Host, name: str) -> int:
    """The guest (host ids, no lxcfs, no tini: as the migration tests make it) started, its
    sleep stopped; the sleep's pid."""
    h.create_plain(name, STOPPED_GUEST)
    h("start", name)
    wait(lambda: len(h.replies(name)) >= 3, what="the guest's client to get replies")
    pid = wait(lambda: _sleeper(h, name), what="the guest's sleep")
    os.kill(pid, signal.SIGSTOP)
    wait(lambda: _state(pid) == "T", what="the sleep to stop")
    return pid


def _stays_stopped(h: Host, name: str, count_at: int) -> None:
    wait(lambda: h.count(name) > count_at + 3, what="the counter to continue")
    pid = _sleeper(h, name)
    assert pid is not None, "the sleep was not restored"
    assert _state(pid) == "T", f"the stopped sleep runs after the restore ({_state(pid)})"
    # ... and it is a stopped process as any other: SIGCONT continues it.
    os.kill(pid, signal.SIGCONT)
    wait(lambda: _state(pid) == "S", what="the sleep to continue on SIGCONT")


def test_stopped_process_stays_stopped_after_restore(host_a: Host, unique: str) -> None:
    h = host_a
    name = f"{unique}-st"
    _start(h, name)
    h("checkpoint", name)
    at = h.count(name)
    h("restore", name)
    _stays_stopped(h, name, at)
    h("destroy", "--force", name)


def test_stopped_process_stays_stopped_after_migration(hosts: tuple[Host, Host], unique: str) -> None:
    a, b = hosts
    name = f"{unique}-sm"
    try:
        _start(a, name)
        at = a.count(name)
        r = receiver(b)
        out = migrate(a, name)
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert out.returncode == 0 and rc == 0, f"{out.stderr}\nreceiver: {err}"
        _stays_stopped(b, name, at)
    finally:
        b("destroy", "--force", name, check=False)
        a("destroy", "--force", name, check=False)
