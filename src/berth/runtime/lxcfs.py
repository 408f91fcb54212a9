"""The guest's own view of its limits: Debian's lxcfs, started on demand and bound into guests.

One lxcfs daemon per host (per mount point) serves every guest: it answers reads of
/proc/meminfo, cpuinfo, stat, uptime, loadavg, diskstats, swaps and
/sys/devices/system/cpu/online from the reading process's cgroup (memory limit, cpuset,
CFS quota) and its pid namespace's init (uptime).  Guests get read-only bind mounts of
those files over their fresh /proc and /sys.

:func:`ensure` is the supervision: it checks that the daemon's FUSE mount answers and
(re)starts it when it does not (a dead FUSE mount, ENOTCONN, is detached first); guests
started before a restart keep dead binds until they restart, as with LXC.  When lxcfs
cannot run (not installed, no /dev/fuse, the mount never appears) the guest still starts
without the views and the reason is reported.

What lxcfs cannot change: tools that ask the kernel directly instead of reading these
files still see the host: sysinfo(2) (busybox ``free``, ``uptime`` and ``top``'s header),
sched_getaffinity(2) is the cpuset itself (so ``nproc`` is right with --cpuset-cpus but not
with --cpus alone), and /proc/vmstat, /proc/zoneinfo, /proc/slabinfo are not virtualized.
"""

from __future__ import annotations

import os
import shutil

from berth.errors import UnsupportedError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_MOUNTPOINT = "/run/berth-lxcfs"
PROC_FILES = ("meminfo", "cpuinfo", "stat", "uptime", "loadavg", "diskstats", "swaps")
SYS_FILES = ("/sys/devices/system/cpu/online",)
START_TIMEOUT = 5.0
IDLE_GRACE = 60.0  # seconds a started daemon is kept before gc may stop it unused


def mounted(mountpoint: str) -> bool:
    """Is an lxcfs FUSE mount at ``mountpoint`` (in our mount namespace)?"""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            if len(fields) > 4 and fields[4] == mountpoint and post.startswith("fuse.lxcfs "):
                return True
    return False


def answers(mountpoint: str) -> bool:
    """Does the mount serve reads (a dead daemon leaves ENOTCONN)?"""
    try:
        with open(os.path.join(mountpoint, "proc", "uptime"), "rb") as f:
            return bool(f.read(64))
    except OSError:
        return False


def _pidfile(mountpoint: str) -> str:
    return mountpoint.rstrip("/") + ".pid"


def _detach(mountpoint: str) -> None:
    from berth.linux.mount import MNT_DETACH, umount

    try:
        umount(mountpoint, MNT_DETACH)
    except OSError:
        pass


def ensure(mountpoint: str = DEFAULT_MOUNTPOINT) -> str:
    """The mount point of a working lxcfs, started if need be.  Raises :class:`UnsupportedError`
    with the reason when lxcfs cannot run.

    On success this process holds a lease on the daemon (:func:`_lease`): ``berth gc``
    (:func:`stop_if_idle`) does not stop it while the process lives, or until :func:`release`,
    so a guest between this call and its binds of the files (not yet seen by :func:`users`) does
    not lose them.  The lease is taken under the point's lock (shared here, exclusive in a stop):
    a gc either sees it or has stopped the daemon before, which this call then sees."""
    if mounted(mountpoint):
        lock = _locked(mountpoint, shared=True)
        try:
            if mounted(mountpoint) and answers(mountpoint):
                _lease(mountpoint)
                return mountpoint
        finally:
            os.close(lock)
    binary = shutil.which("lxcfs") or ("/usr/bin/lxcfs" if os.path.exists("/usr/bin/lxcfs") else None)
    if binary is None:
        raise UnsupportedError("lxcfs: not installed (Debian package lxcfs): guests see the host's figures")
    if not os.path.exists("/dev/fuse"):
        raise UnsupportedError("lxcfs: no /dev/fuse on this host: guests see the host's figures")
    lock = _locked(mountpoint)
    up = False
    try:
        if mounted(mountpoint) and answers(mountpoint):
            _lease(mountpoint)
            up = True
            return mountpoint  # another berth started it meanwhile
        while mounted(mountpoint):
            _detach(mountpoint)  # a dead daemon's mount
        _stop_pid(mountpoint)
        os.makedirs(mountpoint, 0o755, exist_ok=True)
        _start(binary, mountpoint)
        _lease(mountpoint)
        up = True
        return mountpoint
    finally:
        if up:
            os.close(lock)
        else:  # it did not start: its lock file does not stay (its log does: the error names it)
            _unlock_removing(mountpoint, lock)


# -- leases: the guests being started, between ensure() and their binds -----------------------


