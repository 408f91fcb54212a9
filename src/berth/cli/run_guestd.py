"""``berth run`` served by guestd's worker for the compiled launcher (src/berth/guests/fastclient.c),
which starts no Python: registered as the worker's ``run`` request (berth.guests.worker.HANDLERS)
when guestd preloads this module."""

from __future__ import annotations

import os

from berth.guests import worker
from berth.runtime import stdio  # (loaded with this module: the run path imports nothing)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any


def serve(req: dict[str, Any], conn: socket.socket | None) -> int:
    """``berth run`` for the compiled launcher (src/berth/guests/fastclient.c), which started
    no Python: the command's arguments after ``run`` (``argv``), its environment (``env``) and
    its stdin, stdout, stderr and working directory (``fds``, passed with the request) become
    this worker's, and the run goes on here as berth.cli.run does it, with this worker for
    berth run's process: the launcher forwards its signals to this pid, and the last line is
    ``{"exit": STATUS}``.  If the guest still runs after berth.runtime.run.WAITER_AFTER, this
    process becomes the C waiter, and the cleanup after it (``berth _run-exit``) writes that
    line.  Options the launcher cannot serve (a terminal to relay, help, a usage error: the
    Python launcher gives its message) are answered ``{"fallback": true}`` before anything is
    made, and the launcher hands the command to Python."""
    fds = req.get("fds") or []
    if conn is None or len(fds) != 4:
        return 1
    import signal

    from berth.runtime import zygote

    # As in a berth run process: SIGINT (the launcher's, forwarded) is KeyboardInterrupt until
    # the run forwards it to the guest, so what was made so far is removed (berth.cli.main: 130).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        ok = _run_fits(req, fds)
    except KeyboardInterrupt:
        zygote.discard()
        worker.reply(conn, {"exit": 130})  # interrupted before anything was made
        return 0
    except BaseException:
        ok = False
    if not ok:
        zygote.discard()
        worker.reply(conn, {"fallback": True})
        return 0
    import sys
    import threading

    from berth import cli
    from berth.cli import run as cli_run
    from berth.guests import instance
    from berth.runtime import run as runner

    instance.site_packages()  # guestd has none (python -I -S): pyroute2 for --net bridge, ip:

    log = os.dup(2)  # guestd's log: this worker's stderr again once the command has its answer
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)  # (inheritable: the guest's stdio, as a berth run process's)
    for fd in fds:
        os.close(fd)
    conn.settimeout(None)
    conn.set_inheritable(True)
    cli_run.REPLY_FD = conn.fileno()  # the C waiter's cleanup (berth _run-exit) replies
    runner.HANGUP_FD = conn.fileno()  # and the C waiter watches it
    runner.LATER = []  # the run's state directory's tombstone (...) is removed after the answer
    if _watcher[0] == os.getpid():  # started ahead by the spare: told which socket
        os.write(_watcher[1], b"%d" % conn.fileno())
        os.close(_watcher[1])
    else:
        threading.Thread(target=_watch_asker, args=(conn.fileno(),), daemon=True).start()
    status = 125
    try:
        status = cli.main(["run", *req["argv"]])
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        zygote.discard()  # if the guest did not take it
        stdio.let_go(log)
        worker.reply(conn, {"exit": status})
        _after_answer(runner.LATER)
    return 0


def _after_answer(later: list[Any]) -> None:
    """What the run left for after the answer (berth.runtime.run.LATER): its state directory,
    renamed to a tombstone before it (its id was free then), the other guests' CPU weights
    without it, its template use entry.  Each is done even if one fails; what is left if this
    worker is killed meanwhile is berth gc's (tombstones: berth.runtime.state.sweep) or the next
    create's (the resources index drops a gone guest)."""
    import sys

    while later:
        try:
            later.pop(0)()
        except Exception as e:  # reported, and the rest still done
            sys.stderr.write(f"berth: warning: after the run: {e}\n")


