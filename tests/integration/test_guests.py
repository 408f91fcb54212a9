"""The guest manager on the real kernel: lifecycle, supervision that survives the manager,
exec/enter, set, clone, disk quota, bad input and crashes at several points.

Each test gets its own state root, cgroup parent and supervisor (``berth_env``); the store is
shared by the session (the template is built once), so guest names carry the test's unique tag.
Teardown destroys every guest, kills the test's supervisor by pid and runs ``berth gc``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import cgroup_roots, timing_matters

REPO = Path(__file__).resolve().parents[2]


def berth_cmd() -> list[str]:
    return [str(REPO / ".venv" / "bin" / "berth")]


def cgroup_dirs(parent: str) -> list[Path]:
    found: list[Path] = []
    for top in cgroup_roots():
        base = top / parent
        if base.is_dir():
            found += [p for p in base.rglob("*") if p.is_dir()]
    return found


class Guests:
    def __init__(self, env: dict[str, str], tag: str) -> None:
        self.env = env
        self.tag = tag
        self.store = Path(env["BERTH_ROOT"])
        self.run_root = Path(env["BERTH_RUN"])

    def name(self, short: str) -> str:
        return f"{self.tag}-{short}"

    def __call__(self, *args: str, check: bool = True, timeout: float = 60, env: dict | None = None):
        if args[:1] == ("create",) and not any(a.split("=", 1)[0] in ("--net", "--network") for a in args):
            # guests default to --net bridge (berth0 on the host): these tests need no network
            args = ("create", *args[1:2], "--net", "none", *args[2:])
        p = subprocess.run(
            [*berth_cmd(), *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"berth {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def info(self, name: str) -> dict:
        return json.loads(self("info", name, "--json").stdout)

    def record(self, name: str) -> dict:
        try:
            return json.loads((self.run_root / ".guests" / f"{name}.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def daemon_pid(self) -> int:
        try:
            return int((self.run_root / ".guests" / "guestd.pid").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def mine(self) -> list[str]:
        d = self.store / "guests"
        return sorted(n for n in os.listdir(d) if self.tag in n) if d.is_dir() else []

    def wait(self, cond, timeout: float = 15, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _daemons(run_root: Path) -> list[int]:
    """Pids of the supervisors serving this test's state root (found by their command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"guests/daemon.py") for a in argv) and os.fsencode(run_root) in argv:
                pids.append(int(entry))
    return pids


