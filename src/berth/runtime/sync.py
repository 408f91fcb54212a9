"""Parent/child sync: typed messages over a SOCK_SEQPACKET socketpair.

The child never dies silently: before ``_exit`` it sends ``{"type": "error", "msg": …}``
and the parent raises that line.  File descriptors (the pty master) travel with
SCM_RIGHTS.  Both ends are the same Python, so messages are ``marshal``-encoded dicts
(no json, whose import pulls in ``re``: this is the start path).
"""

from __future__ import annotations

import _socket
import marshal
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_MESSAGE = 65536
_FD_SIZE = 4  # an int in SCM_RIGHTS (struct, not array: array imports collections)


def pair() -> tuple[_socket.socket, _socket.socket]:
    """(parent end, child end); both close-on-exec."""
    a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    return a, b


def send(sock: _socket.socket, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
    """Send one message of type ``kind`` (plus optional fds)."""
    data = marshal.dumps({"type": kind, **fields})
    if fds:
        sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    else:
        sock.send(data)


def recv(sock: _socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its fds; (None, []) at end of stream (the peer exec'd or exited)."""
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MESSAGE, _socket.CMSG_SPACE(4 * _FD_SIZE))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            n = len(payload) // _FD_SIZE
            fds.extend(struct.unpack(f"{n}i", payload[: n * _FD_SIZE]))
    if not data:
        return None, fds
    return marshal.loads(data), fds  # noqa: S302 - our own forked child, same interpreter
