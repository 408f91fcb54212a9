"""Run one guest to completion: create, start, relay, wait, remove (``berth run``).

While the guest runs, ``berth run`` is either this Python process (a terminal to relay, limits to
poll) or, in the common case, ``berth-wait`` (src/berth/runtime/waiter.c): the same process
exec'd into a small C waiter that forwards signals to the guest and waits for it, then execs the
Python cleanup (``berth _run-exit``: :func:`finish_after_waiter`).  An idle interpreter costs
megabytes a guest; the waiter a few hundred KiB.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py imports enum, which costs milliseconds here
import os
import sys

from berth.cgroups import warm
from berth.linux import prctl
from berth.runtime import container

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
WAITER = "berth-wait"
#: Seconds berth run waits for its guest in Python before it becomes the C waiter: handing over
#: costs a second interpreter start for the cleanup (~15 ms here), which a short command (``berth
#: run -- true``) should not pay; a guest that runs longer pays it once for megabytes less.
WAITER_AFTER = 0.5


#: In guestd's worker (berth.cli.run_guestd): the socket to the command that asked; the C
#: waiter kills the guest if it is closed (the command was killed), as :func:`hang_up` does before.
HANGUP_FD: int | None = None
#: Set (to a list) by a caller that answers its command before it finishes a run's removal
#: (guestd's run worker, berth.cli.run_guestd): what can wait until after the answer is added
#: there (:meth:`berth.runtime.container.Container.delete`'s ``deferred``; the template use entry).
LATER: list[Callable[[], None]] | None = None
_forward: Callable[[int, Any], None] | None = None  # run()'s signal forwarding, once it runs
_hung_up = False


def hang_up() -> None:
    """The command that asked for this run is gone (guestd's worker): kill the guest, as a
    ``berth run`` process's guest dies with it; the run then cleans up as after any end."""
    global _hung_up
    _hung_up = True  # (a run() that has not begun yet kills its guest once it is made)
    forward = _forward
    if forward is not None:
        forward(signal.SIGKILL, None)


def waiter_path() -> str | None:
    """The C waiter beside the venv's interpreter (tools/launcher.sh builds it), if it is there."""
    path = os.path.join(os.path.dirname(sys.executable), WAITER)
    return path if os.access(path, os.X_OK) else None


def run(
    name: str,
    spec: dict[str, Any],
    *,
    state_root: str,
    cgroup_parent: str,
    overlay: dict[str, Any] | None,
    use_init: bool,
    interactive: bool,
    seccomp_cache: str | None = None,
    on_created: Callable[[container.Container], None] | None = None,
    on_exit: Callable[[container.Container], None] | None = None,
    cleanup_argv: Sequence[str] | None = None,
) -> int:
    """Create and start the guest, forward signals to it, relay its terminal, and return its
    exit status after everything it made is gone.  A forwarded signal that comes before the
    guest's command was started ends the run there (128+N): the command never runs.

    ``on_created`` runs once the guest exists (its namespaces and cgroup are there, its command
    not yet started): where the network is plugged in.  ``on_exit`` runs after the guest ended,
    before its cgroup and state are removed: where host-side objects are taken down.

    ``cleanup_argv``: a command that does what ``on_exit`` and the rest of the cleanup here do
    (:func:`finish_after_waiter`) when given the exit status as one more argument.  With it,
    once the guest runs (no terminal to relay, no limits to poll) this process execs the C waiter,
    which waits for the guest and then execs that command: this call does not return then.
    """
    target = {"pid": 0}
    pending: list[int] = []

    def forward(sig: int, _frame: Any) -> None:
        if target["pid"]:
            try:
                os.kill(target["pid"], sig)
            except ProcessLookupError:
                pass
        else:
            pending.append(sig)

    global _forward
    _forward = forward
    if _hung_up:
        pending.append(signal.SIGKILL)
    for sig in FORWARDED:
        signal.signal(sig, forward)
    # The guest's init is reparented to us when the intermediate child exits.
    # (Restored afterwards: a library caller must not stay the reaper of unrelated orphans.)
    was_subreaper = prctl.get_child_subreaper()
    prctl.set_child_subreaper(True)
    terminal = bool((spec.get("process") or {}).get("terminal"))
    if not interactive and not terminal:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    try:
        c = container.create(
            name,
            spec,
            state_root=state_root,
            bundle=os.getcwd(),
            cgroup_parent=cgroup_parent,
            overlay=overlay,
            use_init=use_init,
            watch_parent=True,
            seccomp_cache=seccomp_cache,
            zygote=_ahead(),
        )
    finally:
        warm.settle()  # the init attached itself (berth.cgroups.warm, from berth.cli.run)

    def release() -> None:
        # The command runs (exec'd): signals go to it from now on, and those that came while
        # it was being started go now.  (Before, its init, pid 1 of its namespace, would drop
        # them: it has no handler until the command, or tini, sets one.)
        c.start()
        if pending:
            # Exec'd, but tini (or the command) may not have its signals blocked or caught yet:
            # pid 1 of its namespace, it would drop one sent now (a ^C lost, the run going on).
            # (Signals meanwhile are queued too.)
            _until_taken(c.pid, pending, INIT_SIGNALS_WAIT)
        target["pid"] = c.pid
        for sig in pending:
            os.kill(c.pid, sig)
        pending.clear()

    try:
        if on_created is not None:
            on_created(c)
        if pending:
            return 128 + pending[0]  # a signal before the command was started: it never runs
        if c.console_fd is not None:
            from berth.runtime.console import Relay

            with Relay(c.console_fd) as relay:
                release()
                relay.pump()
        else:
            release()
        if (c.data.get("berth") or {}).get("limits"):
            from berth.runtime import supervise

            sup = supervise.supervisor_for(c)  # ANON / MEMLOCK limits: poll the guest while waiting
            if sup is not None:
                return supervise.wait(c.pid, sup)
        if cleanup_argv is not None and c.console_fd is None and not _ends_within(c.pid, WAITER_AFTER):
            _exec_waiter(c.pid, cleanup_argv)  # returns only if the waiter cannot run
        return container.wait_exit(c.pid)
    finally:
        target["pid"] = 0
        try:
            finish(c, cgroup_parent, on_exit)
        finally:
            if not was_subreaper:
                prctl.set_child_subreaper(False)
        # If the guest's init died before wait_exit (a failed start), it is still our zombie.
        container.reap(c.pid)


#: How long (s) a signal that came while the guest was started waits for the guest's init to
#: block or catch it (:func:`_until_taken`) before it is sent anyway.
INIT_SIGNALS_WAIT = 0.5


def _until_taken(pid: int, sigs: list[int], seconds: float) -> None:
    """Wait until ``pid`` blocks or catches each of ``sigs`` (its SigBlk and SigCgt), at most
    ``seconds``; return at once if it is gone."""
    import time

    want = 0
    for sig in sigs:
        want |= 1 << (sig - 1)
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        except OSError:
            return
        if fields.get(b"State", b"").strip().startswith((b"Z", b"X")):
            return  # it ended: nothing will take them
        taken = int(fields.get(b"SigBlk", b"0").strip(), 16) | int(fields.get(b"SigCgt", b"0").strip(), 16)
        if taken & want == want or time.monotonic() >= deadline:
            return
        time.sleep(0.0002)


def _ahead() -> Any:
    """The init guestd's spare worker forked ahead (berth.runtime.zygote), if this process is
    one (a run guestd's worker does: berth.cli.run_guestd), else None."""
    zygote = sys.modules.get("berth.runtime.zygote")
    return zygote.take() if zygote is not None else None


def finish(
    c: container.Container, cgroup_parent: str, on_exit: Callable[[container.Container], None] | None
) -> None:
    """After the guest ended: ``on_exit``, then remove its processes, cgroup and state, and the
    cgroup parents it leaves empty."""
    try:
        if on_exit is not None:
            on_exit(c)
    finally:
        cg = c.cgroup()
        c.delete(force=True, deferred=LATER)
        if cg is not None and cg.path.startswith(cgroup_parent.strip("/") + "/"):
            # The parent goes with the last guest under it (a racing create retries).
            cg.remove_empty_parents(cgroup_parent)


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether our child ``pid`` ends within ``seconds`` (not reaped: :func:`container.wait_exit`
    does that).  Signals are forwarded meanwhile."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return True  # let wait_exit find out
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(int(seconds * 1000)))  # (retried after a forwarded signal: PEP 475)
    finally:
        os.close(fd)