def kill_daemons(run_root: Path) -> None:
    """SIGKILL the supervisors of this test's state root and their workers (one that ends with
    another is gone already: a spare's init forked ahead ends with the spare)."""
    for pid in _daemons(run_root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def userns_ready(env: dict[str, str]) -> str:
    """What guests of ``berth create`` (unprivileged by default: --userns auto) need of the test's
    dirs: their mapped root reaches its state dir and its writable layer in the store (berth's
    /run/berth and /var/lib/berth are searchable; pytest's tmp dirs and the session's mkdtemp
    store are 0700: opened for search, not reading).  lxcfs (on by default for created guests)
    at a point named after the session's prefix, stopped by :func:`lxcfs_stop`; returns it."""
    for top in (Path(env["BERTH_RUN"]).parent, Path(env["BERTH_ROOT"])):
        d = top
        while str(d) not in ("/", "/tmp"):
            if d.exists():
                os.chmod(d, os.stat(d).st_mode | 0o011)
            d = d.parent
    prefix = env["BERTH_CGROUP_PARENT"].split("/")[0]
    env["BERTH_LXCFS"] = f"/run/{prefix}-lxcfs"
    return env["BERTH_LXCFS"]


def lxcfs_stop(point: str) -> None:
    from berth.runtime import lxcfs

    lxcfs.stop(point)


@pytest.fixture
def guests(berth_env: dict[str, str], unique: str, check_clean):
    g = Guests(berth_env, unique)
    point = userns_ready(berth_env)
    yield g
    for name in g.mine():
        if not name.startswith("."):
            g("destroy", "--force", name, check=False)
    kill_daemons(g.run_root)
    g("gc", check=False)
    for entry in g.mine():  # half-made guests (.new-*) of this test: gc removes them
        raise AssertionError(f"left in the store: {entry}")
    g.wait(lambda: not cgroup_dirs(berth_env["BERTH_CGROUP_PARENT"]), what="cgroups to go")
    lxcfs_stop(point)
    check_clean()
    assert not [
        ln
        for ln in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
        if unique in ln
    ]


def test_app_guest_round_trip(guests: Guests) -> None:
    n = guests.name("app")
    guests("create", n, "--cmd", "sh -c 'echo hello-from-guest; exec sleep 1000'")
    assert guests.info(n)["state"] == "stopped"
    guests("start", n)
    info = guests.info(n)
    assert info["state"] == "running"
    assert info["kind"] == "application"
    guests.wait(lambda: "hello-from-guest" in guests("logs", n).stdout, what="log line")
    # exec sees the guest's pid namespace and root
    out = guests(
        "exec", n, "--", "sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; ls /"
    ).stdout
    lines = out.splitlines()
    assert int(lines[0]) < 20
    assert "sleep 1000" in lines[1]
    assert lines[2] == n
    assert "proc" in out
    assert "work" not in out
    # a persistent root filesystem: survives a restart
    guests("exec", n, "--", "sh", "-c", "echo kept > /root/mark")
    guests("restart", n, "--timeout", "5")
    assert guests("exec", n, "--", "cat", "/root/mark").stdout.strip() == "kept"
    rows = json.loads(guests("list", "--json").stdout)
    assert [r["state"] for r in rows if r["name"] == n] == ["running"]
    r = guests("exec", n, "--", "sh", "-c", "exit 7", check=False)
    assert r.returncode == 7
    p = subprocess.run([*berth_cmd(), "enter", n], input="echo in-$(hostname); exit 3\n", env=guests.env,
                       capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert p.returncode == 3
    assert f"in-{n}" in p.stdout
    t = time.monotonic()
    guests("stop", n, "--timeout", "5")
    assert time.monotonic() - t < 5 or not timing_matters()
    assert guests.info(n)["state"] == "stopped"
    guests("destroy", n)
    assert not guests.mine()


def test_system_guest_boots_busybox_init(guests: Guests) -> None:
    n = guests.name("sys")
    guests("create", n)
    guests("start", n)
    out = guests("exec", n, "--", "cat", "/proc/1/cmdline").stdout
    assert out.split("\0")[0] == "init"
    assert guests.info(n)["kind"] == "system"
    t = time.monotonic()
    guests("stop", n, "--timeout", "8")
    assert (
        time.monotonic() - t < 8 or not timing_matters()
    ), "busybox init should end on SIGTERM before the SIGKILL"
    assert "The system is going down" in guests("logs", n).stdout


def test_guests_survive_the_manager_and_are_readopted(guests: Guests) -> None:
    n = guests.name("surv")
    guests("create", n, "--cmd", "sleep 1000")
    guests("start", n)
    init = guests.record(n)["pid"]
    daemon = guests.daemon_pid()
    os.kill(daemon, signal.SIGKILL)
    guests.wait(lambda: not _pid_alive(daemon), what="supervisor to die")
    assert _pid_alive(init)
    rows = json.loads(guests("list", "--json").stdout)
    assert [r["state"] for r in rows if r["name"] == n] == ["running"]
    assert guests.daemon_pid() not in (0, daemon)  # list started a new supervisor, which re-adopted
    os.kill(init, signal.SIGKILL)
    guests.wait(
        lambda: guests.record(n).get("status") == "stopped", what="exit recorded by the new supervisor"
    )
    assert guests.info(n)["state"] == "stopped"
    # an orphan is the host init's to reap
    guests.wait(lambda: not Path(f"/proc/{init}").exists(), what="the host's init to reap the orphan")


def test_dead_init_without_supervisor_reconciles_to_stopped(guests: Guests) -> None:
    n = guests.name("orph")
    guests("create", n, "--cmd", "sleep 1000")
    guests("start", n)
    init = guests.record(n)["pid"]
    os.kill(guests.daemon_pid(), signal.SIGKILL)
    os.kill(init, signal.SIGKILL)
    guests.wait(lambda: not _pid_alive(init), what="init to die")
    # no supervisor saw it: the next command reconciles and cleans up
    assert guests.info(n)["state"] == "stopped"
    assert not (guests.run_root / n).exists()
    guests.wait(lambda: not Path(f"/proc/{init}").exists(), what="the host's init to reap the orphan")


def test_restart_policy_restarts_a_crashing_guest(guests: Guests) -> None:
    n = guests.name("crash")
    guests("create", n, "--restart", "on-failure", "--cmd", "sh -c 'echo run; sleep 0.2; exit 3'")
    guests("start", n)
    guests.wait(lambda: guests.record(n).get("restarts", 0) >= 2, what="two restarts")
    assert guests("logs", n).stdout.count("run") >= 3
    guests("stop", n, "--timeout", "2")
    ok = guests.name("ok")
    guests("create", ok, "--restart", "on-failure", "--cmd", "true")
    guests("start", ok)
    guests.wait(lambda: guests.record(ok).get("status") == "stopped", what="clean exit")
    time.sleep(0.3)
    assert guests.record(ok).get("exit_code") == 0
    assert guests.record(ok).get("restarts") == 0


def test_set_changes_cgroup_live_and_persists(guests: Guests) -> None:
    n = guests.name("set")
    guests("create", n, "--cmd", "sleep 1000", "--memory", "256M")
    guests("start", n)
    cg = guests.record(n)["cgroup"].strip("/")

    def mem_limit() -> int:
        for f in (f"/sys/fs/cgroup/memory/{cg}/memory.limit_in_bytes", f"/sys/fs/cgroup/{cg}/memory.max",
                  f"/sys/fs/cgroup/unified/{cg}/memory.max"):  # fmt: skip
            if os.path.exists(f):
                return int(Path(f).read_text())
        raise AssertionError("no memory limit file")

    assert mem_limit() == 256 << 20
    pid = guests.record(n)["pid"]
    guests("set", n, "--memory", "128M")
    assert mem_limit() == 128 << 20
    assert guests.record(n)["pid"] == pid  # live: same init
    assert '"memory" = "128M"' in (guests.store / "guests" / n / "config.toml").read_text()


def test_clone_copies_the_upper_layer_only(guests: Guests) -> None:
    a, b = guests.name("orig"), guests.name("copy")
    guests("create", a, "--cmd", "sleep 1000")
    guests("start", a)
    guests("exec", a, "--", "sh", "-c", "echo mine > /etc/motd")
    assert guests("clone", a, b, check=False).returncode == 125  # running
    guests("stop", a, "--timeout", "2")
    t = time.monotonic()
    guests("clone", a, b)
    assert time.monotonic() - t < 3 or not timing_matters()
    assert not (guests.store / "guests" / b / "upper" / "bin").exists()  # template shared, not copied
    guests("start", b)
    assert guests("exec", b, "--", "cat", "/etc/motd").stdout.strip() == "mine"


def test_disk_quota_enospc_inside_only(guests: Guests) -> None:
    n = guests.name("disk")
    guests("create", n, "--disk", "16M", "--cmd", "sleep 1000")
    image = guests.store / "guests" / n / f"{n}.disk.img"
    assert image.exists()
    guests("start", n)
    r = guests("exec", n, "--", "dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=64", check=False)
    assert r.returncode != 0
    assert "No space left on device" in r.stderr + r.stdout
    # the host's filesystem is not full
    st = os.statvfs(guests.store)
    assert st.f_bavail * st.f_frsize > 64 << 20
    loops = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
    assert loops.strip()
    guests("stop", n, "--timeout", "2")
    assert not subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["start", "nosuch-guest-x"], "does not exist"),
        (["stop", "nosuch-guest-x"], "does not exist"),
        (["info", "nosuch-guest-x"], "does not exist"),
        (["create", "-bad/name"], "invalid guest name"),
        (["create", "{tag}-t", "--template", "nosuch"], "template 'nosuch' does not exist"),
        (["create", "{tag}-r", "--restart", "sometimes"], "restart"),
        (["create", "{tag}-d", "--disk", "lots"], "disk"),
    ],
)
def test_bad_input_one_line_125_nothing_left(guests: Guests, args: list[str], needle: str) -> None:
    before = sorted(os.listdir(guests.store / "guests")) if (guests.store / "guests").exists() else []
    r = guests(*[a.format(tag=guests.tag) for a in args], check=False)
    assert r.returncode == 125, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], r.stderr
    after = sorted(os.listdir(guests.store / "guests")) if (guests.store / "guests").exists() else []
    assert [a for a in after if a not in before and a != ".locks"] == []


