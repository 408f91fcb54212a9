"""OCI hooks: programs the runtime calls at fixed points of a container's life.

When each phase runs (the runtime spec's order, as runc does it):

================  ==========================================  =====================================
phase             called                                      where
================  ==========================================  =====================================
prestart          ``create``, namespaces and mounts made,     the runtime's namespaces
                  before pivot_root (deprecated alias)
createRuntime     right after prestart                        the runtime's namespaces
createContainer   right after createRuntime                   the container's namespaces, host paths
startContainer    ``start``, just before the command's exec   inside the container (its paths)
poststart         ``start``, after the command was released   the runtime's namespaces
poststop          ``delete``, after the container is gone     the runtime's namespaces
================  ==========================================  =====================================

Each hook gets the container's state (the spec's state JSON) on stdin.  A hook that fails or
outlives its ``timeout`` fails ``create``/``start`` (phases up to startContainer); a failing
poststart or poststop hook is only a warning.  A hook's output is read while it runs and
only its end kept (:func:`run_one`).  Kept import-light: subprocess is imported only when a
hook actually runs.
"""

from __future__ import annotations

import os

from berth.errors import ContainerInitError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CREATE_PHASES = ("prestart", "createRuntime")
CONTAINER_PHASES = ("createContainer", "startContainer")
FATAL = frozenset({"prestart", "createRuntime", "createContainer", "startContainer"})


class HookError(ContainerInitError):
    """An OCI hook exited with a failure, was killed, or ran past its timeout."""


def state_json(state: dict[str, Any]) -> bytes:
    from berth.runtime.state import dumps

    return dumps(state).encode()


def wanted(spec_hooks: dict[str, Any] | None, *phases: str) -> bool:
    """Does the spec name any hook for one of ``phases``?"""
    return any((spec_hooks or {}).get(p) for p in phases)


def run(spec_hooks: dict[str, Any] | None, phase: str, state: dict[str, Any]) -> None:
    """Run every hook of ``phase`` in order; the first failure raises :class:`HookError`."""
    hooks = (spec_hooks or {}).get(phase) or []
    if not hooks:
        return
    data = state_json(state)
    for i, hook in enumerate(hooks):
        run_one(hook, data, f"hooks.{phase}[{i}]")


def run_one(hook: dict[str, Any], stdin: bytes, field: str) -> None:
    """Run one hook.  Its output (stdout and stderr) goes to a pipe read here while the hook
    runs, not to our stdout and stderr (for ``create`` they are the container's: a hook's
    chatter would end in its log); only its last :data:`KEEP` bytes are kept, for the last line
    in the error of a failure (as runc reports it).  Read as it comes, so a hook never waits on
    its output however much it writes; kept bounded, so a hook writing without end until its
    timeout costs us no more memory.  The hook's end is its exit (a pidfd), not its output's:
    a daemon it leaves behind cannot keep us waiting (it finds the pipe closed, as it would
    once runc exits)."""
    import subprocess

    path = hook["path"]
    args = list(hook.get("args") or [path])
    env = dict(item.split("=", 1) if "=" in item else (item, "") for item in hook.get("env") or [])
    timeout = hook.get("timeout")
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    tail = Tail()
    try:
        try:
            proc = subprocess.Popen(
                args, executable=path, stdin=in_r, stdout=out_w, stderr=out_w, env=env,
                close_fds=True, cwd="/",
            )  # fmt: skip
        except OSError as e:
            raise HookError(f"{field}: cannot run {path!r}: {e.strerror}") from None
        finally:
            os.close(out_w)
            os.close(in_r)
        fd, in_w = in_w, -1  # _communicate closes it, whatever happens
        in_time = _communicate(proc, stdin, fd, out_r, tail, timeout)
    finally:
        if in_w >= 0:
            os.close(in_w)
        os.close(out_r)
    if not in_time:
        raise HookError(
            f"{field}: {path!r} did not finish within its timeout of {timeout}s{_last_line(tail.data())}"
        )
    if proc.returncode != 0:
        how = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit status {proc.returncode}"
        )
        raise HookError(f"{field}: {path!r} failed ({how}){_last_line(tail.data())}")