def _exec_waiter(pid: int, cleanup_argv: Sequence[str]) -> None:
    """Become the C waiter for ``pid`` (same process: the guest's init stays our child, its
    parent-death signal armed).  The forwarded signals are blocked across the exec: one that
    comes meanwhile stays pending until the waiter has its handlers.  Returns (signals unblocked)
    if the waiter is missing or cannot be exec'd."""
    waiter = waiter_path()
    if waiter is None:
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    # (pthread_sigmask runs the Python handlers of signals caught before the block: forwarded.)
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    hangup = [] if HANGUP_FD is None else ["--hangup", str(HANGUP_FD)]
    argv = [waiter, *hangup, str(pid), ",".join(str(int(s)) for s in FORWARDED), *cleanup_argv]
    try:
        os.execv(waiter, argv)
    except OSError:
        pass
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)


def finish_after_waiter(
    state_root: str,
    cid: str,
    cgroup_parent: str,
    on_exit: Callable[[container.Container], None] | None = None,
) -> None:
    """The cleanup of :func:`run` once the waiter's guest ended (``berth _run-exit``): the
    forwarded signals (blocked by the waiter) are caught and dropped, as :func:`run` does
    while it cleans up, then :func:`finish`."""
    for sig in FORWARDED:
        signal.signal(sig, _ignore)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    from berth.errors import NotFoundError

    try:
        c = container.Container.load(state_root, cid)
    except NotFoundError:
        # Its state was removed meanwhile (berth gc of a stopped guest): what it had on the
        # host (network: lease, rules, class) is still known from here, and goes.
        if on_exit is not None:
            on_exit(_Gone(cid))  # type: ignore[arg-type]
        return
    finish(c, cgroup_parent, on_exit)


class _Gone:
    """A guest whose state is gone, as ``on_exit`` sees it: its id, no cgroup."""

    def __init__(self, cid: str) -> None:
        self.id = cid

    def cgroup(self) -> None:
        return None


def _ignore(_sig: int, _frame: Any) -> None:
    pass
