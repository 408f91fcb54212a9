"""`berth run` through guestd (the compiled launcher, src/berth/guests/fastclient.c, and
berth.guests.worker.run): with guestd up, the launcher starts no Python; guestd's worker runs the
guest with the command's stdio, working directory and environment, the command's signals reach
the guest, its exit status is the command's, and everything the run made is gone when it
returns.  A command that guestd's worker could not run as it would have run (a terminal, another
umask or CPU affinity than guestd's, help) is the Python launcher's, with the same result."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import test_guests
from test_fast_start import LAUNCHER, PY_LAUNCHER, compiled_launcher
from test_guests import Guests

guests = test_guests.guests  # the fixture: guestd and the guests are gone at teardown, nothing leaked

pytestmark = pytest.mark.skipif(
    not compiled_launcher() or not shutil.which("strace"),
    reason="needs the compiled launcher (a C compiler at install) and strace",
)

# What a guest sees of itself: its capabilities, seccomp, no_new_privs, hostname length, root
# entries, id map, mount count, cgroup lines, cwd and its init's descriptors (stdio alone).
VIEW = (
    "grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status; hostname | wc -c; ls /; ls /proc/1/fd; "
    "cat /proc/self/uid_map; wc -l < /proc/self/mountinfo; wc -l < /proc/self/cgroup; pwd; echo $HOME"
)


def up(g: Guests) -> None:
    """guestd up (a guest started and stopped: the Python path spawns guestd)."""
    n = g.name("d")
    g("create", n)
    g("start", n)
    g("stop", "--timeout", "0", n)
    assert g.daemon_pid()


def traced(g: Guests, tmp: Path, args: list[str], **kw) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``berth run ARGS`` by the compiled launcher under strace (execve of this process only):
    the result and the programs it executed (python if it handed over)."""
    out = tmp / "execs"
    r = subprocess.run(
        ["strace", "-qq", "-e", "trace=execve", "-o", str(out), str(LAUNCHER), "run", *args],
        env=kw.pop("env", g.env),
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )
    execs = [line.split('"')[1] for line in out.read_text().splitlines() if "execve(" in line and '"' in line]
    return r, execs


