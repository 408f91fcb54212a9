"""The caller's stdio for a process started in a container without a terminal (``berth exec``).

A guest process must never hold an fd of the caller's terminal: one left running in the
background after ``berth exec`` returned would read what the operator types next, write escape
sequences to their screen, and with CAP_SYS_ADMIN push input into their shell (TIOCSTI).  So
each of fds 0, 1 and 2 that is a terminal reaches the process as a pipe, and berth copies
between the pipe and the terminal while the process runs (:meth:`Stdio.relay`); when it exits
berth takes what is buffered in the pipes and closes its ends: a process left behind holds
only pipes whose other end is gone.

Other fds (files, pipes, sockets) are passed as they are, as runc does without a terminal:
where they lead is the caller's choice (a pipeline, a log file), copying them would cost every
byte a round through berth, and a reader keeps its usual end-of-file (docker relays everything
because its daemon is not the caller's process).
"""

from __future__ import annotations

import _signal as signal
import errno
import fcntl
import os
import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Signals ``berth exec`` passes on to its command (Ctrl-C, Ctrl-\\, a hang-up, kill).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# A read's size (a default pipe's): the outputs go to a terminal, which takes less at a time
# (1 MiB pipes and reads made no difference through a pty here).
_CHUNK = 1 << 16


class Stdio:
    """Fds 0, 1, 2 of this process made what the new process must get, for the time of its fork.

    ``with Stdio(interactive):`` swaps them (stdin: /dev/null without ``interactive``, a pipe when
    it is a terminal; stdout, stderr: a pipe when a terminal) and puts the caller's back on exit;
    :meth:`relay` then copies until the process ends.  :meth:`warn` writes to the caller's stderr
    while the fds are swapped.
    """

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self.outs: dict[int, int] = {}  # our read end -> the caller's fd it goes to
        self.stdin: int | None = None  # our write end of the process's stdin
        self._saved: dict[int, int] = {}

    def __enter__(self) -> Stdio:
        for fd in (0, 1, 2):  # a closed one would be taken by the next pipe
            try:
                os.fstat(fd)
            except OSError:
                null = os.open("/dev/null", os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
        give: dict[int, int] = {}
        try:
            if not self.interactive:
                give[0] = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            elif os.isatty(0):
                give[0], self.stdin = os.pipe()
            for fd in (1, 2):
                if os.isatty(fd):
                    if fd == 2 and 1 in give and os.fstat(2).st_rdev == os.fstat(1).st_rdev:
                        give[2] = os.dup(give[1])  # one terminal: one pipe, the order kept
                        continue
                    r, give[fd] = os.pipe()
                    self.outs[r] = fd
            for fd, theirs in give.items():
                self._saved[fd] = os.dup(fd)  # close-on-exec: never reaches the process
                os.dup2(theirs, fd)
        except BaseException:
            self.__exit__()
            self.close()
            raise
        finally:
            for theirs in give.values():
                os.close(theirs)
        return self

    def __exit__(self, *exc: object) -> None:
        """The caller's fds back (the process's ends of the pipes are closed here)."""
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()

    def own_fds(self) -> tuple[int, ...]:
        """The fds this relay holds (the caller's terminals, our ends of the pipes): the new
        process's fork closes them (:func:`berth.runtime.exec.exec_process` ``close_in_child``)."""
        mine = [*self._saved.values(), *self.outs]
        if self.stdin is not None:
            mine.append(self.stdin)
        return tuple(mine)

    def warn(self, text: str) -> None:
        try:
            os.write(self._saved.get(2, 2), f"berth: warning: {text}\n".encode())
        except OSError:
            pass

    def close(self) -> None:
        for r in self.outs:
            os.close(r)
        self.outs.clear()
        if self.stdin is not None:
            os.close(self.stdin)
            self.stdin = None

    def relay(self, pid: int) -> None:
        """Copy between the pipes and the caller's fds until ``pid`` (our child) exits; then
        what the pipes hold, and close them."""
        try:
            if self.outs or self.stdin is not None:
                _Pump(self).run(pid)
        finally:
            self.close()


class _Pump:
    """The copying: the process's stdout/stderr pipes to the caller's fds as data comes; the
    caller's stdin to the process's pipe a chunk at a time (read again once it is written)."""

    def __init__(self, io: Stdio) -> None:
        self.io = io
        self.outs = io.outs  # shared: what is closed here is not closed again
        self.pending = b""
        self.poll = select.poll()
        self.watched: dict[int, int] = {}

    def _watch(self, fd: int, events: int) -> None:
        if events:
            self.poll.register(fd, events)
            self.watched[fd] = events
        elif self.watched.pop(fd, 0):
            self.poll.unregister(fd)

    def run(self, pid: int) -> None:
        for r in self.outs:
            os.set_blocking(r, False)
            self._watch(r, select.POLLIN)
        if self.io.stdin is not None:
            os.set_blocking(self.io.stdin, False)
            self._watch(0, select.POLLIN)
        pidfd = _pidfd(pid)
        if pidfd is not None:
            self._watch(pidfd, select.POLLIN)
        try:
            while True:
                ready = self.poll.poll(None if pidfd is not None else 100)
                if pidfd is None and _exited(pid):
                    break
                if any(fd == pidfd for fd, _ in ready):
                    break
                for fd, _ in ready:
                    if fd in self.outs:
                        self._copy_out(fd, _CHUNK)
                    elif fd == 0:
                        self._read_in()
                    elif fd == self.io.stdin:
                        self._write_in()
            for r in list(self.outs):  # it ended: all it wrote is in the pipe (a pipeful at most)
                self._copy_out(r, fcntl.fcntl(r, fcntl.F_GETPIPE_SZ), drain=True)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _copy_out(self, r: int, budget: int, drain: bool = False) -> None:
        """Copy what ``r`` holds: one read, or with ``drain`` up to ``budget`` bytes, then close it."""
        dest = self.outs[r]
        while budget > 0:
            try:
                data = os.read(r, min(budget, _CHUNK))
            except BlockingIOError:
                if drain:
                    break
                return
            if not data:
                break
            try:
                _write_all(dest, data)
            except OSError:  # the caller's terminal went away: stop copying this stream
                break
            budget -= len(data)
            if not drain:
                return
        self._watch(r, 0)
        del self.outs[r]
        os.close(r)

    def _read_in(self) -> None:
        try:
            data = os.read(0, _CHUNK)
        except BlockingIOError:  # the caller's stdin is non-blocking and was not ready after all
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: the terminal hung up
                raise
            data = b""
        self._watch(0, 0)
        if not data:
            self._close_in()
            return
        self.pending = data
        self._write_in()

    def _write_in(self) -> None:
        assert self.io.stdin is not None
        try:
            n = os.write(self.io.stdin, self.pending)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:  # the process closed its stdin: stop reading ours
            self._close_in()
            return
        self.pending = self.pending[n:]
        if self.pending:
            self._watch(self.io.stdin, select.POLLOUT)
        else:
            self._watch(self.io.stdin, 0)
            self._watch(0, select.POLLIN)

    def _close_in(self) -> None:
        """The caller's stdin ended (or the process's did): the process reads end-of-file."""
        self._watch(0, 0)
        if self.io.stdin is not None:
            self._watch(self.io.stdin, 0)
            os.close(self.io.stdin)
            self.io.stdin = None
        self.pending = b""


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (kernel < 5.3): poll with waitid
        return None


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to the caller's ``fd`` (waiting when its file is non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


class Forward:
    """``with Forward() as fwd:`` the signals in :data:`FORWARDED` go to ``fwd.pid`` once it is
    set (those that came before are sent then), not to this process; the handlers are put back
    on exit."""

    def __init__(self) -> None:
        self._pid = 0
        self.early: list[int] = []
        self._old: dict[int, Any] = {}

    @property
    def pid(self) -> int:
        return self._pid

    @pid.setter
    def pid(self, pid: int) -> None:
        self._pid = pid
        for sig in self.early:
            self._send(sig)
        self.early.clear()

    def _send(self, sig: int) -> None:
        # To its process group (it leads one: setsid), as a terminal's ^C reaches every process
        # of the foreground group; our child until we reap it: the pid cannot be reused.
        try:
            os.killpg(self._pid, sig)
        except ProcessLookupError:
            try:
                os.kill(self._pid, sig)
            except ProcessLookupError:
                pass

    def _handler(self, sig: int, _frame: object) -> None:
        if self._pid:
            self._send(sig)
        else:
            self.early.append(sig)

    def __enter__(self) -> Forward:
        for sig in FORWARDED:
            if signal.getsignal(sig) == signal.SIG_IGN:
                continue  # ignored by whoever started us (nohup, a shell's background job): as before
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def let_go(log: int | None = None) -> None:
    """Before the answer of guestd's worker (berth.cli.run_guestd) or of the cleanup after its C
    waiter (berth _run-exit): this process lets the command's stdin, stdout and stderr go (/dev/null
    in their place; stderr ``log``, closed here, if given).  The command exits at the answer, and
    whoever reads its output through a pipe sees the end then, not when this process has done
    its cleanup after the answer and exited (~2.5 ms later: ``berth run ... | cmd``, a caller's
    ``subprocess.run(capture_output=True)``).  What is written after it goes to guestd's log."""
    null = os.open("/dev/null", os.O_RDWR)
    try:
        for target in (0, 1, 2):
            os.dup2(log if target == 2 and log is not None else null, target)
    finally:
        os.close(null)
        if log is not None:
            os.close(log)
