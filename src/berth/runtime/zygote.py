"""A guest's init forked ahead: pid 1 of a new pid namespace, waiting for its container.

A container's start forks twice from a Python process of some megabytes (the runtime's
intermediate child, then the init after ``unshare(CLONE_NEWPID)``), and each child pays a
copy-on-write fault for every page of the parent it writes, Python's reference counts touching
hundreds of them (~4 us a fault on a virtual machine: a few milliseconds a start).  guestd's
spare worker, which waits for the next request anyway, forks the next init ahead instead
(:func:`fork_ahead`): in a new pid namespace of its own (the spare's ``pid_for_children`` is set
back at once), the pages an init writes copied while nobody waits (berth.runtime.pages: as the
last init forked ahead recorded them).  A start whose guest can
use it (:func:`berth.runtime.init.in_place_fits`: no user namespace, a new pid namespace, no
time namespace) hands it the container (:func:`hand_over`), and it goes on as
:func:`berth.runtime.init.stage1_in_place`, joining the cgroup and the other namespaces itself;
the start forks nothing.  Unused, it ends with the spare (the end of its socket).

What the init would have inherited at its fork it gets with the container: the starter's
stdio (a guest's console log) and the descriptors its options name.
"""

from __future__ import annotations

import os
import socket

from berth.linux.ns import Clone, setns, unshare

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.runtime.init import InitOptions

#: The largest container message (the spec, the options with the compiled seccomp program).
MAX_MESSAGE = 4 << 20
READY = b"r"  # the init forked ahead has copied its pages: a start may take it


class Zygote:
    """The init forked ahead: its pid on the host and our end of its socket."""

    def __init__(self, pid: int, sock: socket.socket, modules: frozenset[str] = frozenset()) -> None:
        self.pid = pid
        self.sock = sock
        self.modules = modules  # what it has imported: ours when we forked it

    def discard(self) -> None:
        """End it (not used): kill and reap it."""
        self.sock.close()
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


_ahead: Zygote | None = None


def fork_ahead(close: list[int] | None = None, home: str | None = None) -> None:
    """In guestd's spare worker (one thread, before it waits): fork the next guest's init now,
    as pid 1 of a new pid namespace, kept for :func:`take`.  ``close``: descriptors the init must
    not hold (the spare's socket to guestd).  ``home``: guestd's directory, where the record of
    the pages an init writes is (berth.runtime.pages.INITS): the init copies them ahead, and records them
    again if it had to fault for more.  Nothing is kept if the kernel refuses; an error
    setting the spare's own ``pid_for_children`` back is raised (its later children would be
    born in the init's namespace)."""
    global _ahead
    try:
        own = os.open("/proc/self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            unshare(Clone.NEWPID)
        except OSError:
            a.close()
            b.close()
            return
        try:
            pid = os.fork()
        except BaseException:
            setns(own, Clone.NEWPID)
            raise
        if pid == 0:
            code = 1
            try:
                for fd in (a.detach(), own, *(close or ())):
                    os.close(fd)
                code = _wait(b, home)
            finally:
                os._exit(code)
        setns(own, Clone.NEWPID)  # our next children are born beside us again
        b.close()
        import sys

        _ahead = Zygote(pid, a, frozenset(sys.modules))
    finally:
        os.close(own)


def take() -> Zygote | None:
    """The init forked ahead in this process (once), or None."""
    global _ahead
    z, _ahead = _ahead, None
    return z


def discard() -> None:
    """End the init forked ahead if no start took it."""
    z = take()
    if z is not None:
        z.discard()


def hand_over(z: Zygote, spec: dict[str, Any], opts: InitOptions, cgroup: Any, sock: socket.socket) -> bool:
    """Give ``z`` its container: the spec, the init's options, the cgroup and the init's end of
    the sync socket, with our stdio.  False if it is not ready (still copying its pages: a start
    right after the spare's fork would wait for that) or gone; it is ended then, and the caller
    forks as before.

    Given before the cgroup is made: the init takes the container while the caller makes it,
    and waits for the caller's ``cgroup`` message (``join``: False if there is none) before it
    joins it and then its namespaces (:func:`berth.runtime.init.stage1_in_place`)."""
    import pickle

    fds = [sock.fileno(), 0, 1, 2]
    if opts.init_fd is not None:
        fds.append(opts.init_fd)
    try:
        if z.sock.recv(1, socket.MSG_DONTWAIT) != READY:
            raise EOFError  # it ended
        import sys

        # what we imported since its fork (lazily, for the init: it cannot import past pivot_root)
        modules = [m for m in sys.modules if m not in z.modules and m != "__main__"]
        data = pickle.dumps((spec, opts, cgroup, z.pid, modules), protocol=pickle.HIGHEST_PROTOCOL)
        socket.send_fds(z.sock, [data], fds)
    except Exception:  # still copying its pages (BlockingIOError), died waiting, or what it
        z.discard()  # needs does not travel: the caller forks as before
        return False
    z.sock.close()
    return True


def _import_missing(modules: list[str]) -> None:
    """Import what the starter imported after our fork: an init forked at the start would have
    it (the runtime imports what the init needs past pivot_root, the Landlock binding, before
    it forks).  Best effort: a module that fails here fails where the init uses it, as before."""
    import importlib
    import sys

    for name in modules:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # (see above)
                continue


def _wait(sock: socket.socket, home: str | None = None) -> int:
    """The init forked ahead: copy the pages an init writes, wait for a container, become its
    init (which records its pages if it faulted for more: berth.runtime.pages.finish)."""
    import pickle

    from berth.runtime import init, pages

    if home is not None:
        path = os.path.join(home, pages.INITS)
        pages.own(pages.load(path))
        out = pages.open_record(path)
        if out is not None:
            pages.pending = pages.Recorder(out=out)
    sock.send(READY)
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 8)
    sock.close()
    if not data or len(fds) < 4:
        return 0  # the spare let us go (or never used us)
    spec, opts, cgroup, pid, modules = pickle.loads(data)  # noqa: S301 - our own parent, same interpreter
    _import_missing(modules)
    child = socket.socket(fileno=fds[0])
    for target, fd in zip((0, 1, 2), fds[1:4], strict=True):
        os.dup2(fd, target)
        os.close(fd)
    if opts.init_fd is not None:
        opts.init_fd = fds[4]
    init.stage1_in_place(spec, opts, child, cgroup, pid)
    return 1  # not reached: the init execs or exits
