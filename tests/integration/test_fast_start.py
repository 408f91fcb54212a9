"""`berth start` through guestd's fast path (berth.guests.fastclient) starts the same guest as the
full path: same namespaces, cgroups, seccomp, capabilities and user namespace; it is taken only
when guestd runs and the guest's spec is built from its inputs as they are now, else the command
builds the spec and takes the full path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest
import test_guests
from test_guests import Guests

from helpers import timing_matters

guests = test_guests.guests  # the fixture: a test's guests, destroyed with its supervisor at teardown

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
LAUNCHER = BIN / "berth"
# The Python launcher: berth-py beside a compiled `berth` (src/berth/guests/fastclient.c), else `berth`.
PY_LAUNCHER = BIN / "berth-py" if (BIN / "berth-py").exists() else LAUNCHER
STATUS_KEYS = ("Seccomp", "NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def compiled_launcher() -> bool:
    return LAUNCHER.read_bytes()[:4] == b"\x7fELF"


def start_traced(g: Guests, *names: str) -> set[str]:
    """`berth start NAMES` by the Python launcher with ``-X importtime``: the modules it imported."""
    cmd = [sys.executable, "-X", "importtime", "-I", "-S", str(PY_LAUNCHER), "start", *names]
    r = subprocess.run(cmd, env=g.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def start_execs(g: Guests, tmp: Path, *names: str, status: int = 0) -> list[str]:
    """`berth start NAMES` by the compiled launcher under strace: the programs it executed (itself,
    then python if it handed over: an exec in the same process; guestd, if spawned, is not traced)."""
    out = tmp / "execs"
    cmd = ["strace", "-qq", "-e", "trace=execve", "-o", str(out), str(LAUNCHER), "start", *names]
    r = subprocess.run(cmd, env=g.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == status, r.stderr[-2000:]
    return [line.split('"')[1] for line in out.read_text().splitlines() if "execve(" in line and '"' in line]


def view(pid: int) -> dict[str, object]:
    """What isolates an init: its status fields, namespaces (types), cgroups and id maps."""
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
    )
    ns = {}
    for kind in ("mnt", "pid", "net", "uts", "ipc", "cgroup", "user"):
        ns[kind] = os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
    cgroups = sorted(line.split(":", 2)[1] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    return {
        "status": {k: status[k].strip() for k in STATUS_KEYS if k not in ("Uid", "Gid")},
        "ns": ns,
        "cgroup controllers": cgroups,
        "uid_map size": Path(f"/proc/{pid}/uid_map").read_text().split()[2],
        "mounts": mounts(pid),
    }


def mounts(pid: int) -> list[tuple[str, ...]]:
    """The init's mount table as its root sees it: mount point, mount options, type and the
    super block's options, without what names the guest (its layers' paths, the host ids its
    own id range maps its root to)."""
    table = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        sb = ",".join(
            o
            for o in fields[sep + 3].split(",")
            if "/" not in o and not o.startswith(("uuid=", "uid=", "gid="))
        )
        table.append((fields[4], fields[5], fields[sep + 1], sb))
    return table


def root_options(mountinfo: str) -> list[str]:
    """The super block options of the root ("/") mount in a mountinfo text."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[fields.index("-") + 3].split(",")
    raise AssertionError(f"no root mount in {mountinfo!r}")


def in_own_cgroups(g: Guests, name: str, pid: int) -> None:
    """The init is in the guest's cgroup in every hierarchy (seen from the host's cgroup namespace)."""
    want = f"/{g.env['BERTH_CGROUP_PARENT']}/{name}"
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    assert lines
    for line in lines:
        assert line.split(":", 2)[2] == want, f"{name}: {line}"


