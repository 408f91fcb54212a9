"""Run a guest process, read its console, find the lab's marker lines, and always clean up.

A guest's init prints ``BERTH-LAB-READY`` when the command is about to start and
``BERTH-LAB-EXIT=<status>`` when it has ended, then powers off. Everything between the two
lines is the command's output. The guest runs in its own session so that it, and anything
it forked (UML's helper processes), is killed by process group when the call ends.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.lab.errors import BootTimeout, CommandTimeout, LabError

READY = "BERTH-LAB-READY"
EXIT_PREFIX = "BERTH-LAB-EXIT="
EXIT_RE = re.compile(EXIT_PREFIX + r"(\d+)")
EXIT_GRACE = 15.0  # seconds a guest has to power off after its command ended


@dataclass
class Console:
    """What a finished guest printed, and when."""

    log: str
    exit_status: int
    output: str
    boot_seconds: float
    seconds: float


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def session_pids(sid: int) -> list[int]:
    """Host processes whose session id is ``sid`` (the guest's, and whatever it forked)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            found.append(int(d.name))
    return found


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill the guest's process group (it is the session we created) and wait until it is gone."""
    sid = proc.pid
    if proc.poll() is None:
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    # Helpers that changed process group but kept the session (UML): kill them by pid.
    for _ in range(50):
        left = session_pids(sid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise LabError(f"guest processes of session {sid} would not die: {session_pids(sid)}")


def run_guest(
    argv: list[str],
    *,
    boot_timeout: float,
    timeout: float,
    what: str,
    stream: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    stdin_devnull: bool = True,
    watch: Callable[[int], None] | None = None,
) -> Console:
    """Start ``argv`` (a guest whose console is its stdout) and wait for the exit marker.

    ``boot_timeout`` bounds the time to the ready marker, ``timeout`` the whole run. ``stream``
    gets the command's output lines as they come (for long runs such as ``make test-v2``);
    ``watch`` is called once with the guest's session id when the command starts (to measure
    the guest's host memory, say); the guest keeps running meanwhile.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL if stdin_devnull else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    ready_at: float | None = None
    status: int | None = None
    streamed = 0
    try:
        while True:
            now = time.monotonic()
            deadline = t0 + (timeout if ready_at is not None else min(boot_timeout, timeout))
            if status is not None:
                deadline = min(deadline, now + EXIT_GRACE) if proc.poll() is None else now
            if now >= deadline:
                break
            r, _, _ = select.select([fd], [], [], min(1.0, deadline - now))
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                    break
                buf += chunk
                text = buf.decode("utf-8", "replace").replace("\r", "")
                if ready_at is None and READY in text:
                    ready_at = time.monotonic() - t0
                    if watch is not None:
                        watch(proc.pid)
                if status is None and (m := EXIT_RE.search(text)):
                    status = int(m.group(1))
                if stream is not None and ready_at is not None:
                    body = text.split(READY, 1)[1].lstrip("\n")
                    body = EXIT_RE.split(body, 1)[0] if status is not None else body
                    complete = body
                    if status is None:
                        # Hold back a last partial line only while it could still become the marker.
                        last = body[body.rfind("\n") + 1 :]
                        if EXIT_PREFIX.startswith(last[: len(EXIT_PREFIX)]):
                            complete = body[: len(body) - len(last)]
                        # A multi-byte character cut by the read: wait for its other bytes.
                        complete = complete.rstrip("\ufffd")
                    if len(complete) > streamed:
                        stream(complete[streamed:])
                        streamed = len(complete)
            elif proc.poll() is not None and status is None:
                # Exited without the marker: read what is left, then give up.
                rest = os.read(fd, 1 << 20)
                buf += rest
                if not rest:
                    break
    finally:
        reap(proc)
        proc.stdout.close()
    seconds = time.monotonic() - t0
    log = buf.decode("utf-8", "replace").replace("\r", "")
    if ready_at is None:
        code = proc.returncode
        why = (
            f"exited with status {code}"
            if seconds < min(boot_timeout, timeout)
            else f"no ready line after {seconds:.0f} s"
        )
        raise BootTimeout(f"{what}: guest did not boot ({why}); console:\n{_tail(log)}", log)
    if status is None:
        raise CommandTimeout(f"{what}: command did not finish within {timeout:.0f} s; guest killed", log)
    body = log.split(READY, 1)[1].lstrip("\n")
    output = EXIT_RE.split(body, 1)[0]
    return Console(log=log, exit_status=status, output=output, boot_seconds=ready_at, seconds=seconds)