def _leases(mountpoint: str) -> str:
    return mountpoint.rstrip("/") + ".leases"


def _lease(mountpoint: str) -> None:
    """Record this process (pid and start time) as a user of the daemon at ``mountpoint``: a
    file ``<point>.leases/<pid>`` holding its start time.  Called under the point's lock."""
    from berth.runtime.state import proc_start_time

    pid = os.getpid()
    leases = _leases(mountpoint)
    os.makedirs(leases, 0o700, exist_ok=True)
    leaseholders(mountpoint)  # the leases of gone processes go: the directory does not grow
    tmp = os.path.join(leases, f".{pid}")
    with open(tmp, "w") as f:
        f.write(str(proc_start_time(pid)))
    os.rename(tmp, os.path.join(leases, str(pid)))


def release(mountpoint: str = DEFAULT_MOUNTPOINT) -> None:
    """Give up this process's lease (its guests have bound the files, or it starts none).  A
    lease ends with its process; a caller of :func:`ensure` that lives on after its guests'
    start (a test, a library user) calls this.  Stale leases are pruned at each new lease."""
    try:
        os.unlink(os.path.join(_leases(mountpoint), str(os.getpid())))
    except FileNotFoundError:
        pass


def leaseholders(mountpoint: str = DEFAULT_MOUNTPOINT) -> list[int]:
    """The live processes holding a lease on the daemon at ``mountpoint`` (pid and start time
    as recorded: a pid reused since is not one); the leases of gone processes are removed."""
    from berth.runtime.state import proc_start_time

    leases = _leases(mountpoint)
    try:
        names = os.listdir(leases)
    except FileNotFoundError:
        return []
    live = []
    for name in names:
        path = os.path.join(leases, name)
        if not name.isdigit():
            # A lease being written (".PID"): left while its process lives (killed mid-write: not).
            if name[:1] == "." and name[1:].isdigit() and proc_start_time(int(name[1:])) is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            continue
        try:
            with open(path) as f:
                recorded = f.read().strip()
        except FileNotFoundError:
            continue
        started = proc_start_time(int(name))
        if started is not None and recorded == str(started):
            live.append(int(name))
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return sorted(live)


def _start(binary: str, mountpoint: str) -> None:
    import subprocess
    import time

    log = os.open(
        mountpoint.rstrip("/") + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
    )
    try:
        # In the foreground of its own session, so it outlives us; -l: loadavg; --enable-cfs:
        # cpuinfo and cpu/online follow the CFS quota (--cpus) as well as the cpuset.
        proc = subprocess.Popen(
            [binary, "-f", "-l", "--enable-cfs", "-p", _pidfile(mountpoint), mountpoint],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log)
    deadline = time.monotonic() + START_TIMEOUT
    while not (mounted(mountpoint) and answers(mountpoint)):
        if proc.poll() is not None:
            raise UnsupportedError(
                f"lxcfs: exited with status {proc.returncode} (see {mountpoint.rstrip('/')}.log): "
                "guests see the host's figures"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise UnsupportedError(f"lxcfs: its mount did not appear within {START_TIMEOUT:.0f}s")
        time.sleep(0.02)
    # Not waited for: it is the host's daemon now (its exit is seen by the next ensure()).
    proc.returncode = 0  # keep Popen.__del__ from warning about a running child


def _stop_pid(mountpoint: str) -> int:
    """End the daemon named in our pid file (if it is lxcfs); its pid or 0."""
    try:
        with open(_pidfile(mountpoint)) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "lxcfs":
                return 0
    except OSError:
        return 0
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return 0
    return pid


def _kill_if_lxcfs(pid: int) -> None:
    """SIGKILL ``pid`` if it is still an lxcfs (the one :func:`_stop_pid` sent SIGTERM)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "lxcfs":
                return
        os.kill(pid, 9)
    except OSError:
        pass


def _wait_gone(pid: int, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break  # our own child (a test started it)
        except ChildProcessError:
            pass
        time.sleep(0.02)


# After SIGTERM lxcfs ends its FUSE session at once but exits only when its loadavg thread (-l)
# wakes, up to 5 s later: once its mount is detached it is sent SIGKILL after this grace.
EXIT_GRACE = 0.2


def _stop_locked(mountpoint: str, timeout: float) -> None:
    """End the daemon, detach its mount, remove its files but the lock (held by the caller or
    nobody)."""
    pid = _stop_pid(mountpoint)
    _wait_gone(pid, EXIT_GRACE)
    while mounted(mountpoint):
        _detach(mountpoint)
    if pid and os.path.exists(f"/proc/{pid}"):
        _kill_if_lxcfs(pid)
        _wait_gone(pid, timeout)
    for path in (mountpoint.rstrip("/") + s for s in (".pid", ".log")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    leases = _leases(mountpoint)
    for name in os.listdir(leases) if os.path.isdir(leases) else []:
        try:
            os.unlink(os.path.join(leases, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(leases)
    except OSError:
        pass
    try:
        os.rmdir(mountpoint)
    except OSError:
        pass


def _locked(mountpoint: str, *, shared: bool = False) -> int:
    """The point's lock file, open and locked (exclusive, or ``shared``: ensure()'s look at a
    running daemon).  A stop removes the file (holding the lock), so a lock taken on a file that
    is no longer at its path (removed, or made again meanwhile) is given up and taken again on
    the file that is there."""
    import fcntl

    path = mountpoint.rstrip("/") + ".lock"
    os.makedirs(os.path.dirname(path) or "/", 0o755, exist_ok=True)
    while True:
        lock = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        held = os.fstat(lock)
        try:
            there = os.stat(path)
            if (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino):
                return lock
        except FileNotFoundError:
            pass
        os.close(lock)


def _unlock_removing(mountpoint: str, lock: int) -> None:
    """Remove the point's lock file (it is held: see :func:`_locked`), then release it."""
    try:
        os.unlink(mountpoint.rstrip("/") + ".lock")
    except FileNotFoundError:
        pass
    finally:
        os.close(lock)


