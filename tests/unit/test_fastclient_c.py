"""The compiled launcher (src/berth/guests/fastclient.c) against a fake guestd: what it sends,
how it prints guestd's replies, and when it hands the command to the Python launcher (built here
with /bin/echo as "Python", so a hand-over prints the arguments it would pass)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
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
                while not buf.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                req = json.loads(buf)
                self.requests.append(req)
                for line in self.script(req):
                    conn.sendall(line.encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


def run(launcher: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(launcher), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def handed_over(r: subprocess.CompletedProcess, args: list[str]) -> bool:
    return r.returncode == 0 and r.stdout == " ".join(["-IS", "HANDOVER", *args]) + "\n"


@pytest.mark.parametrize(
    "args",
    [[], ["list"], ["run", "--", "true"], ["start"], ["start", "--help"], ["start", "-t", "g1"],
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
    p = subprocess.Popen(["true"])
    p.wait()
    guestd = FakeGuestd(store["BERTH_RUN"], lambda req: [json.dumps({"worker": p.pid})])
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
