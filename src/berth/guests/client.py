"""Talking to guestd: start it on demand, send one request, read the reply."""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from berth.errors import BerthError
from berth.guests import daemon
from berth.guests.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _connect(store: Store) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(os.path.join(store.run_dir(), daemon.SOCK))
        return s
    except OSError:
        s.close()
        return None


def spawn(store: Store) -> None:
    """Start guestd for this state root, detached (setsid, stdio to its log, cwd /)."""
    os.makedirs(store.run_dir(), 0o700, exist_ok=True)
    log = os.path.join(store.run_dir(), daemon.LOG)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            null = os.open("/dev/null", os.O_RDONLY)
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            # Nothing else of the command that started it: guestd outlives it, and an inherited
            # fd would keep what it holds (a pipe's end, a flock of the caller's) for that long.
            os.closerange(3, 1 << 20)
            os.chdir("/")
            env = {k: v for k, v in os.environ.items() if k != "BERTH_FAULT"}
            os.execve(sys.executable, [sys.executable, "-I", "-S", daemon.__file__, store.state_root], env)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def daemon_pid(store: Store) -> int:
    try:
        with open(os.path.join(store.run_dir(), daemon.PID)) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def connect(store: Store, *, timeout: float = 10.0) -> socket.socket:
    s = _connect(store)
    if s is not None:
        return s
    spawn(store)
    deadline = time.monotonic() + timeout
    while s is None:
        if time.monotonic() > deadline:
            raise BerthError(f"the guest supervisor did not come up (see {store.run_dir()}/{daemon.LOG})")
        time.sleep(0.01)
        s = _connect(store)
    return s


def send(store: Store, req: dict[str, Any], *, start: bool = True) -> socket.socket:
    """``req`` sent to guestd, started first if it is not running (``start=False``: a
    :class:`BerthError` then)."""
    req = {**req, "store": store.root, "cgroup_parent": store.cgroup_parent}
    if os.environ.get("BERTH_FAULT"):
        req["fault"] = os.environ["BERTH_FAULT"]
    s = connect(store) if start else _connect(store)
    if s is None:
        raise BerthError("the guest supervisor is not running")
    s.sendall(json.dumps(req).encode() + b"\n")
    return s


def receive(s: socket.socket, *, timeout: float = 120.0) -> dict[str, Any]:
    """The reply to a request: guestd first names the worker doing it, then the worker replies.
    A worker that dies without a word is an error (its pidfd says so)."""
    return next(iter(_replies(s, 1, timeout)))


def receive_all(s: socket.socket, names: list[str], *, timeout: float = 120.0) -> dict[str, dict[str, Any]]:
    """The replies to a start of several guests (one line each, with its ``name``), by name;
    ``timeout`` is for each one.  Guests the worker did not answer for get an error reply."""
    out: dict[str, dict[str, Any]] = {}
    for msg in _replies(s, len(names), timeout):
        if msg.get("name") in names:
            out[msg["name"]] = msg
        else:  # the worker died: the error stands for every guest not answered
            for n in names:
                out.setdefault(n, msg)
    return out


def _replies(s: socket.socket, count: int, timeout: float) -> list[dict[str, Any]]:
    import select

    deadline = time.monotonic() + timeout
    buf = b""
    pidfd = -1
    got: list[dict[str, Any]] = []
    try:
        while True:
            lines = buf.split(b"\n")
            for line in lines[:-1]:
                msg = json.loads(line)
                if "worker" in msg:
                    try:
                        pidfd = os.pidfd_open(msg["worker"])
                    except ProcessLookupError:
                        pidfd = -2  # gone already: its reply, if any, is in the socket
                else:
                    got.append(msg)
                    deadline = time.monotonic() + timeout
                    if len(got) == count:
                        return got
            buf = lines[-1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise BerthError("the guest supervisor did not answer in time")
            watch = [s] + ([pidfd] if pidfd >= 0 else [])
            ready, _, _ = select.select(watch, [], [], min(left, 1.0))
            if s in ready:
                chunk = s.recv(65536)
                if chunk:
                    buf += chunk
                    continue
                break
            if pidfd in ready or pidfd == -2:
                s.setblocking(False)
                try:
                    buf += s.recv(65536)
                except BlockingIOError:
                    pass
                if buf.endswith(b"\n") and b'"ok"' in buf:
                    continue
                break
    finally:
        s.close()
        if pidfd >= 0:
            os.close(pidfd)
    return [*got, {"ok": False, "error": "the guest supervisor's worker died without a reply", "status": 125}]


def ensure(store: Store) -> None:
    """Make sure guestd runs (it re-adopts running guests when it starts)."""
    s = connect(store)
    s.sendall(b'{"op": "ping"}\n')
    receive(s, timeout=10)
