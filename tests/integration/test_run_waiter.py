"""``berth run`` as the C waiter (src/berth/runtime/waiter.c) while its guest runs: a guest that
runs longer than ``WAITER_AFTER`` is waited for by berth-wait (the same process, exec'd), which
forwards signals, waits, and hands back to Python for the cleanup.  Asserted: the exit status, the
guest's output, signals (also around the hand-over), nothing left behind (with a bridge network
and a user namespace too), and a killed berth run taking its guest with it, as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from berth.runtime.run import WAITER_AFTER
from helpers import cgroup_roots, free_subnet, timing_matters

REPO = Path(__file__).resolve().parents[2]
WAITER = REPO / ".venv" / "bin" / "berth-wait"

pytestmark = pytest.mark.skipif(
    not WAITER.exists(),
    reason="no berth-wait in the venv (no C compiler when tools/launcher.sh ran): berth run waits in Python",
)

LOOP = "while :; do sleep 0.05; done"


class Run:
    """A ``berth run --rm`` in the background, our child; its stdout read line by line."""

    def __init__(
        self, argv: list[str], env: dict[str, str], *args: str, stdin: int = subprocess.DEVNULL
    ) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [*argv, "run", "--rm", *args],
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out = b""

    def wait_line(self, text: str, timeout: float = 15) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while text.encode() not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} within {timeout}s: {self.out!r}"
            os.set_blocking(fd, False)
            with contextlib.suppress(BlockingIOError):
                chunk = os.read(fd, 65536)
                assert chunk, f"output ended before {text!r}: {self.out!r}"
                self.out += chunk
            time.sleep(0.01)

    def wait_waiter(self, timeout: float = 10) -> None:
        """Until this berth run is berth-wait."""
        deadline = time.monotonic() + timeout
        while self.exe() != str(WAITER):
            assert self.proc.poll() is None, "berth run ended"
            assert time.monotonic() < deadline, f"berth run is still {self.exe()} after {timeout}s"
            time.sleep(0.02)

    def exe(self) -> str:
        try:
            return os.readlink(f"/proc/{self.proc.pid}/exe")
        except OSError:
            return "(gone)"

    def guest_init(self) -> int:
        """The guest's init: berth run's child."""
        return _children(self.proc.pid)[0]

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), True)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, (self.out + out).decode(errors="replace"), err.decode(errors="replace")

    def kill(self) -> bool:
        """SIGKILL it if it still runs (a test failed half-way); whether it did."""
        if self.proc.poll() is not None:
            return False
        self.proc.kill()
        self.proc.communicate(timeout=15)
        return True


def _children(pid: int) -> list[int]:
    kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(kids) == 1, kids
    return kids


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.fixture
def runs(berth_env: dict[str, str], berth_argv: list[str], check_clean):
    """``runs(*args, env=None, stdin=..., debug=False)``: a background ``berth [--debug] run``.  At the end, any still running
    is killed (by pid: its guest dies with it, its state and cgroup stay), and if a run was killed
    or left anything, ``berth gc`` with that run's env removes it; then nothing may be left."""
    started: list[Run] = []

    def start(
        *args: str, env: dict[str, str] | None = None, stdin: int = subprocess.DEVNULL, debug: bool = False
    ) -> Run:
        r = Run([*berth_argv, *(["--debug"] if debug else [])], env or berth_env, *args, stdin=stdin)
        started.append(r)
        return r

    yield start
    _reap(started, berth_argv, berth_env)
    check_clean()


def _reap(started: list[Run], argv: list[str], env: dict[str, str]) -> None:
    """Kill the runs still running; ``berth gc`` with each run's env if one was killed or
    anything of this test's guests is left."""
    killed = [r.kill() for r in started]
    if any(killed) or _left(env):
        for run_env in {id(r.env): r.env for r in started}.values():
            _gc(argv, run_env)


def _left(env: dict[str, str]) -> list[str]:
    """This test's guests' state dirs and cgroups."""
    run = Path(env["BERTH_RUN"])
    left = [str(d) for d in run.iterdir() if not d.name.startswith(".")] if run.is_dir() else []
    for top in cgroup_roots():
        parent = top / env["BERTH_CGROUP_PARENT"]
        if parent.is_dir():
            left += [str(d) for d in parent.iterdir() if d.is_dir()]
    return left


def _gc(argv: list[str], env: dict[str, str], timeout: float = 15) -> None:
    """``berth gc`` until this test's guests left nothing (a killed waiter's guest init is killed
    by its parent-death signal, and gc removes only the state of a guest whose init is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        gc = subprocess.run([*argv, "gc"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert gc.returncode == 0, gc.stderr
        if not _left(env) or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def _rollup_kib(pid: int) -> dict[str, int]:
    """smaps_rollup's fields (kB)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1])
    return out