def stop(mountpoint: str = DEFAULT_MOUNTPOINT, timeout: float = 5.0) -> None:
    """Stop berth's lxcfs at ``mountpoint`` and remove its files (guests lose their views)."""
    lock = _locked(mountpoint)
    try:
        _stop_locked(mountpoint, timeout)
    finally:
        _unlock_removing(mountpoint, lock)


def _device(mountpoint: str) -> str | None:
    """The major:minor of the lxcfs mount at ``mountpoint`` in our mount namespace."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            if len(fields) > 4 and fields[4] == mountpoint and post.startswith("fuse.lxcfs "):
                return fields[2]
    return None


def users(mountpoint: str = DEFAULT_MOUNTPOINT) -> int:
    """How many other mount namespaces (guests) hold binds of the lxcfs mount at ``mountpoint``."""
    dev = _device(mountpoint)
    if dev is None:
        return 0
    ours = os.stat("/proc/self/ns/mnt").st_ino
    seen = {ours}
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{pid}/mountinfo") as f:
                if any(line.split(" ", 3)[2] == dev for line in f):
                    count += 1
        except (OSError, IndexError):
            continue  # gone meanwhile, or a kernel thread
    return count


def stop_if_idle(mountpoint: str = DEFAULT_MOUNTPOINT, grace: float = IDLE_GRACE) -> str | None:
    """Stop berth's lxcfs at ``mountpoint`` when it is dead, or when no guest binds its files,
    no live process holds a lease (:func:`ensure`'s: a guest being started binds the files only
    after it returned) and it has run for ``grace`` seconds; what was done, or None.  ``berth
    gc`` calls it."""
    import time

    if not mounted(mountpoint) and not os.path.exists(_pidfile(mountpoint)):
        return None
    lock = _locked(mountpoint)  # the lock of ensure(): no start races the check
    stopped = False
    try:
        if mounted(mountpoint) and answers(mountpoint):
            try:
                age = time.time() - os.stat(_pidfile(mountpoint)).st_mtime
            except FileNotFoundError:
                age = grace
            if age < grace or leaseholders(mountpoint) or users(mountpoint):
                return None
            _stop_locked(mountpoint, 5.0)
            stopped = True
            return f"stopped lxcfs at {mountpoint} (no guest uses it)"
        _stop_locked(mountpoint, 5.0)
        stopped = True
        return f"removed a dead lxcfs mount at {mountpoint}"
    finally:
        if stopped:
            _unlock_removing(mountpoint, lock)
        else:
            os.close(lock)


def spec_mounts(mountpoint: str) -> list[dict[str, Any]]:
    """Read-only binds of the files lxcfs serves, over the guest's /proc and /sys."""
    out = []
    for name in PROC_FILES:
        out.append(f"/proc/{name}")
    out += SYS_FILES
    return [
        {
            "destination": dest,
            "type": "bind",
            "source": os.path.join(mountpoint, dest.lstrip("/")),
            "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
        }
        for dest in out
        if os.path.exists(os.path.join(mountpoint, dest.lstrip("/")))
    ]


def apply(spec: dict[str, Any], mountpoint: str) -> int:
    """Add the views to ``spec`` (after its /proc and /sys mounts); how many were added."""
    extra = spec_mounts(mountpoint)
    spec.setdefault("mounts", []).extend(extra)
    return len(extra)
