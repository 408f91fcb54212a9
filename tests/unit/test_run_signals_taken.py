"""berth.runtime.run._until_taken: a signal that came while the guest was started is sent once
the guest's init blocks or catches it (pid 1 of its namespace drops one it does neither with),
or after the bound; at once if the init is gone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from berth.runtime import run


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_waits_until_the_signal_is_blocked() -> None:
    p = _child(
        "import signal, time; time.sleep(0.3); signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}); time.sleep(5)"
    )
    try:
        t = time.monotonic()
        run._until_taken(p.pid, [signal.SIGUSR1], 3.0)  # (python catches SIGINT)
        assert 0.2 < time.monotonic() - t < 2.5
        status = Path(f"/proc/{p.pid}/status").read_text()
        blk = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
        assert blk & (1 << (signal.SIGUSR1 - 1))
    finally:
        p.kill()
        p.wait()


def test_gives_up_after_the_bound_and_at_once_for_a_gone_process() -> None:
    p = _child("import time; time.sleep(5)")  # SIGUSR2: neither blocked nor caught
    try:
        t = time.monotonic()
        run._until_taken(p.pid, [signal.SIGUSR2], 0.2)
        assert 0.15 < time.monotonic() - t < 1.5
    finally:
        p.kill()
        p.wait()
    t = time.monotonic()
    run._until_taken(p.pid, [signal.SIGINT], 5.0)  # reaped: no /proc entry
    z = _child("pass")
    while "State:\tZ" not in Path(f"/proc/{z.pid}/status").read_text():
        time.sleep(0.01)
    run._until_taken(z.pid, [signal.SIGINT], 5.0)  # a zombie: nothing will take it
    z.wait()
    assert time.monotonic() - t < 2.0