def signalled(g: Guests, cmd: list[str], delay: float, sig: int) -> tuple[int, str, str]:
    """``berth run -- CMD`` by the compiled launcher, sent ``sig`` after ``delay`` s: its exit
    status (negative: killed by that signal), stdout and stderr.  Killed if it outlives 30 s."""
    p = subprocess.Popen(
        [str(LAUNCHER), "run", "--", *cmd],
        env=g.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(delay)
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out, err


def runs_left(g: Guests) -> list[str]:
    """State directories of runs (not the store's guests' nor guestd's)."""
    mine = set(g.mine())
    return [d for d in os.listdir(g.run_root) if not d.startswith(".") and d not in mine]


def test_run_through_guestd_starts_no_python_and_is_the_same_guest(guests: Guests, tmp_path: Path) -> None:
    up(guests)
    work = tmp_path / "wd"
    work.mkdir()
    r, execs = traced(guests, tmp_path, ["-w", "/tmp", "--", "sh", "-c", VIEW + "; echo err >&2; exit 7"])
    assert execs == [str(LAUNCHER)], execs  # guestd's worker ran it
    assert r.returncode == 7, r.stderr
    assert r.stderr == "err\n"
    py = subprocess.run(
        [str(PY_LAUNCHER), "run", "-w", "/tmp", "--", "sh", "-c", VIEW + "; echo err >&2; exit 7"],
        env=guests.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (py.returncode, py.stderr) == (7, "err\n")
    assert r.stdout == py.stdout  # the same capabilities, filters, mounts, ids and cgroups
    assert "Seccomp:\t2" in r.stdout and "/tmp\n/root\n" in r.stdout and "\n0\n1\n2\n" in r.stdout
    assert runs_left(guests) == []


def test_run_through_guestd_takes_the_commands_stdin_cwd_and_environment(
    guests: Guests, tmp_path: Path
) -> None:
    up(guests)
    rootfs = tmp_path / "rootfs"
    shutil.copytree(guests.store / "templates" / "busybox" / "rootfs", rootfs, symlinks=True)
    env = {**guests.env, "FROM_CMD": "yes it is"}
    r, execs = traced(
        guests, tmp_path, ["-i", "--rootfs", "rootfs", "-e", "FROM_CMD", "--", "sh", "-c", 'cat; echo "$FROM_CMD"'],
        input="through stdin\n", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert execs == [str(LAUNCHER)], execs
    assert (r.returncode, r.stdout) == (0, "through stdin\nyes it is\n"), r.stderr
    assert runs_left(guests) == []


@pytest.mark.parametrize("seconds", [0.2, 1.5])  # in the worker, and after it became the C waiter
def test_signals_reach_the_guest_and_a_killed_command_kills_it(guests: Guests, seconds: float) -> None:
    up(guests)
    for sig, want in ((signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
        code, out, err = signalled(
            guests, ["sh", "-c", "trap 'echo got TERM; exit 3' TERM; sleep 30 & wait"], seconds, sig
        )
        if sig == signal.SIGTERM:  # forwarded to the guest's init (tini), which passes it on
            assert (code, out) == (3, "got TERM\n"), err
        else:
            assert code == want
        # Either way the run ends and cleans up: no state, no cgroup, no process left.
        guests.wait(lambda: runs_left(guests) == [], timeout=20, what="the run to be removed")


def test_what_guestd_cannot_run_as_asked_is_pythons(guests: Guests, tmp_path: Path) -> None:
    up(guests)
    cases = [
        (["--", "sh", "-c", "umask"], {"preexec_fn": lambda: os.umask(0o077)}, "0077\n"),
        (["-t", "--", "true"], {}, ""),  # a terminal to relay
        (["--", "true"], {"preexec_fn": lambda: os.sched_setaffinity(0, {0})}, ""),
    ]
    for args, kw, out in cases:
        r, execs = traced(guests, tmp_path, args, stdin=subprocess.DEVNULL, **kw)
        assert len(execs) == 2 and "python" in execs[1], (args, execs)
        assert (r.returncode, r.stdout) == (0, out), (args, r.stderr)
    r, execs = traced(guests, tmp_path, ["--bogus"], stdin=subprocess.DEVNULL)
    assert "python" in execs[-1]
    assert r.returncode == 125 and r.stderr == "berth: --bogus: unknown option (see 'berth run --help')\n"
    assert runs_left(guests) == []


def test_a_run_request_without_its_descriptors_is_refused(guests: Guests) -> None:
    """guestd takes a run only with the command's four descriptors (stdio and cwd): else it
    closes the connection without a worker, and keeps serving."""
    import json
    import socket

    up(guests)
    path = str(guests.run_root / ".guests" / "guestd.sock")
    req = {"op": "run", "argv": ["--", "true"], "env": {}, "store": str(guests.store), "cgroup_parent": "x"}
    for fds in ([], [0, 1]):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            socket.send_fds(s, [json.dumps({**req, "fds": [0, 1, 2, 3]}).encode() + b"\n"], fds)
            s.settimeout(10)
            assert s.recv(4096) == b""  # closed: no worker's line
    r = subprocess.run(
        [str(LAUNCHER), "run", "--", "sh", "-c", "exit 5"], env=guests.env, capture_output=True, timeout=60
    )
    assert r.returncode == 5
    assert runs_left(guests) == []


def test_a_worker_without_the_run_module_hands_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If berth.cli.run_guestd could not be loaded (or did not register), a run is answered
    ``fallback``."""
    import json
    import socket

    from berth.guests import worker

    monkeypatch.setattr(worker, "_RUN_PATH", ())
    saved = dict(worker.HANDLERS)
    worker.HANDLERS.clear()
    a, b = socket.socketpair()
    try:
        assert worker.serve({"op": "run"}, a) == 0
        assert json.loads(b.recv(4096)) == {"fallback": True}
    finally:
        worker.HANDLERS.update(saved)
        a.close()
        b.close()


def test_a_guestd_older_than_the_code_on_disk_leaves_runs_to_python(guests: Guests, tmp_path: Path) -> None:
    """guestd keeps the code it loaded: once berth's code on disk changed (here a module added,
    then removed again), a run is the Python launcher's, which runs the new code."""
    import berth

    up(guests)
    probe = Path(berth.__file__).parent / f"_probe_{guests.tag.replace('-', '_')}.py"
    try:
        probe.write_text("# a change of berth's code (test_run_guestd)\n")
        r, execs = traced(guests, tmp_path, ["--", "true"], stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and len(execs) == 2 and "python" in execs[1], execs
    finally:
        probe.unlink(missing_ok=True)
    r, execs = guests.wait(
        lambda: (res := traced(guests, tmp_path, ["--", "true"], stdin=subprocess.DEVNULL))[1]
        == [str(LAUNCHER)]
        and res,
        what="guestd to run berth run again once the code is as it loaded it",
    )
    assert r.returncode == 0
    assert runs_left(guests) == []


def test_an_interrupt_at_any_moment_of_the_start_leaves_nothing(guests: Guests) -> None:
    """SIGINT (a terminal's ^C) to the launcher while guestd's worker makes the guest: the run
    ends with 130 (the worker's KeyboardInterrupt, or the guest's shell killed by it), and
    nothing of it is left."""
    up(guests)
    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04):
        code, _out, err = signalled(guests, ["sh", "-c", "sleep 30"], delay, signal.SIGINT)
        assert code in (130, -signal.SIGINT), (delay, code, err)
        guests.wait(
            lambda: runs_left(guests) == [], timeout=20, what=f"the run interrupted after {delay}s to go"
        )


def test_a_bridge_run_through_guestd_is_plugged_and_leaves_nothing(
    guests: Guests, prefix: str, tmp_path: Path
) -> None:
    """--net bridge through guestd's worker (python -I -S: pyroute2 from berth's environment):
    the guest has its address and reaches its gateway; its veth, bridge and nft table go with it."""
    from test_run_waiter import _named

    from helpers import free_subnet

    if not (os.path.exists("/usr/sbin/nft") or os.path.exists("/sbin/nft")):
        pytest.skip("nft is not installed")
    up(guests)
    env = dict(
        guests.env,
        BERTH_NET_PREFIX=prefix,
        BERTH_BRIDGE=f"{prefix}gbr",
        BERTH_NFT_TABLE=f"{prefix}g",
        BERTH_SUBNET=free_subnet(),
    )
    gateway = env["BERTH_SUBNET"].rsplit(".", 1)[0] + ".1"
    try:
        r, execs = traced(
            guests, tmp_path,
            ["--net", "bridge", "--", "sh", "-c", f"ip -4 addr show eth0 | grep -q 'inet 10\\.' && ping -c1 -W2 {gateway} >/dev/null && echo NET"],
            env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert execs == [str(LAUNCHER)], execs
        assert (r.returncode, r.stdout) == (0, "NET\n"), r.stderr
        assert _named(prefix) == []
    finally:
        from berth import net as berth_net

        berth_net.gc(env["BERTH_ROOT"], berth_net.parse("bridge", env=env))
    assert runs_left(guests) == []


def _family(pid: int) -> list[int]:
    """``pid`` and every process under it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_run_through_guestd_imports_nothing(guests: Guests, tmp_path: Path) -> None:
    """Once guestd loaded the run path (at its first run request), neither the worker nor the
    guest's init forked ahead opens a module of berth's (an import costs ~1 ms in each, on
    every run: berth.worker's _RUN_PATH must name all that a run imports)."""
    up(guests)
    first = subprocess.run([str(LAUNCHER), "run", "--", "true"], env=guests.env, stdin=subprocess.DEVNULL)
    assert first.returncode == 0  # guestd loads the run path; its next spare has it
    guests.wait(lambda: len(_family(guests.daemon_pid())) >= 3, what="guestd's spare and its init ahead")
    out = tmp_path / "opens"
    pids = [a for p in _family(guests.daemon_pid()) for a in ("-p", str(p))]
    tracer = subprocess.Popen(
        ["strace", "-qq", "-f", "-e", "trace=openat,open", "-o", str(out), *pids], stderr=subprocess.PIPE
    )
    try:
        guests.wait(lambda: out.exists(), what="strace to attach")
        time.sleep(0.5)
        r = subprocess.run(
            [str(LAUNCHER), "run", "--", "sh", "-c", "exit 4"],
            env=guests.env,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert r.returncode == 4
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    opened = out.read_text()
    assert "openat(" in opened  # it traced the run (the guest's files, the state dir)
    modules = [line for line in opened.splitlines() if "/berth/" in line and (".py" in line)]
    assert modules == []
    assert runs_left(guests) == []


def test_a_runs_name_is_free_at_its_answer_and_its_state_goes_soon_after(guests: Guests) -> None:
    """guestd's worker answers once the run's state directory is renamed to a tombstone (the
    name is free: the same name runs again at once), and removes the tombstone after."""
    up(guests)
    name = guests.name("r")
    for code in (3, 0):
        r = subprocess.run(
            [str(LAUNCHER), "run", "--name", name, "--", "sh", "-c", f"head -c 100000 /dev/zero > /big; exit {code}"],
            env=guests.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert r.returncode == code, r.stderr
        assert not (guests.run_root / name).exists()
    guests.wait(
        lambda: not [e for e in os.listdir(guests.run_root) if e.startswith(".gone-")],
        what="the runs' tombstones to be removed",
    )
    assert runs_left(guests) == []


@pytest.mark.parametrize("seconds", [0, 1.0])  # answered by guestd's worker, and by the C waiter's cleanup
def test_the_commands_pipes_end_when_it_exits(guests: Guests, seconds: float) -> None:
    """Whoever reads a run's output through a pipe sees its end when the command exits: guestd's
    worker (or the cleanup after its C waiter) lets the command's stdio go before the answer, not
    at its own exit after the cleanup that follows it."""
    up(guests)
    for _ in range(3):
        p = subprocess.Popen(
            [str(LAUNCHER), "run", "--rm", "--", "sh", "-c", f"sleep {seconds}; echo out; echo err >&2"],
            env=guests.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert p.wait(timeout=30) == 0
            for pipe, want in ((p.stdout, b"out\n"), (p.stderr, b"err\n")):
                assert pipe is not None
                os.set_blocking(pipe.fileno(), False)
                got = b""
                while chunk := os.read(pipe.fileno(), 4096):  # BlockingIOError: another holds it
                    got += chunk
                assert got == want
        finally:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
    guests.wait(lambda: runs_left(guests) == [], timeout=20, what="the runs to be removed")
