"""The runtime's log: one line per message, as text (logrus style) or JSON lines.

With ``--log FILE`` messages go to the file; errors also go to stderr, where a person running
the command sees them.  conmon and the runc shim read the last ``"level":"error"`` line.
"""

from __future__ import annotations

import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error")


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


class Log:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.json = False
        self.debug_on = False

    def open(self, path: str | None, fmt: str, *, debug: bool = False) -> None:
        self.json = fmt == "json"
        self.debug_on = debug
        if path:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                sys.stderr.write(f"berth-runtime: cannot open log {path!r}: {e.strerror}\n")

    def _line(self, level: str, msg: str) -> str:
        if self.json:
            from berth.runtime.state import dumps

            return dumps({"level": level, "msg": msg, "time": _now()}) + "\n"
        from _json import encode_basestring as q

        return f"time={q(_now())} level={level} msg={q(msg)}\n"

    def write(self, level: str, msg: str) -> None:
        if level == "debug" and not self.debug_on:
            return
        if self.fd is not None:
            try:
                os.write(self.fd, self._line(level, msg).encode())
            except OSError:
                pass
        if self.fd is None or level == "error":
            prefix = "" if level == "error" else f"{level}: "
            try:
                os.write(2, f"berth-runtime: {prefix}{msg}\n".encode())
            except OSError:
                pass

    def debug(self, msg: str) -> None:
        self.write("debug", msg)

    def info(self, msg: str) -> None:
        self.write("info", msg)

    def warn(self, msg: str) -> None:
        self.write("warning", msg)

    def error(self, msg: str) -> None:
        self.write("error", msg)

    def exception(self, exc: BaseException, msg: str) -> None:
        if self.debug_on:
            import traceback

            self.write("debug", "".join(traceback.format_exception(exc)).rstrip())
        self.error(msg)