def test_existing_name_and_malformed_config(guests: Guests) -> None:
    n = guests.name("cfg")
    guests("create", n, "--cmd", "true")
    r = guests("create", n, "--cmd", "true", check=False)
    assert r.returncode == 125
    assert "exists already" in r.stderr
    cfg = guests.store / "guests" / n / "config.toml"
    good = cfg.read_text()
    for text, needle in [
        (good + "colour = 'blue'\n", "colour: unknown key"),
        (good.replace('restart = "no"', "restart = 5"), "restart: must be a string"),
        (good + "[[[\n", "not valid TOML"),
    ]:
        cfg.write_text(text)
        r = guests("start", n, check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 125, r.stderr
        assert len(lines) == 1, r.stderr
        assert str(cfg) in lines[0], r.stderr
        assert needle in lines[0], r.stderr
    cfg.write_text(good)


@pytest.mark.parametrize(
    "point", ["create:layer", "start:locked", "start:sent", "start:created", "start:recorded"]
)
def test_sigkill_at_any_point_is_repaired(guests: Guests, point: str) -> None:
    n = guests.name("kill")
    env = {**guests.env, "BERTH_FAULT": point}
    if point.startswith("create"):
        r = guests("create", n, "--cmd", "sleep 1000", env=env, check=False)
        assert r.returncode == -9
        assert guests("info", n, check=False).returncode == 125  # not half there
        assert any(".new-" in e for e in guests.mine())
        assert any("removed" in line for line in guests("gc").stdout.splitlines())
        assert not guests.mine()
        guests("create", n, "--cmd", "sleep 1000")
    else:
        guests("create", n, "--cmd", "sleep 1000")
        guests("start", n, env=env, check=False)
        if point in ("start:created", "start:recorded"):
            # the worker died half-way: a created container with a stuck init is left; gc repairs
            guests("gc")
            assert not (guests.run_root / n).exists()
            assert cgroup_dirs(guests.env["BERTH_CGROUP_PARENT"]) == []
    # the next command works either way
    state = guests.wait(lambda: (st := guests.info(n)["state"]) != "starting" and st, what="start to settle")
    if state != "running":
        guests("start", n)
    assert guests.info(n)["state"] == "running"
    guests("stop", n, "--timeout", "2")


def test_batch_start_one_worker(guests: Guests) -> None:
    """Three guests started by one worker of guestd (a batch): each runs under its own init, and
    each is supervised (an init that dies is recorded as its guest's exit)."""
    names = [guests.name(f"b{i}") for i in range(3)]
    for n in names:
        guests("create", n, "--cmd", "sleep 1000")
    guests("start", *names, env={**guests.env, "BERTH_START_WORKERS": "1"})
    pids = [guests.info(n)["pid"] for n in names]
    assert all(pids) and len(set(pids)) == 3
    os.kill(pids[1], signal.SIGKILL)
    guests.wait(lambda: guests.record(names[1]).get("status") == "stopped", what="the exit to be recorded")
    assert [guests.info(n)["state"] for n in names] == ["running", "stopped", "running"]
    guests("stop", "--timeout", "2", *names)


def test_batch_start_reports_each_guest(guests: Guests) -> None:
    """A guest whose spec cannot be built is reported by name; the others of the command start."""
    a, b, c = (guests.name(x) for x in ("pa", "pb", "pc"))
    for n in (a, b, c):
        guests("create", n, "--cmd", "sleep 1000")
    cfg = guests.store / "guests" / b / "config.toml"
    cfg.write_text(cfg.read_text() + 'user = "ghost"\n')  # valid TOML and keys: fails at the spec
    r = guests("start", a, b, c, check=False, env={**guests.env, "BERTH_START_WORKERS": "1"})
    assert r.returncode == 125, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"start {b}:" in lines[0] and "ghost" in lines[0], r.stderr
    assert [guests.info(n)["state"] for n in (a, b, c)] == ["running", "stopped", "running"]
    assert guests.record(b).get("desired") != "running"
    guests("stop", "--timeout", "2", a, c)


def test_batch_worker_killed_midway_is_repaired(guests: Guests) -> None:
    """The worker starting a batch is SIGKILLed at its first guest: every guest of the batch is
    reported, gc cleans the half-made one, and the next start runs them all."""
    names = [guests.name(f"k{i}") for i in range(3)]
    for n in names:
        guests("create", n, "--cmd", "sleep 1000")
    env = {**guests.env, "BERTH_START_WORKERS": "1", "BERTH_FAULT": "start:created"}
    r = guests("start", *names, env=env, check=False)
    assert r.returncode == 125 and r.stderr.count("died without a reply") == 3, r.stderr
    guests("gc")
    assert not any((guests.run_root / n).exists() for n in names)
    guests("start", *names)
    assert [guests.info(n)["state"] for n in names] == ["running"] * 3
    guests("stop", "--timeout", "2", *names)


def test_start_builds_the_spec_again_only_when_its_inputs_change(guests: Guests) -> None:
    """`berth start` keeps a spec.json built from the same config (and template, environment,
    code); an edited config is built again and takes effect."""
    n = guests.name("edit")
    guests("create", n, "--cmd", "sleep 1000")
    spec = guests.store / "guests" / n / "spec.json"
    guests("start", n)
    guests("stop", "--timeout", "2", n)
    built = spec.stat().st_mtime_ns
    guests("start", n)
    assert spec.stat().st_mtime_ns == built  # unchanged inputs: not built again
    guests("stop", "--timeout", "2", n)
    cfg = guests.store / "guests" / n / "config.toml"
    cfg.write_text(cfg.read_text() + 'hostname = "edited"\n')
    guests("start", n)
    assert spec.stat().st_mtime_ns != built
    assert guests("exec", n, "--", "hostname").stdout.strip() == "edited"
    guests("stop", "--timeout", "2", n)
    built = spec.stat().st_mtime_ns
    guests("start", n, env={**guests.env, "BERTH_USERNS_POOL": "2000000:131072"})
    assert spec.stat().st_mtime_ns != built  # another environment: built again
    guests("stop", "--timeout", "2", n)


def test_supervisor_keeps_no_fd_of_the_command_that_started_it(guests: Guests) -> None:
    """guestd outlives the berth command that spawned it: it must not keep that command's fds
    (a pipe's write end here; a `flock` lock the caller held, in real life, for hours); nor
    must the guest it starts."""
    n = guests.name("fd")
    guests("create", n, "--cmd", "sleep 1000")
    r, w = os.pipe()
    try:
        cmd = [*berth_cmd(), "start", n]
        p = subprocess.run(cmd, env=guests.env, pass_fds=(w,), capture_output=True, check=False)
        assert p.returncode == 0, p.stderr
        assert guests.daemon_pid()
        os.close(w)
        w = -1
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""  # EOF: no process holds the write end any more
        guests("stop", "--timeout", "2", n)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_start_workers_must_be_a_number(guests: Guests) -> None:
    n = guests.name("w")
    guests("create", n, "--cmd", "sleep 1000")
    r = guests("start", n, check=False, env={**guests.env, "BERTH_START_WORKERS": "lots"})
    assert r.returncode == 125 and "BERTH_START_WORKERS" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert guests.info(n)["state"] == "stopped"


def test_concurrent_create_and_start(guests: Guests) -> None:
    names = [guests.name(f"c{i}") for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        res = list(pool.map(lambda n: guests("create", n, "--cmd", "sleep 1000", check=False), names))
        assert all(r.returncode == 0 for r in res), [r.stderr for r in res]
        racing = names
        if not timing_matters():
            # Emulated (TCG): six starts at once take the supervisor past the 10 s its starters
            # wait for it to come up, and a start may take over a minute; it is started first, and
            # the other starts race as before, with more time.
            guests("start", names[0], timeout=300)
            racing = names[1:]
        wait = 60 if timing_matters() else 300
        res = list(pool.map(lambda n: guests("start", n, check=False, timeout=wait), racing))
        assert all(r.returncode == 0 for r in res), [r.stderr for r in res]
    rows = json.loads(guests("list", "--json").stdout)
    running = sorted(r["name"] for r in rows if r["state"] == "running" and r["name"] in names)
    assert running == sorted(names)
    guests("stop", "--timeout", "2", *names, timeout=wait)


def parent_dirs(env: dict[str, str]) -> list[Path]:
    """The test's cgroup parent in each hierarchy where it exists."""
    parent = env["BERTH_CGROUP_PARENT"]
    return [top / parent for top in cgroup_roots() if (top / parent).is_dir()]


def hierarchies() -> list[str]:
    """Every cgroup hierarchy berth makes a guest's cgroup in (v1 controllers, cgroup2)."""
    from berth.cgroups import detect

    return detect().mountpoints()


def test_the_last_guest_takes_its_cgroup_parent_with_it(guests: Guests) -> None:
    """destroy (and stop) of the last guest under the cgroup parent removes the parent, in every
    hierarchy, as berth run's cleanup does; while another guest runs under it, it stays."""
    a, b = guests.name("pa"), guests.name("pb")
    for n in (a, b):
        guests("create", n, "--cmd", "sleep 1000")
    guests("start", a, b)
    assert len(parent_dirs(guests.env)) == len(hierarchies())
    guests("destroy", "--force", a)
    assert len(parent_dirs(guests.env)) == len(hierarchies())  # b's cgroup is in it
    assert all((d / b).is_dir() for d in parent_dirs(guests.env))
    guests("destroy", "--force", b)
    assert parent_dirs(guests.env) == []
    # stop, then destroy: the stop takes it
    guests("create", a, "--cmd", "sleep 1000")
    guests("start", a)
    assert parent_dirs(guests.env)
    guests("stop", "--timeout", "2", a)
    assert parent_dirs(guests.env) == []
    guests("destroy", a)
    assert parent_dirs(guests.env) == []


def test_a_start_racing_with_the_parents_removal_succeeds(guests: Guests) -> None:
    """The last guest stopping (its empty parent removed) while another starts (making the
    parent again): the start always succeeds, and the parent goes with the last guest."""
    a, b = guests.name("ra"), guests.name("rb")
    for n in (a, b):
        guests("create", n, "--cmd", "sleep 1000")
    for _ in range(4):
        guests("start", a)
        with ThreadPoolExecutor(2) as pool:
            stop = pool.submit(guests, "stop", "--timeout", "2", a, check=False)
            start = pool.submit(guests, "start", b, check=False)
            assert stop.result().returncode == 0, stop.result().stderr
            assert start.result().returncode == 0, start.result().stderr
        assert guests.info(b)["state"] == "running"
        assert all((d / b).is_dir() for d in parent_dirs(guests.env))
        assert len(parent_dirs(guests.env)) == len(hierarchies())
        guests("stop", "--timeout", "2", b)
        assert parent_dirs(guests.env) == []


def test_gc_survives_an_unreadable_state(guests: Guests) -> None:
    """A runtime state whose state.json cannot be read (a directory in its place) is named by
    `berth gc`, which goes on with the rest and leaves it for a look (not removed as damaged)."""
    cid = guests.name("unreadable")
    state = guests.run_root / cid / "state.json"
    state.mkdir(parents=True)
    try:
        p = guests("gc")
        assert f"could not read state {cid}" in p.stdout, p.stdout
        assert state.is_dir()
    finally:
        state.rmdir()
        state.parent.rmdir()
