"""Parent/child sync: typed JSON messages over a SOCK_SEQPACKET socketpair.

The child never dies silently: before ``_exit`` it sends ``{"type": "error", "msg": …}``
and the parent raises that line.  File descriptors (the pty master) travel with
SCM_RIGHTS.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_MESSAGE = 65536


def pair() -> tuple[socket.socket, socket.socket]:
    """(parent end, child end); both close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def send(sock: socket.socket, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
    """Send one message of type ``kind`` (plus optional fds)."""
    data = json.dumps({"type": kind, **fields}).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its fds; (None, []) at end of stream (the peer exec'd or exited)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        return None, fds
    return json.loads(data), fds
