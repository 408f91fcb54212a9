"""The lean path of ``berth start NAME...`` when guestd already runs: one request, no spec build.

A start of an unchanged guest needs nothing the command alone knows except its environment (the
spec's inputs, :mod:`berth.guests.specinputs`): the command sends its names and environment and
guestd's worker, which has the start path loaded already, checks each guest's spec against its
inputs, marks it to run and starts it, under the guest's lock.  A guest whose spec must be built
first comes back ``stale`` and the command takes the full path for it (the CLI builds specs).

``fastclient.c`` beside this file is the same client in C: tools/launcher.sh makes it the
``berth`` launcher where a C compiler is found, so that this path starts no Python at all (it hands
every other command, and every case it does not handle, to the Python launcher ``berth-py``).

Only builtin modules here (``_socket``, ``_json``, ``select``): ``json`` and ``socket`` cost
~20 ms of imports, more than the rest of the command.  Anything unusual (guestd not running, a
name that is not a guest, a fault injection point set) returns None: the caller takes the full
path, which also gives the error messages.
"""

from __future__ import annotations

import _json
import _socket
import os

from berth.spec.jsontext import loads

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# As berth.guests.daemon.SOCK and berth.guests.store (not imported: they import socket and json).
SOCK = "guestd.sock"
NAME_MAX = 48
_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_CHARS = _FIRST | frozenset("_.-")
WORKERS_PER_CPU = 4  # as berth.guests.lifecycle.WORKERS_PER_CPU
TIMEOUT = 120.0


def _no_default(o: object) -> object:
    raise TypeError(f"{type(o).__name__} is not JSON")


_encode = _json.make_encoder(
    None, _no_default, _json.encode_basestring_ascii, None, ":", ",", False, False, False
)


def dumps(obj: Any) -> bytes:
    """One JSON line (strings, numbers, booleans, None, lists and dicts of them)."""
    return "".join(_encode(obj, 0)).encode() + b"\n"


def name_ok(name: str) -> bool:
    """berth.guests.store.check_name's rule, without raising."""
    return 0 < len(name) <= NAME_MAX and name[0] in _FIRST and all(c in _CHARS for c in name)


def batches(names: list[str], env: Mapping[str, str]) -> list[list[str]] | None:
    """The names in as many batches as guestd starts at once (lifecycle._workers); None if
    ``BERTH_START_WORKERS`` is not a positive whole number (the full path says so)."""
    raw = env.get("BERTH_START_WORKERS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            return None
        workers = int(raw)
    else:
        try:
            workers = len(os.sched_getaffinity(0)) * WORKERS_PER_CPU
        except OSError:
            workers = (os.cpu_count() or 1) * WORKERS_PER_CPU
    size = -(-len(names) // min(len(names), max(1, workers)))
    return [names[i : i + size] for i in range(0, len(names), size)]


def _connect(path: str) -> _socket.socket | None:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
        return s
    except OSError:
        s.close()
        return None


def start(
    store_root: str, state_root: str, cgroup_parent: str, names: list[str], env: Mapping[str, str]
) -> dict[str, dict[str, Any]] | None:
    """Start ``names`` through guestd's fast path: each one's reply by name (``ok`` and ``pid``,
    or ``error`` and ``status``, or ``stale``: its spec must be built first); None when this
    path cannot be taken (nothing was sent)."""
    todo = list(dict.fromkeys(names))
    if not todo or env.get("BERTH_FAULT"):
        return None
    guests = os.path.join(store_root, "guests")
    for n in todo:
        if not name_ok(n) or not os.path.isfile(os.path.join(guests, n, "config.toml")):
            return None
    groups = batches(todo, env)
    if groups is None:
        return None
    path = os.path.join(state_root, ".guests", SOCK)
    socks = []
    try:
        for group in groups:
            s = _connect(path)
            if s is None:
                if socks:  # guestd went away between two batches: the first ones are sent
                    break
                return None
            socks.append((group, s))
            req = {
                "op": "start",
                "names": group,
                "fast": True,
                "env": dict(env),
                "store": store_root,
                "cgroup_parent": cgroup_parent,
            }
            s.sendall(dumps(req))
        out: dict[str, dict[str, Any]] = {}
        for group, s in socks:
            out.update(_replies(s, group))
        for group in groups[len(socks) :]:
            for n in group:
                out[n] = {"ok": False, "error": "the guest supervisor went away", "status": 125}
        return out
    finally:
        for _group, s in socks:
            s.close()


def _replies(s: _socket.socket, group: list[str]) -> dict[str, dict[str, Any]]:
    """Read guestd's lines: the worker's pid, then one reply per guest.  A worker that dies
    without answering (its pidfd says so) stands as the error of every guest not answered."""
    import select
    import time

    deadline = time.monotonic() + TIMEOUT
    buf = b""
    pidfd = -1
    dead = False
    got: dict[str, dict[str, Any]] = {}
    died = {"ok": False, "error": "the guest supervisor's worker died without a reply", "status": 125}
    try:
        while True:
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = loads(line.decode())
                if "worker" in msg:
                    try:
                        pidfd = os.pidfd_open(msg["worker"])
                    except ProcessLookupError:
                        pidfd = -2  # gone already: its replies, if any, are in the socket
                elif msg.get("name") in group:
                    got[msg["name"]] = msg
                    deadline = time.monotonic() + TIMEOUT
            if len(got) == len(group) or dead:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                died = {"ok": False, "error": "the guest supervisor did not answer in time", "status": 125}
                break
            ready: list[int] = []
            if pidfd != -2:
                watch = [s.fileno()] + ([pidfd] if pidfd >= 0 else [])
                ready, _, _ = select.select(watch, [], [], min(left, 1.0))
            if s.fileno() in ready:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            elif pidfd == -2 or pidfd in ready:
                # The worker is gone: what it wrote is in the socket; read that, then stop.
                s.setblocking(False)
                try:
                    while chunk := s.recv(65536):
                        buf += chunk
                except BlockingIOError:
                    pass
                dead = True
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return {n: got.get(n, died) for n in group}