def _small(pid: int) -> None:
    """The process is a small C program, not the Python front end (RSS > 10 MiB): its own memory
    (anonymous) well under 1 MiB, and all it maps resident under 4 MiB.  Not its PSS: the shared
    libc pages count in full while other processes have not yet mapped them again (after a
    reclaim under another test's memory pressure), which once put PSS above 1 MiB."""
    m = _rollup_kib(pid)
    assert m["Pss_Anon"] < 512, m
    assert m["Rss"] < 4096, m


@pytest.mark.parametrize("status", [0, 3])
def test_exit_status_output_and_the_waiter(runs, status: int, check_clean) -> None:
    """The guest's exit status and output pass through; meanwhile berth run is berth-wait, holding
    only stdin/stdout/stderr, with well under 1 MiB of its own memory."""
    r = runs("-i", "--", "sh", "-c", "echo UP; read x; echo got $x; exit $x", stdin=subprocess.PIPE)
    r.wait_line("UP")
    r.wait_waiter()
    # (exe turns to berth-wait inside execve a moment before the close-on-exec fds go: a fd
    # still there 2 s on is one the waiter holds)
    deadline = time.monotonic() + 2
    while (fds := sorted(int(fd) for fd in os.listdir(f"/proc/{r.proc.pid}/fd"))) != [0, 1, 2]:
        assert time.monotonic() < deadline, fds
        time.sleep(0.01)
    _small(r.proc.pid)
    assert r.proc.stdin is not None
    r.proc.stdin.write(f"{status}\n".encode())
    r.proc.stdin.flush()  # (communicate() closes it)
    code, out, err = r.finish()
    assert (code, out, err) == (status, f"UP\ngot {status}\n", "")
    check_clean()


@pytest.mark.parametrize(
    ("flags", "command", "status"),
    [
        # the init (tini) reports its child's death by SIGKILL as 137
        ([], f"echo UP; sleep {WAITER_AFTER * 3}; kill -KILL $$", 137),
        # the init itself killed by signal N (below): the waiter's own 128+N
        (["--no-init"], "echo UP; exec sleep 60", 137),
    ],
)
def test_killed_by_a_signal_is_128_plus_n(runs, flags, command, status, check_clean) -> None:
    r = runs(*flags, "--", "sh", "-c", command)
    r.wait_line("UP")
    r.wait_waiter()
    if "--no-init" in flags:
        os.kill(r.guest_init(), signal.SIGKILL)
    code, out, err = r.finish()
    assert (code, err) == (status, "")
    check_clean()


TRAP = f"trap 'echo GOT; exit 7' TERM INT HUP USR1; echo UP; {LOOP}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])
def test_signal_to_berth_run_reaches_the_guest(runs, sig: signal.Signals, check_clean) -> None:
    r = runs("--", "sh", "-c", TRAP)
    r.wait_line("UP")
    r.wait_waiter()
    r.proc.send_signal(sig)
    code, out, err = r.finish()
    assert (code, out, err) == (7, "UP\nGOT\n", "")
    check_clean()


@pytest.mark.parametrize("when", [0.5, 0.9, 1.0, 1.1, 1.5])
def test_sigterm_around_the_handover_is_not_lost(runs, when: float, check_clean) -> None:
    """SIGTERM before, during and after berth run becomes the waiter (``when`` x WAITER_AFTER
    after the guest's first line): it always reaches the guest."""
    r = runs("--", "sh", "-c", TRAP)
    r.wait_line("UP")
    time.sleep(WAITER_AFTER * when)
    r.proc.send_signal(signal.SIGTERM)
    code, out, err = r.finish()
    assert (code, out, err) == (7, "UP\nGOT\n", "")
    check_clean()


def test_short_command_and_failed_start_unchanged(berth) -> None:
    res = berth("--", "sh", "-c", "echo hi; exit 5")
    assert (res.returncode, res.stdout, res.stderr) == (5, "hi\n", "")
    res = berth("--", "/no/such/command")
    assert res.returncode == 127
    assert "/no/such/command" in res.error_line()


