"""Relay between the user's terminal and the guest's pty master (``berth run -t``)."""

from __future__ import annotations

import _signal as signal
import errno
import fcntl
import os
import select
import termios
import tty

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Relay:
    """Copy stdin to the pty master and the master to stdout until the guest side closes.

    The user's terminal is put in raw mode for the duration (so ^C reaches the guest as a
    byte and becomes the guest's SIGINT), and window size changes are passed on.
    """

    def __init__(self, master: int) -> None:
        self.master = master
        self.saved: list[Any] | None = None
        self.stdin_open = True

    def __enter__(self) -> Relay:
        if os.isatty(0):
            self.saved = termios.tcgetattr(0)
            tty.setraw(0)
        self._resize()
        signal.signal(signal.SIGWINCH, lambda *_: self._resize())
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        try:
            if self.saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
        except termios.error:
            pass  # the terminal hung up: nothing to put back
        finally:
            os.close(self.master)

    def _resize(self) -> None:
        for fd in (0, 1, 2):
            if os.isatty(fd):
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
                return

    def pump(self) -> None:
        """Relay until the guest closes its side of the pty."""
        while True:
            fds = [self.master, 0] if self.stdin_open else [self.master]
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if self.master in ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError as e:
                    if e.errno == errno.EIO:
                        return
                    raise
                if not data:
                    return
                _write_all(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    self.stdin_open = False
                    _write_all(self.master, b"\x04")
                else:
                    _write_all(self.master, data)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]