#: How much of a hook's output is kept (its end: where the reason of a failure is).
KEEP = 64 * 1024
_CHUNK = 65536
# After the hook's exit, what is read still (what it wrote last, in the pipe; a daemon it left
# may write on: not waited for).
_DRAIN = 16 * _CHUNK


class Tail:
    """The last ``limit`` bytes of a stream fed in chunks; the rest dropped as it comes (the
    buffer stays under twice ``limit`` plus a chunk)."""

    def __init__(self, limit: int = KEEP) -> None:
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._buf += chunk
        extra = len(self._buf) - self.limit
        if extra > self.limit:  # trimmed in batches: amortized constant work a byte
            del self._buf[:extra]

    def data(self) -> bytes:
        return bytes(self._buf[-self.limit :]) if self._buf else b""


def _communicate(proc: Any, data: bytes, in_fd: int, out_fd: int, tail: Tail, timeout: float | None) -> bool:
    """Give the hook ``data`` on ``in_fd`` (closed here) and feed ``tail`` with its output until
    it exits; False if it ran past ``timeout`` (it is killed then).  Either way it is reaped."""
    import select
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    exited: int | None = None
    in_time = done = False
    try:
        try:
            exited = os.pidfd_open(proc.pid)
        except OSError:
            pass  # (a seccomp profile without pidfd_open, in the container): poll its status
        poller = select.poll()
        poller.register(out_fd, select.POLLIN)
        if exited is not None:
            poller.register(exited, select.POLLIN)
        pending = memoryview(data)
        os.set_blocking(in_fd, False)
        if pending:
            poller.register(in_fd, select.POLLOUT)
        else:
            os.close(in_fd)
            in_fd = -1
        while not done:
            wait = None if exited is not None else 10  # (ms; None: until something comes)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait = int(left * 1000) + 1 if wait is None else min(wait, int(left * 1000) + 1)
            for fd, _event in poller.poll(None if wait is None else min(wait, 2**31 - 1)):
                if fd == out_fd:
                    chunk = os.read(out_fd, _CHUNK)
                    if chunk:
                        tail.feed(chunk)
                    else:
                        poller.unregister(out_fd)  # every writer closed it: only the exit to wait for
                elif fd == in_fd:
                    try:
                        pending = pending[os.write(in_fd, pending[:_CHUNK]) :]
                    except BlockingIOError:
                        continue
                    except OSError:
                        pending = pending[:0]  # (EPIPE: it closed its stdin unread)
                    if not pending:
                        poller.unregister(in_fd)
                        os.close(in_fd)
                        in_fd = -1
                elif fd == exited:
                    done = True
            if exited is None and proc.poll() is not None:
                done = True
        in_time = done
    finally:
        if in_fd >= 0:
            os.close(in_fd)
        if exited is not None:
            os.close(exited)
        if not in_time:
            proc.kill()
        proc.wait()
    os.set_blocking(out_fd, False)
    for _ in range(_DRAIN // _CHUNK):
        try:
            chunk = os.read(out_fd, _CHUNK)
        except BlockingIOError:
            break
        if not chunk:
            break
        tail.feed(chunk)
    return in_time


def _last_line(data: bytes, limit: int = 200) -> str:
    """``": <the last line the hook wrote>"`` (shortened), or "" if it wrote nothing."""
    lines = [ln.strip() for ln in data[-4096:].decode(errors="replace").splitlines() if ln.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return ": " + (last if len(last) <= limit else last[: limit - 3] + "...")


def run_or_warn(spec_hooks: dict[str, Any] | None, phase: str, state: dict[str, Any], warn: Any) -> None:
    """Run a phase whose failures must not fail the operation (poststart, poststop): each
    failure is a warning and the remaining hooks still run (runtime-spec lifecycle 10, 13)."""
    hooks = (spec_hooks or {}).get(phase) or []
    if not hooks:
        return
    data = state_json(state)
    for i, hook in enumerate(hooks):
        try:
            run_one(hook, data, f"hooks.{phase}[{i}]")
        except HookError as e:
            warn(str(e))