def test_waiter_killed_takes_the_guest_with_it(runs, berth_env, berth_argv, check_clean) -> None:
    """As when berth run was Python: SIGKILL to it kills the guest (its init's parent-death
    signal); its state dir and cgroup stay for ``berth gc``, which removes them (and the emptied
    cgroup parent)."""
    r = runs("--", "sh", "-c", f"echo UP; {LOOP}")
    r.wait_line("UP")
    r.wait_waiter()
    init = r.guest_init()
    command = _children(init)[0]  # the init (tini) runs the shell
    r.proc.kill()
    r.proc.communicate(timeout=15)
    deadline = time.monotonic() + 10
    while not (_dead(init) and _dead(command)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(init) and _dead(command)
    assert [n for n in os.listdir(berth_env["BERTH_RUN"]) if not n.startswith(".")]  # left for gc, as before
    gc = subprocess.run([*berth_argv, "gc"], env=berth_env, capture_output=True, text=True, timeout=60)
    assert gc.returncode == 0, gc.stderr
    assert "removed state" in gc.stdout
    parent = berth_env["BERTH_CGROUP_PARENT"]
    assert [str(top) for top in cgroup_roots() if (top / parent).exists()] == []  # gc took it
    check_clean()


def test_a_run_left_running_leaves_nothing(runs, berth_env, berth_argv, check_clean) -> None:
    """What the ``runs`` fixture does after a test that failed half-way: the waiter killed, its
    guest's state and cgroup collected by ``berth gc``."""
    r = runs("--", "sh", "-c", f"echo UP; {LOOP}")
    r.wait_line("UP")
    r.wait_waiter()
    assert _left(berth_env)
    _reap([r], berth_argv, berth_env)
    assert r.proc.returncode == -signal.SIGKILL
    check_clean()


@pytest.mark.parametrize("debug", [True, False])
def test_debug_reaches_the_cleanup(runs, berth_env, unique: str, debug: bool, check_clean) -> None:
    """``berth --debug run``: the cleanup the waiter execs (``berth _run-exit``) runs with --debug
    too, so an error in it prints its traceback; without --debug, one line.  The error: the
    guest's state.json made a directory while the waiter waits (put back for the fixture's gc)."""
    name = f"{unique}dbg"
    r = runs("--name", name, "--", "sh", "-c", f"echo UP; {LOOP}", debug=debug)
    r.wait_line("UP")
    r.wait_waiter()
    state = Path(berth_env["BERTH_RUN"]) / name / "state.json"
    saved = state.read_bytes()
    state.unlink()
    state.mkdir()
    try:
        r.proc.send_signal(signal.SIGTERM)
        code, _out, err = r.finish()
    finally:
        state.rmdir()
        state.write_bytes(saved)
    assert code == 125, err
    assert err.strip().splitlines()[-1] == f"berth: [Errno 21] Is a directory: '{state}'", err
    if debug:
        assert err.startswith("Traceback (most recent call last):"), err
        assert "finish_after_waiter" in err
    else:
        assert len(err.strip().splitlines()) == 1, err


# -- a bridge network and a user namespace: what the cleanup takes down --------------------------


def _named(prefix: str) -> list[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln for text in (links, tables, netns) for ln in text.splitlines() if prefix in ln]


@pytest.fixture
def net_env(berth_env: dict[str, str], prefix: str):
    """berth_env with the session's veth name prefix, a bridge and nft table of this file's own."""
    env = dict(
        berth_env,
        BERTH_NET_PREFIX=prefix,
        BERTH_BRIDGE=f"{prefix}wbr",
        BERTH_NFT_TABLE=f"{prefix}w",
        BERTH_SUBNET=free_subnet(),
    )
    yield env
    from berth import net as berth_net

    berth_net.gc(env["BERTH_ROOT"], berth_net.parse("bridge", env=env))


def test_bridge_guest_leaves_nothing(runs, net_env, check_clean) -> None:
    if not (os.path.exists("/usr/sbin/nft") or os.path.exists("/sbin/nft")):
        pytest.skip("nft is not installed")
    mine = net_env["BERTH_NET_PREFIX"]  # in the bridge's, the veth's and the nft table's names
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = runs(
        "--net", "bridge", "-p", f"{port}:80", "--", "sh", "-c",
        f"ip -4 addr show eth0 | grep -q 'inet 10\\.' && echo NET; echo UP; {LOOP}", env=net_env,
    )  # fmt: skip
    r.wait_line("UP", timeout=15 if timing_matters() else 120)  # a bridge's setup is slow under TCG
    r.wait_waiter()
    assert "NET" in r.out.decode()
    assert any(net_env["BERTH_BRIDGE"] in ln for ln in _named(mine)), _named(mine)
    r.proc.send_signal(signal.SIGTERM)
    code, _out, err = r.finish()
    assert (code, err) == (143, "")
    assert _named(mine) == []
    check_clean()


@pytest.fixture
def searchable_tmp(tmp_path: Path) -> None:
    """A user namespace's root must reach its state dir: open pytest's 0700 tmp dirs for search."""
    d = tmp_path
    while str(d) not in ("/", "/tmp"):
        os.chmod(d, os.stat(d).st_mode | 0o011)
        d = d.parent


def test_userns_range_freed_after_the_waiter(runs, berth_env, searchable_tmp, check_clean) -> None:
    from berth.runtime import userns

    r = runs("--userns", "auto", "--", "sh", "-c", f"echo UP; {LOOP}")
    r.wait_line("UP")
    r.wait_waiter()
    mine = [k for k in userns.allocations(berth_env["BERTH_ROOT"]) if k.startswith("run:")]
    assert any(k.endswith(f":{r.proc.pid}") for k in mine), mine  # the owner: berth run's pid, kept
    r.proc.send_signal(signal.SIGTERM)
    code, _out, err = r.finish()
    assert (code, err) == (143, "")
    held = [k for k in userns.allocations(berth_env["BERTH_ROOT"]) if k.endswith(f":{r.proc.pid}")]
    assert held == []
    check_clean()
