"""lxcfs views (``berth run --lxcfs``): the guest's /proc files show its own limits.

The daemon is started on demand by berth at ``$BERTH_LXCFS``; here that is
``/run/<prefix>-lxcfs``, stopped by the module fixture at teardown (before the session's
leak check, which would report a mount carrying the prefix).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from berth.runtime import lxcfs


@pytest.fixture(scope="module")
def lxcfs_point(prefix):
    if shutil.which("lxcfs") is None and not os.path.exists("/usr/bin/lxcfs"):
        pytest.skip("lxcfs is not installed (Debian package lxcfs)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    point = f"/run/{prefix}-lxcfs"
    yield point
    lxcfs.stop(point)
    assert not lxcfs.mounted(point)
    assert not os.path.exists(point + ".lock")


@pytest.fixture
def env(berth_env, lxcfs_point, tmp_path):
    d = tmp_path  # --userns auto: the guest's mapped root must search its state root (see test_userns)
    while str(d) not in ("/", "/tmp"):
        os.chmod(d, os.stat(d).st_mode | 0o011)
        d = d.parent
    berth_env["BERTH_LXCFS"] = lxcfs_point
    return berth_env


def meminfo_total(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise AssertionError(f"no MemTotal in {text!r}")


def host_uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


@pytest.mark.parametrize("userns", ["host", "auto"])
@pytest.mark.parametrize("cpu", [("--cpuset-cpus", "0"), ("--cpus", "1")])
def test_own_limits(berth, env, userns, cpu):
    host_total = meminfo_total(Path("/proc/meminfo").read_text())
    res = berth(
        "--lxcfs", "--userns", userns, "--memory", "256M", *cpu, "--",
        "sh", "-c", "cat /proc/meminfo; echo nproc: $(nproc); echo online: $(cat /sys/devices/system/cpu/online); "
        "echo cpuinfo: $(grep -c ^processor /proc/cpuinfo); echo uptime: $(cat /proc/uptime); "
        "grep -c lxcfs /proc/self/mountinfo",
    )  # fmt: skip
    assert res.returncode == 0, res
    assert res.stderr == "", res
    assert meminfo_total(res.stdout) == 256 * 1024, res
    assert res.field("online") == "0"
    assert res.field("cpuinfo") == "1"
    if cpu[0] == "--cpuset-cpus":
        assert res.field("nproc") == "1"  # sched_getaffinity: the cpuset (lxcfs not involved)
    guest_up = float(res.field("uptime").split()[0])
    assert guest_up < 30 < host_uptime() or guest_up < host_uptime(), res
    # The host's own views are untouched.
    assert meminfo_total(Path("/proc/meminfo").read_text()) == host_total
    assert host_total != 256 * 1024


def test_off_by_default(berth, env):
    res = berth("--memory", "256M", "--", "sh", "-c", "cat /proc/meminfo")
    assert meminfo_total(res.stdout) == meminfo_total(Path("/proc/meminfo").read_text())


def test_busybox_free_still_host(berth, env):
    """busybox free asks sysinfo(2), which lxcfs cannot change: documented, asserted here."""
    res = berth("--lxcfs", "--memory", "256M", "--", "free", "-k")
    mem = next(ln for ln in res.lines() if ln.startswith("Mem:"))
    assert int(mem.split()[1]) > 256 * 1024, res


def test_restarted_when_dead(berth, env, lxcfs_point):
    """ensure() is the supervision: a killed daemon is replaced on the next guest start."""
    lxcfs.ensure(lxcfs_point)
    lxcfs.release(lxcfs_point)  # (this process starts no guest: its lease would keep gc off)
    pid = int(Path(lxcfs_point + ".pid").read_text())
    os.kill(pid, 9)
    try:
        os.waitpid(pid, 0)  # started by ensure() above: our child
    except ChildProcessError:
        pass
    res = berth("--lxcfs", "--memory", "256M", "--", "cat", "/proc/meminfo")
    assert res.returncode == 0, res
    assert meminfo_total(res.stdout) == 256 * 1024, res
    assert int(Path(lxcfs_point + ".pid").read_text()) != pid


def test_unavailable_still_starts(berth, berth_env):
    berth_env["BERTH_LXCFS"] = "/proc/berth-nowhere/lxcfs"
    res = berth("--lxcfs", "--", "echo", "started")
    assert res.returncode == 0, res
    assert res.stdout.strip() == "started"
    assert res.error_line().startswith("berth: warning:")


def test_gc_stops_it_once_unused(env, background, lxcfs_point):
    """`berth gc` stops the daemon only when no guest binds its files any more (and not within
    its start-up grace period, when a guest may be about to bind them)."""
    g = background("--lxcfs", "--", "sh", "-c", "echo up; exec sleep 60")
    g.wait_for("^up$")
    assert lxcfs.users(lxcfs_point) >= 1
    assert lxcfs.stop_if_idle(lxcfs_point, grace=0) is None
    assert lxcfs.answers(lxcfs_point)
    g.proc.terminate()  # forwarded to the guest
    g.finish()
    assert lxcfs.stop_if_idle(lxcfs_point) is None  # just started: within the grace period
    assert lxcfs.users(lxcfs_point) == 0
    assert lxcfs.stop_if_idle(lxcfs_point, grace=0) == f"stopped lxcfs at {lxcfs_point} (no guest uses it)"
    assert not lxcfs.mounted(lxcfs_point)
    assert not os.path.exists(lxcfs_point + ".pid")
    assert not os.path.exists(lxcfs_point + ".lock")  # the lock file goes with the daemon
    assert not os.path.exists(lxcfs_point + ".leases")
    assert lxcfs.stop_if_idle(lxcfs_point, grace=0) is None  # nothing left to do


STARTER = """
import sys
from berth.runtime import lxcfs
lxcfs.ensure(sys.argv[1])
if sys.argv[2] == "release":
    lxcfs.release(sys.argv[1])
