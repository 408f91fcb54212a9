"""The C waiter berth run becomes while its guest runs (src/berth/runtime/waiter.c), on its own:
built here, given a child by a shell that execs it (as berth run execs it with the guest's init as
its child), and /bin/echo as the cleanup command, so the status it appends is printed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import compile_c

SRC = Path(__file__).resolve().parents[2] / "src" / "berth" / "runtime" / "waiter.c"
ECHO = shutil.which("echo") or "/bin/echo"
SIGS = f"{int(signal.SIGINT)},{int(signal.SIGTERM)}"


@pytest.fixture(scope="module")
def waiter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(
        tmp_path_factory.mktemp("waiter") / "berth-wait",
        SRC,
        missing="berth run waits in Python on this machine",
    )


def _sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("child", "status"),
    [
        ("(exit 0) &", "0"),
        ("(exit 3) &", "3"),
        ("sleep 30 & kill -KILL $!;", "137"),  # killed by signal N: 128+N, as container.wait_exit
        ("sleep 30 & kill -TERM $!;", "143"),
    ],
)
def test_status_appended_to_the_cleanup_command(waiter: Path, child: str, status: str) -> None:
    r = _sh(f"{child} exec {waiter} $! {SIGS} {ECHO} cleanup --args")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"cleanup --args {status}\n"


def test_not_our_child_is_255(waiter: Path) -> None:
    r = _sh(f"exec {waiter} 1 {SIGS} {ECHO} cleanup")
    assert (r.returncode, r.stdout) == (0, "cleanup 255\n")


def _wait_exe(pid: int, path: Path) -> None:
    deadline = time.monotonic() + 10
    while os.path.realpath(f"/proc/{pid}/exe") != str(path):
        assert time.monotonic() < deadline, f"{pid} did not exec {path}"
        time.sleep(0.01)


def _exec_waiter(waiter: Path, pending: bool) -> str:
    """Python code: a child (sleep), then exec the waiter for it, SIGINT and SIGTERM blocked as berth
    run blocks them (the waiter unblocks them once it has its handlers); with SIGTERM pending if
    ``pending``.  (Not sh: its background jobs ignore SIGINT.)"""
    return (
        "import os, signal, subprocess\n"
        "signal.signal(signal.SIGINT, signal.SIG_DFL)  # (ignored if we were started in the background)\n"
        "child = subprocess.Popen(['sleep', '30'])\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})\n"
        + ("os.kill(os.getpid(), signal.SIGTERM)\n" if pending else "")
        + f"os.execv({str(waiter)!r}, [{str(waiter)!r}, str(child.pid), {SIGS!r}, {ECHO!r}, 'cleanup'])\n"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_forwarded_to_the_child(waiter: Path, sig: signal.Signals) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", _exec_waiter(waiter, False)], stdout=subprocess.PIPE, text=True
    )
    try:
        _wait_exe(p.pid, waiter)
        p.send_signal(sig)
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert (p.returncode, out) == (0, f"cleanup {128 + sig}\n")


def test_signal_pending_across_the_exec_is_forwarded(waiter: Path) -> None:
    """A signal that came while blocked before the exec (berth run blocks them) reaches the child."""
    r = subprocess.run(
        [sys.executable, "-c", _exec_waiter(waiter, True)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (r.returncode, r.stdout) == (0, f"cleanup {128 + signal.SIGTERM}\n"), r.stderr


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ([], "usage"),
        (["x1", SIGS, ECHO], "PID"),
        (["0", SIGS, ECHO], "PID"),
        (["1", "2,x", ECHO], "SIGNALS"),
        (["1", "2,,15", ECHO], "SIGNALS"),
        (["1", "9999", ECHO], "SIGNALS"),
    ],
)
def test_bad_arguments_one_line_125(waiter: Path, args: list[str], field: str) -> None:
    r = subprocess.run([str(waiter), *args], capture_output=True, text=True, timeout=10, check=False)
    assert r.returncode == 125
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and field in r.stderr


def test_cleanup_command_missing_125(waiter: Path, tmp_path: Path) -> None:
    r = _sh(f"(exit 0) & exec {waiter} $! {SIGS} {tmp_path}/missing")
    assert r.returncode == 125
    assert "cannot run" in r.stderr and "missing" in r.stderr