def test_fast_start_starts_the_same_guest_as_the_full_path(guests: Guests, tmp_path: Path) -> None:
    """The full path, Python's fast path and the compiled launcher's make the same guest."""
    a, b, c = guests.name("full"), guests.name("fast"), guests.name("cfast")
    for n in (a, b, c):
        guests("create", n)
    assert not guests.daemon_pid()
    assert "argparse" in start_traced(guests, a)  # no guestd yet: the full path (it spawns guestd)
    assert guests.daemon_pid()
    mods = start_traced(guests, b)  # guestd up, spec built at create: the fast path
    assert not {"argparse", "json", "socket", "tomllib"} & mods, sorted(mods)
    started = [a, b]
    if compiled_launcher() and shutil.which("strace"):
        execs = start_execs(guests, tmp_path, c)
        assert execs == [str(LAUNCHER)], execs  # no Python started
        started.append(c)
    pids = [guests.info(n)["pid"] for n in started]
    assert all(pids) and len(set(pids)) == len(pids)
    views = [view(pid) for pid in pids]
    for v in views[1:]:
        assert v == views[0], [(k, v[k], views[0][k]) for k in v if v[k] != views[0][k]]
    assert all(views[0]["ns"].values()), views[0]["ns"]  # every namespace its own, the user namespace too
    assert views[0]["status"]["Seccomp"] == "2"
    for n, pid in zip(started, pids, strict=True):
        in_own_cgroups(guests, n, pid)
        assert guests("exec", n, "--", "cat", "/proc/1/cmdline").stdout.split("\0")[0] == "init"
    # Started again while they run: nothing to do, the same inits.
    assert not {"argparse"} & start_traced(guests, *started)
    assert guests("start", *started).returncode == 0
    assert [guests.info(n)["pid"] for n in started] == pids
    guests("stop", "--timeout", "8", *started)
    assert [guests.info(n)["state"] for n in started] == ["stopped"] * len(started)


def test_compiled_launcher_hands_over_to_python(guests: Guests, tmp_path: Path) -> None:
    """What the compiled launcher does not do itself goes to the Python launcher, same words."""
    if not compiled_launcher() or not shutil.which("strace"):
        pytest.skip("berth is the Python launcher here (no C compiler at setup) or strace is missing")
    n = guests.name("hand")
    guests("create", n, "--cmd", "sleep 1000")
    py = str(BIN / "python")
    # guestd not up: Python's path spawns it
    assert start_execs(guests, tmp_path, n)[:2] == [str(LAUNCHER), py]
    guests("stop", "--timeout", "2", n)
    # not a guest: the full path's one-line error and status
    execs = start_execs(guests, tmp_path, guests.name("nope"), status=125)
    assert execs[:2] == [str(LAUNCHER), py]
    # a stale spec (edited config): handed over after the worker said so, and started
    cfg = guests.store / "guests" / n / "config.toml"
    cfg.write_text(cfg.read_text() + 'hostname = "edited"\n')
    assert start_execs(guests, tmp_path, n)[:2] == [str(LAUNCHER), py]
    assert guests("exec", n, "--", "hostname").stdout.strip() == "edited"
    guests("stop", "--timeout", "2", n)
    assert start_execs(guests, tmp_path, n) == [str(LAUNCHER)]  # built now: all in C again
    guests("stop", "--timeout", "2", n)
    r = guests("list")
    assert n in r.stdout  # other verbs: Python's


def test_a_stale_spec_takes_the_full_path(guests: Guests) -> None:
    """An edited config: the worker says stale, the command builds the spec and starts it."""
    n = guests.name("stale")
    guests("create", n, "--cmd", "sleep 1000")
    guests("start", n)  # guestd up
    guests("stop", "--timeout", "2", n)
    cfg = guests.store / "guests" / n / "config.toml"
    cfg.write_text(cfg.read_text() + 'hostname = "edited"\n')
    assert "argparse" in start_traced(guests, n)
    assert guests("exec", n, "--", "hostname").stdout.strip() == "edited"
    assert guests.record(n).get("desired") == "running"
    guests("stop", "--timeout", "2", n)
    assert not {"argparse"} & start_traced(guests, n)  # built now: fast again
    assert guests("exec", n, "--", "hostname").stdout.strip() == "edited"
    guests("stop", "--timeout", "2", n)


