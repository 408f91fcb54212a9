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