def _watch_asker(fd: int) -> None:
    """A run's: if the command that asked is killed (its socket ``fd`` closed), kill the guest."""
    import select

    from berth.runtime import run as runner

    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)
    while True:
        events = poller.poll()
        if any(
            ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL) for _fd, ev in events
        ):
            runner.hang_up()
            return


#: The namespaces a process's children are born in (berth run --net host: the command's network).
_NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
#: The /proc/self/status lines a forked child inherits the meaning of.
_STATUS_KEYS = (
    "Umask:", "NoNewPrivs:", "Seccomp:", "Seccomp_filters:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:",
    "CapAmb:", "Cpus_allowed_list:", "Mems_allowed_list:",
)  # fmt: skip


def context() -> str:
    """What this process hands down to its children that a guest of ``berth run`` inherits from
    the command (fastclient.c's ``context``, the same text): its namespaces, umask, no_new_privs,
    seccomp, capabilities, CPU and memory affinity, resource limits, oom_score_adj, nice value
    and scheduling policy.  A run whose command differs in any of these is the Python launcher's,
    so that the guest is what it would have been."""
    out = []
    for ns in _NAMESPACES:
        try:
            out.append(os.readlink(f"/proc/self/ns/{ns}") + "\n")
        except OSError:
            out.append("\n")
    with open("/proc/self/status") as f:
        out += [line for line in f if line.startswith(_STATUS_KEYS)]
    for path in ("/proc/self/limits", "/proc/self/oom_score_adj"):
        with open(path) as f:
            out.append(f.read())
    out.append(f"nice {os.getpriority(os.PRIO_PROCESS, 0)}\npolicy {os.sched_getscheduler(0)}\n")
    return "".join(out)


def _run_fits(req: dict[str, Any], fds: list[int]) -> bool:
    """Take the command's environment and working directory; can this worker run it?  (It was
    asked from where this worker's children are born as the command's would be (:func:`context`),
    guestd runs the code on disk, its options parse, and it needs no terminal.)"""
    from berth.cli import run as cli_run

    argv = req.get("argv")
    env = req.get("env")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or not isinstance(env, dict):
        return False
    if req.get("context") != (_ahead[1] if _ahead[0] == os.getpid() else context()):
        return False
    from berth.guests import specinputs

    if worker.LOADED_STAMP is None or specinputs.code_stamp() != worker.LOADED_STAMP:
        return False  # berth changed on disk since guestd loaded it: the new code runs it
    if any(a in ("-h", "--help") for a in argv):
        return False
    want = {str(k): str(v) for k, v in env.items()}
    for key in [k for k in os.environ if k not in want]:  # (a difference: most are guestd's too)
        del os.environ[key]
    for key, value in want.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    os.fchdir(fds[3])
    o = cli_run.parse(list(argv))
    return not o["tty"]


#: (pid, :func:`context`) computed by a spare worker while it waited (:func:`context_ahead`).
_ahead: tuple[int, str] = (0, "")


def context_ahead() -> None:
    """In a spare worker, before it waits: its :func:`context`, which nothing of its own changes
    until the request (a run's worker compares it with the command's); and the thread that will
    watch the command's socket (:func:`_watch_asker`), started now, waiting to be told which."""
    import _thread

    global _ahead, _watcher
    _ahead = (os.getpid(), context())
    r, w = os.pipe2(os.O_CLOEXEC)
    _thread.start_new_thread(_watch_when_told, (r,))
    _watcher = (os.getpid(), w)


#: (pid, the write end of the pipe the watching thread started ahead reads) (:func:`context_ahead`).
_watcher: tuple[int, int] = (0, -1)


def _watch_when_told(r: int) -> None:
    """The watching thread started ahead: the socket's descriptor comes through ``r`` (nothing:
    the spare served another request)."""
    try:
        told = os.read(r, 32)
    finally:
        os.close(r)
    if told:
        _watch_asker(int(told))


worker.HANDLERS["run"] = serve
worker.AHEAD.append(context_ahead)