def test_fast_start_of_several_and_errors(guests: Guests) -> None:
    """Several guests in batches through the fast path; a guest that does not exist is the
    full path's one-line error, and nothing is started then."""
    names = [guests.name(f"m{i}") for i in range(3)]
    for n in names:
        guests("create", n, "--cmd", "sleep 1000")
    guests("list")  # guestd up
    env = {**guests.env, "BERTH_START_WORKERS": "2"}
    r = guests("start", *names, guests.name("nope"), check=False, env=env)
    assert r.returncode == 125 and len(r.stderr.strip().splitlines()) == 1, r
    assert "does not exist" in r.stderr
    assert [guests.info(n)["state"] for n in names] == ["stopped"] * 3
    guests("start", *names, env=env)
    pids = [guests.info(n)["pid"] for n in names]
    assert all(pids) and len(set(pids)) == 3
    guests("stop", "--timeout", "2", *names)


def need_real_time() -> None:
    """The spare worker's tests need a CPU of real speed: its keeper of the cgroup lock stops
    SPARE_KEEP (2 s) after its fork, and :func:`spare` tells it from a worker at work by the
    latter being done within 0.2 s.  Under an emulated CPU (``make test-v2`` under TCG, some 30
    times slower) a command's own workers outlast both windows."""
    if not timing_matters():
        pytest.skip("emulated CPU: guestd's spare-worker windows (2 s, 0.2 s) are wall-clock")


