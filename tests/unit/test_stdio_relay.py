"""berth.runtime.stdio's relay without root: it copies a process's output while the process runs,
takes all it wrote once it exited, and stops then, however long a process it left behind keeps
the pipe (the integration side, on a real terminal and guest: test_exec_stdio.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import pytest

from berth.runtime.stdio import Stdio


def _relay(script: str) -> tuple[bytes, float, int]:
    """Run ``sh -c script`` (its own process group, killed at the end) with stdout to a pipe
    relayed into another pipe; (what came through, seconds the relay took, exit status)."""
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    proc = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=w, start_new_session=True)
    os.close(w)
    chunks: list[bytes] = []

    def read() -> None:  # the destination's reader: the relay would block on a full pipe
        while data := os.read(out_r, 1 << 16):
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    io = Stdio(interactive=False)
    io.outs[r] = out_w
    try:
        t = time.monotonic()
        io.relay(proc.pid)
        took = time.monotonic() - t
        status = proc.wait(5)
    finally:
        os.close(out_w)
        reader.join(10)
        os.close(out_r)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what it left in the background
    return b"".join(chunks), took, status


def test_stops_when_the_process_exits_though_its_background_keeps_the_pipe() -> None:
    got, took, status = _relay("echo first; (sleep 10; echo late) & echo last")
    assert status == 0
    assert got == b"first\nlast\n"
    assert took < 5


@pytest.mark.parametrize("size", [100, 200_000, 3 << 20])
def test_all_the_process_wrote_comes_through(size: int) -> None:
    got, _, status = _relay(f"head -c {size} /dev/zero | tr '\\0' x; exit 3")
    assert status == 3
    assert got == b"x" * size


def test_forward_leaves_ignored_signals_ignored_and_reaches_the_process_group() -> None:
    """A signal ignored when berth exec started (nohup, a shell's background job) stays ignored
    (R13: nohup berth exec died of SIGHUP and took its command along); a forwarded one reaches
    the command's whole process group (^C to ``sleep | cat`` ended only the shell)."""
    from berth.runtime.stdio import Forward

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    proc = subprocess.Popen(["sh", "-c", "sleep 30 | cat"], start_new_session=True)
    try:
        with Forward() as fwd:
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            fwd.pid = proc.pid
            time.sleep(0.3)  # the pipeline up
            os.kill(os.getpid(), signal.SIGTERM)  # forwarded to the group, not to us
            assert proc.wait(5) == -signal.SIGTERM
            deadline, left = time.monotonic() + 5, ["?"]
            while left and time.monotonic() < deadline:  # (zombies wait for their reaper)
                ps = ["ps", "-o", "stat=", "-g", str(proc.pid)]
                left = [
                    st
                    for st in subprocess.run(ps, capture_output=True, text=True).stdout.split()
                    if st[0] != "Z"
                ]
                time.sleep(0.05)
            assert not left, f"left alive in the command's group: {left}"
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_one_terminal_on_stdout_and_stderr_is_one_pipe() -> None:
    """stdout and stderr on the same terminal reach the process as one pipe (R13: two pipes
    printed '1 3 2 4' for 'echo 1; echo 2 >&2; echo 3; echo 4 >&2')."""
    import pty

    master, slave = pty.openpty()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(slave, 1)
        os.dup2(slave, 2)
        io = Stdio(interactive=False)
        with io:
            one, two = os.fstat(1), os.fstat(2)
        assert len(io.outs) == 1
        assert (one.st_ino, one.st_dev) == (two.st_ino, two.st_dev)  # the same pipe
        io.close()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, master, slave):
            os.close(fd)