print("ensured", flush=True)
sys.stdin.read()  # a guest being started: it binds the files later (here: never)
"""


def test_gc_spares_a_guest_being_started(env, lxcfs_point):
    """A starter between its ensure() and its guest's binds is not seen by users() (no mount
    namespace binds the files yet): its lease (pid and start time, under the point's lock)
    keeps `berth gc` from stopping the daemon under it.  The lease ends with its process or
    its release(); a lease whose process is gone (or whose pid was reused) counts for nothing."""
    import subprocess
    import sys

    def starter(mode: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", STARTER, lxcfs_point, mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert p.stdout is not None and p.stdout.readline().strip() == "ensured"
        return p

    def end(p: subprocess.Popen[str]) -> None:
        assert p.stdin is not None
        p.stdin.close()
        assert p.wait(15) == 0

    p = starter("hold")
    try:
        assert lxcfs.users(lxcfs_point) == 0  # nothing binds the files yet
        assert lxcfs.leaseholders(lxcfs_point) == [p.pid]
        assert lxcfs.stop_if_idle(lxcfs_point, grace=0) is None
        assert lxcfs.answers(lxcfs_point)
    finally:
        end(p)
    # Its process gone: its lease counts for nothing (and a forged one, with a live pid but
    # another start time, neither), and gc stops the daemon.
    stale = Path(lxcfs_point + ".leases") / str(os.getpid())
    stale.write_text("1")
    assert lxcfs.leaseholders(lxcfs_point) == []
    assert not stale.exists()
    # A new lease prunes those of gone processes, and a gone writer's half-written one.
    dead = subprocess.Popen(["true"])
    dead.wait()
    leases = Path(lxcfs_point + ".leases")
    leases.mkdir(mode=0o700, exist_ok=True)
    left = [leases / str(dead.pid), leases / f".{dead.pid}"]
    for f in left:
        f.write_text("1")
    p = starter("release")  # released at once: no lease left behind
    try:
        assert not any(f.exists() for f in left), "a new lease left the stale ones"
        assert lxcfs.leaseholders(lxcfs_point) == []
        assert (
            lxcfs.stop_if_idle(lxcfs_point, grace=0) == f"stopped lxcfs at {lxcfs_point} (no guest uses it)"
        )
    finally:
        end(p)
    assert not lxcfs.mounted(lxcfs_point)
    assert not os.path.exists(lxcfs_point + ".leases")
    assert not os.path.exists(lxcfs_point + ".lock")


def test_gc_removes_a_dead_mount(env, lxcfs_point):
    lxcfs.ensure(lxcfs_point)
    pid = int(Path(lxcfs_point + ".pid").read_text())
    os.kill(pid, 9)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    assert lxcfs.mounted(lxcfs_point) and not lxcfs.answers(lxcfs_point)
    assert lxcfs.stop_if_idle(lxcfs_point) == f"removed a dead lxcfs mount at {lxcfs_point}"
    assert not lxcfs.mounted(lxcfs_point)
    assert not os.path.exists(lxcfs_point + ".lock")


def test_failed_start_leaves_no_lock(prefix, tmp_path):
    """An lxcfs that cannot start (its point is a file) fails and leaves no lock file behind; a
    lock taken on a removed lock file is taken again on the new one."""
    point = tmp_path / f"{prefix}-file"
    point.write_text("")
    with pytest.raises(FileExistsError):
        lxcfs.ensure(str(point))
    assert not os.path.exists(f"{point}.lock")
    assert point.read_text() == ""
    other = str(tmp_path / f"{prefix}-point")
    fd = lxcfs._locked(other)
    os.unlink(other + ".lock")  # as a stop does, holding it
    os.close(fd)
    fd2 = lxcfs._locked(other)
    try:
        assert os.fstat(fd2).st_ino == os.stat(other + ".lock").st_ino
    finally:
        lxcfs._unlock_removing(other, fd2)
    assert not os.path.exists(other + ".lock")
