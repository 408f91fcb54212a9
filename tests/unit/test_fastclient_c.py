"""The compiled launcher (src/berth/guests/fastclient.c) against a fake guestd: what it sends,
how it prints guestd's replies, and when it hands the command to the Python launcher (built here
with /bin/echo as "Python", so a hand-over prints the arguments it would pass)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import compile_c

SRC = Path(__file__).resolve().parents[2] / "src" / "berth" / "guests" / "fastclient.c"
ECHO = shutil.which("echo") or "/bin/echo"


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(
        tmp_path_factory.mktemp("launcher") / "berth", SRC,
        "-Wno-sign-compare", f'-DBERTH_PYTHON="{ECHO}"', '-DBERTH_SCRIPT="HANDOVER"',
        missing="berth is the Python launcher alone on this machine",
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> dict[str, str]:
    for g in ("g1", "g2"):
        (tmp_path / "store" / "guests" / g).mkdir(parents=True)
        (tmp_path / "store" / "guests" / g / "config.toml").write_text('template = "busybox"\n')
    (tmp_path / "run" / ".guests").mkdir(parents=True)
    return {
        "PATH": "/usr/bin:/bin",
        "BERTH_ROOT": str(tmp_path / "store"),
        "BERTH_RUN": str(tmp_path / "run"),
        "BERTH_CGROUP_PARENT": "p/q",
        "BERTH_START_WORKERS": "1",
    }


class FakeGuestd:
    """Answers each connection with ``script(request) -> lines``; keeps the requests."""

    def __init__(self, run: str, script) -> None:
        self.requests: list[dict] = []
        self.fds: list[int] = []  # how many descriptors came with each request
        self.script = script
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(os.path.join(run, ".guests", "guestd.sock"))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                got = []
                while not buf.endswith(b"\n"):
                    chunk, fds, _flags, _addr = socket.recv_fds(conn, 65536, 8)
                    got += fds
                    if not chunk:
                        break
                    buf += chunk
                for fd in got:
                    os.close(fd)
                req = json.loads(buf)
                self.requests.append(req)
                self.fds.append(len(got))
                for line in self.script(req):
                    conn.sendall(line.encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


def dead_worker_guestd(store: dict[str, str]) -> FakeGuestd:
    """A guestd that names a worker which is gone already (ended and reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return FakeGuestd(store["BERTH_RUN"], lambda req: [json.dumps({"worker": p.pid})])


def run(launcher: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(launcher), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def handed_over(r: subprocess.CompletedProcess, args: list[str]) -> bool:
    return r.returncode == 0 and r.stdout == " ".join(["-IS", "HANDOVER", *args]) + "\n"


@pytest.mark.parametrize(
    "args",
    [[], ["list"], ["run"], ["run", "--help"], ["run", "-i", "-h", "--", "x"], ["start"], ["start", "--help"], ["start", "-t", "g1"],
     ["start", "../g1"], ["start", "g1", "nope"], ["start", "a" * 49]],
)  # fmt: skip
def test_hands_over_what_it_does_not_do(launcher: Path, store: dict[str, str], args: list[str]) -> None:
    guestd = FakeGuestd(store["BERTH_RUN"], lambda req: [])
    try:
        assert handed_over(run(launcher, args, store), args)
        assert guestd.requests == []
    finally:
        guestd.close()


@pytest.mark.parametrize(
    "extra", [{"BERTH_FAULT": "start:sent"}, {"BERTH_START_WORKERS": "lots"}, {"BERTH_START_WORKERS": "0"}]
)
def test_hands_over_for_faults_and_bad_worker_counts(
    launcher: Path, store: dict[str, str], extra: dict
) -> None:
    guestd = FakeGuestd(store["BERTH_RUN"], lambda req: [])
    try:
        assert handed_over(run(launcher, ["start", "g1"], {**store, **extra}), ["start", "g1"])
        assert guestd.requests == []
    finally:
        guestd.close()


def test_no_guestd_hands_over(launcher: Path, store: dict[str, str]) -> None:
    assert handed_over(run(launcher, ["start", "g1"], store), ["start", "g1"])


def test_request_and_success(launcher: Path, store: dict[str, str]) -> None:
    pid = os.getpid()
    guestd = FakeGuestd(
        store["BERTH_RUN"],
        lambda req: [json.dumps({"worker": pid})]
        + [json.dumps({"ok": True, "pid": 42, "name": n}) for n in req["names"]],
    )
    env = {**store, "BERTH_START_WORKERS": "", "X": 'a "quoted" \\ tab\t é ☃', "EMPTY": ""}
    try:
        r = run(launcher, ["start", "g1", "g2", "g1"], env)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert len(guestd.requests) in (1, 2)  # one batch per worker: the CPUs decide
        names = [n for req in guestd.requests for n in req["names"]]
        assert names == ["g1", "g2"]  # each once, in order
        for req in guestd.requests:
            assert {k: v for k, v in req.items() if k != "names"} == {
                "op": "start",
                "fast": True,
                "env": env,
                "store": store["BERTH_ROOT"],
                "cgroup_parent": "p/q",
            }
    finally:
        guestd.close()


def test_one_guest_error_is_its_line_and_status(launcher: Path, store: dict[str, str]) -> None:
    guestd = FakeGuestd(
        store["BERTH_RUN"],
        lambda req: [
            json.dumps({"worker": os.getpid()}),
            json.dumps({"ok": False, "error": 'boom é "q" \U0001f600', "status": 127, "name": "g1"}),
        ],
    )
    try:
        r = run(launcher, ["start", "g1"], store)
        assert (r.returncode, r.stderr) == (127, 'berth: boom é "q" \U0001f600\n')
    finally:
        guestd.close()


def test_several_guests_errors_joined(launcher: Path, store: dict[str, str]) -> None:
    guestd = FakeGuestd(
        store["BERTH_RUN"],
        lambda req: [
            json.dumps({"worker": os.getpid()}),
            '{"ok": true, "pid": 7, "name": "g1"}',
            '{"ok": false, "error": "no spec", "status": 125, "name": "g2"}',
        ],
    )
    try:
        r = run(launcher, ["start", "g1", "g2"], store)
        assert (r.returncode, r.stderr) == (125, "berth: start g2: no spec\n")
    finally:
        guestd.close()


def test_stale_hands_over(launcher: Path, store: dict[str, str]) -> None:
    guestd = FakeGuestd(
        store["BERTH_RUN"],
        lambda req: [json.dumps({"worker": os.getpid()}), '{"ok": false, "stale": true, "name": "g1"}'],
    )
    try:
        assert handed_over(run(launcher, ["start", "g1"], store), ["start", "g1"])
        assert len(guestd.requests) == 1
    finally:
        guestd.close()


def test_dead_worker_is_an_error_for_each_guest(launcher: Path, store: dict[str, str]) -> None:
    guestd = dead_worker_guestd(store)
    try:
        r = run(launcher, ["start", "g1", "g2"], store)
        line = "the guest supervisor's worker died without a reply"
        assert (r.returncode, r.stderr) == (125, f"berth: start g1: {line}; start g2: {line}\n")
    finally:
        guestd.close()


def test_a_reply_it_cannot_read_hands_over(launcher: Path, store: dict[str, str]) -> None:
    guestd = FakeGuestd(store["BERTH_RUN"], lambda req: [json.dumps({"worker": os.getpid()}), '{"ok": [1]}'])
    try:
        assert handed_over(run(launcher, ["start", "g1"], store), ["start", "g1"])
    finally:
        guestd.close()


def test_non_utf8_environment_hands_over(launcher: Path, store: dict[str, str]) -> None:
    guestd = FakeGuestd(store["BERTH_RUN"], lambda req: [])
    env = {os.fsencode(k): os.fsencode(v) for k, v in store.items()}
    env[b"BAD"] = b"\xff\xfe"
    try:
        r = subprocess.run(
            [str(launcher), "start", "g1"], env=env, capture_output=True, timeout=30, check=False
        )
        assert r.returncode == 0 and r.stdout == b"-IS HANDOVER start g1\n"
        assert guestd.requests == []
    finally:
        guestd.close()


def test_run_request_and_exit_status(launcher: Path, store: dict[str, str]) -> None:
    """berth run: one request with the arguments, environment and context, and the command's
    stdin, stdout, stderr and cwd; the exit status is the worker's last line."""
    guestd = FakeGuestd(
        store["BERTH_RUN"], lambda req: [json.dumps({"worker": os.getpid()}), "not json", '{"exit": 7}']
    )
    try:
        args = ["run", "--rm", "-e", "A=é", "--", "sh", "-c", 'echo "$A"']
        r = run(launcher, args, store)
        assert (r.returncode, r.stdout, r.stderr) == (7, "", "")
        (req,) = guestd.requests
        assert guestd.fds == [4]
        ctx = req.pop("context")
        assert req == {
            "op": "run",
            "argv": args[1:],
            "env": store,
            "store": store["BERTH_ROOT"],
            "cgroup_parent": "p/q",
        }
        from berth.cli import run_guestd

        assert ctx == run_guestd.context()  # the same text as guestd's worker makes of itself
    finally:
        guestd.close()


def test_run_fallback_hands_over(launcher: Path, store: dict[str, str]) -> None:
    guestd = FakeGuestd(
        store["BERTH_RUN"], lambda req: [json.dumps({"worker": os.getpid()}), '{"fallback": true}']
    )
    try:
        assert handed_over(run(launcher, ["run", "-t", "--", "true"], store), ["run", "-t", "--", "true"])
        assert len(guestd.requests) == 1
    finally:
        guestd.close()


def test_run_without_guestd_hands_over(launcher: Path, store: dict[str, str]) -> None:
    assert handed_over(run(launcher, ["run", "--", "true"], store), ["run", "--", "true"])


def test_run_worker_gone_without_a_status(launcher: Path, store: dict[str, str]) -> None:
    guestd = dead_worker_guestd(store)
    try:
        r = run(launcher, ["run", "--", "true"], store)
        assert r.returncode == 125
        assert r.stderr.startswith(
            "berth: the guest supervisor's worker ended without the guest's exit status"
        )
    finally:
        guestd.close()


def test_run_forwards_signals_to_the_worker(launcher: Path, store: dict[str, str]) -> None:
    """A signal to the launcher goes to guestd's worker (here a process that reports it)."""
    worker = subprocess.Popen(
        [sys.executable, "-c", "import signal, time\n"
         "signal.signal(signal.SIGUSR1, lambda *a: print('got', signal.SIGUSR1.value, flush=True))\n"
         "print('ready', flush=True)\ntime.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    asked = threading.Event()

    def script(req):
        yield json.dumps({"worker": worker.pid})
        asked.set()
        line = worker.stdout.readline()  # the forwarded signal
        yield json.dumps({"exit": 128 + int(line.split()[1])})

    guestd = FakeGuestd(store["BERTH_RUN"], script)
    p = subprocess.Popen([str(launcher), "run", "--", "true"], env=store, stderr=subprocess.PIPE)
    try:
        assert asked.wait(20)
        time.sleep(0.2)  # the launcher read the worker's pid
        p.send_signal(signal.SIGUSR1)
        assert p.wait(timeout=20) == 128 + signal.SIGUSR1
    finally:
        for q in (p, worker):
            if q.poll() is None:
                q.kill()
                q.wait()
        guestd.close()


def test_run_a_worker_ended_by_the_forwarded_signal_ends_the_launcher_so(
    launcher: Path, store: dict[str, str]
) -> None:
    """The worker dies of the signal the launcher forwarded, before it had a guest to forward it
    to (no exit line): the launcher ends by that signal, as a berth run process would have."""
    worker = subprocess.Popen(["sleep", "30"])
    asked = threading.Event()

    def script(req):
        yield json.dumps({"worker": worker.pid})
        asked.set()
        worker.wait(timeout=20)

    guestd = FakeGuestd(store["BERTH_RUN"], script)
    p = subprocess.Popen([str(launcher), "run", "--", "true"], env=store, stderr=subprocess.PIPE)
    try:
        assert asked.wait(20)
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == -signal.SIGTERM
        assert worker.wait(timeout=20) == -signal.SIGTERM
    finally:
        for q in (p, worker):
            if q.poll() is None:
                q.kill()
                q.wait()
        guestd.close()