def spares(daemon: int) -> list[int]:
    """guestd's children that are guestd itself forked (its spare worker, a worker at work):
    the same command line, not a guest's init."""
    me = Path(f"/proc/{daemon}/cmdline").read_bytes()
    out = []
    for task in Path(f"/proc/{daemon}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == me:
                    out.append(int(pid))
            except OSError:
                pass  # gone meanwhile
    return out


def spare(daemon: int, other_than: int = 0) -> int:
    """The spare worker: one of :func:`spares` still there a while later (a worker at work is done
    in milliseconds), 0 if none."""
    before = set(spares(daemon)) - {other_than}
    time.sleep(0.2)
    still = sorted(before & set(spares(daemon)))
    return still[0] if len(still) == 1 else 0


def test_a_spare_worker_serves_the_next_start(guests: Guests) -> None:
    """guestd, idle, forks the next worker ahead (a spare): the next start is its request (it
    exits once done), another is forked when guestd is idle again, a start after the spare was
    killed still runs (a worker forked for it), and once commands stop a spare waits (it stays:
    test_a_waiting_spare_keeps_the_cgroup_lock_warm)."""
    need_real_time()
    n = guests.name("spare")
    guests("create", n, "--cmd", "sleep 1000")
    guests("start", n)
    guests("stop", "--timeout", "2", n)
    daemon = guests.daemon_pid()
    first = guests.wait(lambda: spare(daemon), what="a spare worker")
    guests("start", n)
    assert guests.info(n)["state"] == "running"
    guests.wait(lambda: not Path(f"/proc/{first}").exists(), what="the spare to serve and exit")
    second = guests.wait(lambda: spare(daemon, other_than=first), what="the next spare")
    os.kill(second, signal.SIGKILL)
    guests("stop", "--timeout", "2", n)
    guests("start", n)
    assert guests.info(n)["state"] == "running"
    guests("stop", "--timeout", "2", n)
    assert guests.daemon_pid() == daemon
    guests.wait(lambda: spare(daemon, other_than=second), what="a spare once the commands stop")


def _ahead(spare_pid: int) -> int:
    """The spare's init forked ahead (berth.runtime.zygote): its one child, pid 1 of a pid
    namespace of its own; 0 if it has none (yet)."""
    kids = Path(f"/proc/{spare_pid}/task/{spare_pid}/children").read_text().split()
    if len(kids) != 1:
        return 0
    status = Path(f"/proc/{kids[0]}/status").read_text()
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[1:]
    assert nspid[-1] == "1" and len(nspid) == 2, nspid
    return int(kids[0])


def test_a_spare_forks_the_next_init_ahead(guests: Guests) -> None:
    """The spare forks the next guest's init ahead, as pid 1 of a new pid namespace: a guest
    without a user namespace gets it as its init (the start forks nothing), isolated as ever; a
    guest with one gets a forked init, the one made ahead is ended; none is left behind."""
    need_real_time()
    n, u = guests.name("ahead"), guests.name("own-userns")
    guests("create", n, "--cmd", "sleep 1000", "--userns", "host")
    guests("create", u, "--cmd", "sleep 1000")  # --userns auto: pid 1 must be its user namespace's
    guests("start", n)
    guests("stop", "--timeout", "2", n)
    daemon = guests.daemon_pid()
    first = guests.wait(lambda: spare(daemon), what="a spare worker")
    ahead = guests.wait(lambda: _ahead(first), what="the spare's init forked ahead")
    assert Path(f"/proc/{ahead}/cgroup").read_text() == Path(f"/proc/{daemon}/cgroup").read_text()
    guests("start", n)
    pid = guests.record(n)["pid"]
    assert pid == ahead  # the guest's init is the one forked ahead
    v = view(pid)
    assert v["ns"] == {
        "mnt": True,
        "pid": True,
        "net": True,
        "uts": True,
        "ipc": True,
        "cgroup": True,
        "user": False,
    }
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    # Docker's profile and capabilities, no_new_privs: as a forked init's
    assert (status["Seccomp"], status["NoNewPrivs"], status["CapEff"]) == (
        "2",
        "1",
        "00000000a80425fb",
    ), status
    assert all(line.endswith(f"/{n}") for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines())
    out = guests("exec", n, "--", "cat", "/proc/1/comm").stdout  # pid 1 there: the guest's init
    assert out == Path(f"/proc/{pid}/comm").read_text()

    second = guests.wait(lambda: spare(daemon, other_than=first), what="the next spare")
    unused = guests.wait(lambda: _ahead(second), what="the next init forked ahead")
    guests("start", u)
    assert guests.record(u)["pid"] != unused
    assert not Path(f"/proc/{unused}").exists()  # ended and reaped by the worker
    # a host-network guest (its init gets a Landlock scope, whose binding the worker imports only
    # for it, after the fork ahead: the init imports it too, before pivot_root)
    h = guests.name("host-net")
    guests("create", h, "--cmd", "sleep 1000", "--userns", "host", "--net", "host")
    third = guests.wait(lambda: spare(daemon, other_than=second), what="a third spare")
    ahead = guests.wait(lambda: _ahead(third), what="its init forked ahead")
    guests("start", h)
    assert guests.record(h)["pid"] == ahead and guests.info(h)["state"] == "running"
    guests("stop", "--timeout", "2", n, u, h)
    fourth = guests.wait(lambda: spare(daemon, other_than=third), what="a spare once the commands stop")
    ahead = guests.wait(lambda: _ahead(fourth), what="its init forked ahead")
    os.kill(fourth, signal.SIGKILL)
    # no init forked ahead outlives its spare (the end of its socket: it exits, guestd reaps it)
    guests.wait(
        lambda: not Path(f"/proc/{ahead}").exists(), what="the init forked ahead to end with its spare"
    )


def _dirty(pid: int) -> tuple[int, int]:
    """A process's private dirty and anonymous memory (kB)."""
    rows = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(rows["Private_Dirty"].split()[0]), int(rows["Anonymous"].split()[0])


def test_a_spare_copies_ahead_only_the_pages_its_kind_wrote(guests: Guests) -> None:
    """guestd's workers and the inits forked ahead record the pages they wrote (berth.runtime.pages):
    a spare and its init copy those ahead, not all of guestd's (a spare that waits however long
    all is quiet holds its own copy of those alone); a new guestd does not use an old one's
    records (other addresses), nor leaves a killed recorder's temporary."""
    need_real_time()
    from berth.runtime import pages

    n = guests.name("pages")
    guests("create", n, "--cmd", "sleep 1000", "--userns", "host")
    for _ in range(2):  # the second start's init is one forked ahead: it records what it wrote
        guests("start", n)
        guests("stop", "--timeout", "2", n)
    home = guests.run_root / ".guests"
    for record in (pages.WORKERS, pages.INITS):
        got = pages.load(str(home / record))
        assert got is not None and len(got) >= 2, record
    daemon = guests.daemon_pid()
    first = guests.wait(lambda: spare(daemon), what="a spare worker")
    # its keeping thread starts once its pages are copied
    guests.wait(lambda: len(list(Path(f"/proc/{first}/task").iterdir())) == 2, what="the spare's copy")
    own, anon = _dirty(first)
    assert own < 0.75 * anon, (own, anon)  # all of them: ~anon

    # a new guestd: an old record (here one with a range no process maps) is not merged into its own
    test_guests.kill_daemons(guests.run_root)
    guests.wait(lambda: not test_guests._daemons(guests.run_root), what="guestd to end")
    stale = array("Q", [pages.PAGE, 2 * pages.PAGE])
    (home / pages.WORKERS).write_bytes(stale.tobytes())
    (home / f"{pages.WORKERS}.99999999").write_bytes(b"")  # a killed recorder's temporary
    guests("start", n)
    assert guests.daemon_pid() not in (0, daemon)
    assert not (home / f"{pages.WORKERS}.99999999").exists()
    got = guests.wait(lambda: pages.load(str(home / pages.WORKERS)), what="the new guestd's record")
    assert list(got[:2]) != list(stale), list(got[:4])
    guests("stop", "--timeout", "2", n)


def test_a_start_refused_after_the_hand_over_ends_the_init_made_ahead(guests: Guests) -> None:
    """The init made ahead is handed its container before the cgroup is made (it joins it at the
    worker's word): a limit the kernel refuses then (cpuset.cpus outside the parent's) fails the
    start with one line, and leaves neither that init, nor the cgroup, nor a running record."""
    need_real_time()
    cpuset = Path("/sys/fs/cgroup/cpuset")
    if not (cpuset / "cpuset.cpus").exists() or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs the v1 cpuset hierarchy and two CPUs")
    ok, bad = guests.name("ok"), guests.name("cpuset")
    guests("create", ok, "--cmd", "sleep 1000", "--userns", "host")
    guests("create", bad, "--cmd", "sleep 1000", "--userns", "host", "--cpuset-cpus", "1")
    parent = cpuset / guests.env["BERTH_CGROUP_PARENT"]
    guests("start", ok)  # guestd up, the parent made; then CPU 0 alone for the guests under it
    (parent / ok / "cpuset.cpus").write_text("0")
    (parent / "cpuset.cpus").write_text("0")
    daemon = guests.daemon_pid()
    first = guests.wait(lambda: spare(daemon), what="a spare worker")
    ahead = guests.wait(lambda: _ahead(first), what="the spare's init forked ahead")
    time.sleep(0.3)  # its pages copied: it is ready to be handed a container
    r = guests("start", bad, check=False)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cpuset" in lines[0], r.stderr
    guests.wait(lambda: not Path(f"/proc/{ahead}").exists(), what="the init made ahead to be ended")
    assert not (parent / bad).exists()
    assert guests.info(bad)["state"] == "stopped"
    guests("stop", "--timeout", "2", ok)  # (the emptied parent goes with it)


def test_a_busy_exit_worker_does_not_hold_up_the_spares_request(guests: Guests) -> None:
    """A worker forked while a spare waits (here: the exit worker of a guest whose lock is held)
    must not keep the spare's socket open: the next start, handed to the spare, runs at once."""
    need_real_time()
    from berth.guests.store import Lock

    x, y = guests.name("exits"), guests.name("next")
    guests("create", x, "--cmd", "sleep 0.8")
    guests("create", y, "--cmd", "sleep 1000")
    guests("start", x)
    pid = guests.record(x)["pid"]
    daemon = guests.daemon_pid()
    held = Lock(str(guests.store / "guests" / ".locks" / x), x, 10)
    held.acquire()
    try:
        first = guests.wait(lambda: spare(daemon), what="a spare worker")
        guests.wait(lambda: not Path(f"/proc/{pid}").exists(), what=f"{x}'s init to end")
        time.sleep(0.1)  # its exit worker is forked now, waiting for the lock we hold
        t = time.monotonic()
        guests("start", y, timeout=30)
        assert time.monotonic() - t < 10
        assert guests.info(y)["state"] == "running"
        assert not Path(f"/proc/{first}").exists()  # the spare took the request and is done
    finally:
        held.release()
    guests.wait(lambda: guests.record(x).get("status") == "stopped", what=f"{x} recorded stopped")
    guests("stop", "--timeout", "2", y)


def _attach_ms(quiet: float) -> float:
    """Milliseconds of a no-op attach of this process (into its own cgroup, as berth.cgroups.warm)
    after ``quiet`` seconds without one of ours."""
    from berth.cgroups import warm

    procs = warm.procs_file()
    assert procs is not None
    time.sleep(quiet)
    fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
    try:
        t = time.perf_counter()
        os.write(fd, b"0")
        return (time.perf_counter() - t) * 1000
    finally:
        os.close(fd)


def test_a_waiting_spare_keeps_the_cgroup_lock_warm(guests: Guests) -> None:
    """A spare worker keeps the cgroup lock warm while it waits (a thread of no-op attaches of its
    own, where it is: guestd's cgroups), so the next start makes its guest's cgroup without
    waiting out the grace period of a cold lock; it serves that start as before, and with it its
    keeper is gone.  The next spare's keeper stops SPARE_KEEP after its fork, the spare stays.
    (berth.guests.worker.spare_waits)"""
    need_real_time()
    n = guests.name("warm")
    guests("create", n, "--cmd", "sleep 1000")
    guests("start", n)
    guests("stop", "--timeout", "2", n)
    daemon = guests.daemon_pid()
    first = guests.wait(lambda: spare(daemon), what="a spare worker")
    assert len(list(Path(f"/proc/{first}/task").iterdir())) == 2  # the spare and its keeping thread
    assert Path(f"/proc/{first}/cgroup").read_text() == Path(f"/proc/{daemon}/cgroup").read_text()
    # Each attach 50 ms after our last (ours alone would have let the lock go cold): the minimum
    # of a few, against cold ones once no spare is left (a loaded host has writers of its own).
    kept = min(_attach_ms(0.05) for _ in range(3))
    guests("start", n)
    assert guests.info(n)["state"] == "running"
    guests.wait(lambda: not Path(f"/proc/{first}").exists(), what="the spare to serve and exit")
    guests("stop", "--timeout", "2", n)
    second = guests.wait(lambda: spare(daemon, other_than=first), what="the next spare")
    guests.wait(
        lambda: len(list(Path(f"/proc/{second}/task").iterdir())) == 1, what="its keeper to stop", timeout=10
    )
    assert spare(daemon) == second  # it stays, without its keeper
    cold = min(_attach_ms(0.3) for _ in range(3))
    if cold < 2.0:
        pytest.skip(
            f"a cold attach takes {cold:.2f} ms here (other writers, or favordynmods): nothing to keep warm"
        )
    assert kept < cold / 2, (kept, cold)


def test_only_a_thrown_away_upper_layer_is_volatile(guests: Guests) -> None:
    """berth run's overlay (its upper layer in the state dir, removed with the guest) skips
    overlayfs's syncs (the sync of the whole upper file system at the guest's end); a guest's
    own upper layer, kept across its starts, does not."""
    g = guests.name("keep")
    guests("create", g)
    guests("start", g)
    pid = guests.info(g)["pid"]
    kept = root_options(Path(f"/proc/{pid}/mountinfo").read_text())
    assert not [o for o in kept if "volatile" in o], kept
    guests("stop", "--timeout", "8", g)
    r = guests("run", "--rm", "--userns", "host", "--", "cat", "/proc/self/mountinfo")
    assert [o for o in root_options(r.stdout) if "volatile" in o], r.stdout  # "fsync=volatile" (6.x)
