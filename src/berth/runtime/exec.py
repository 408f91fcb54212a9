"""Run one more process inside an existing container (``berth-runtime exec``, ``berth exec``).

Two forked children, as for the container's init (:mod:`berth.runtime.init`): ``stage1``
joins the container's cgroup and its namespaces (``/proc/PID/ns/*`` of the init, the user
namespace first) and forks, so the new process is inside the container's pid namespace too;
``stage2`` applies the OCI ``process`` object (rlimits, no_new_privs, seccomp, user, groups,
capabilities, cwd, env, terminal) and execs.  A failure before the exec is sent to the caller
as one line and raised there.

When the caller waits (``detach=False``) it becomes a child subreaper, so the new process
(whose parent, stage1, exits) is reparented to it and :meth:`ExecHandle.wait` can collect it.
"""

from __future__ import annotations

import _signal as signal
import os

from berth.errors import ContainerInitError, StateError
from berth.linux import prctl
from berth.linux.ns import NAMESPACES, setns
from berth.runtime import container as ct
from berth.runtime import cwd as workdir
from berth.runtime import executable, scope, sync
from berth.runtime import process as proc_mod
from berth.runtime import state as st
from berth.runtime.init import _fail, _join_session_keyring, open_pty, restrict_scopes, take_terminal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# /proc/PID/ns entries in the order they are joined: the user namespace first (it grants the
# rights for the others), the mount namespace last but one (it changes root and cwd), pid last
# (it only takes effect for children).
NS_ORDER = ("user", "cgroup", "ipc", "uts", "net", "time", "mnt", "pid")


class ExecHandle:
    """A process started inside a container.

    ``pid`` is its host pid; ``console_fd`` the pty master when ``process.terminal`` was set and
    no console socket was given (the caller relays it and closes it); :meth:`wait` returns the exit
    status (128+N when killed by signal N) and works when the handle was made with ``detach=False``.
    """

    def __init__(
        self, pid: int, console_fd: int | None, *, waitable: bool, restore_subreaper: bool = False
    ) -> None:
        self.pid = pid
        self.console_fd = console_fd
        self.waitable = waitable
        self._restore_subreaper = restore_subreaper

    def wait(self) -> int:
        if not self.waitable:
            raise StateError("a detached exec cannot be waited for (it is not our child)")
        try:
            return ct.wait_exit(self.pid)
        finally:
            if self._restore_subreaper:
                # We became a subreaper only to adopt this process: stop adopting other orphans.
                prctl.set_child_subreaper(False)
                self._restore_subreaper = False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


def exec_process(
    state_root: str,
    cid: str,
    process: dict[str, Any],
    *,
    console_socket: str | None = None,
    pid_file: str | None = None,
    detach: bool = False,
    preserve_fds: int = 0,
    warn: Callable[[str], None] | None = None,
    close_in_child: tuple[int, ...] = (),
) -> ExecHandle:
    """Start ``process`` (an OCI ``process`` object) in container ``cid``; return once it exec'd.
    ``close_in_child``: fds of ours the child closes at once, before it joins anything (the
    caller's terminal, kept for a relay: close-on-exec is not enough, a guest process with
    CAP_SYS_PTRACE could open it through /proc/PID/fd before the exec).

    Raises :class:`StateError` when the container is not created or running (paused: resume it
    first), and the usual 126/127 errors when the command cannot be run.
    """
    c = ct.Container.load(state_root, cid)
    status = c.status()
    if status not in (st.CREATED, st.RUNNING):
        raise StateError(f"container {cid!r} is {status}: cannot exec in a container that is not running")
    if not process.get("args"):
        from berth.errors import UsageError

        raise UsageError("process.args", "must not be empty")
    init_pid = c.pid
    seccomp = None
    sfile = os.path.join(c.dir, "seccomp.bpf")
    if os.path.exists(sfile):
        with open(sfile, "rb") as f:
            seccomp = f.read()
    cg = c.cgroup()
    # The container's Landlock scopes (berth.runtime.scope): a new domain, a sibling of the
    # container's (none can be joined), so the process reaches no abstract socket of the host's,
    # nor one of the container's own processes (and they none of its).
    scopes = scope.applied(c.data)
    # Everything the children use is imported at the top of this module, and the seccomp and
    # Landlock bindings here: once in the container's mount namespace imports are sealed off.
    if seccomp:
        from berth.linux import seccomp as _seccomp  # noqa: F401
    if scopes:
        from berth.linux import landlock as _landlock  # noqa: F401
    # A new anonymous session keyring, not the caller's (as the init's: berth.runtime.container),
    # unless the container keeps its starter's (berth-runtime --no-new-keyring).
    keyring = not (c.data.get("berth") or {}).get("shared_keyring")
    if keyring:
        from berth.linux import libc as _libc  # noqa: F401  (the keyctl call's)
    restore = False
    if not detach and not prctl.get_child_subreaper():
        prctl.set_child_subreaper(True)
        restore = True
    parent_sock, child_sock = sync.pair()
    stage1_pid = os.fork()
    if stage1_pid == 0:
        for fd in close_in_child:
            try:
                os.close(fd)
            except OSError:
                pass
        parent_sock.close()
        _stage1(init_pid, process, cg, seccomp, child_sock, preserve_fds, scopes, keyring)
        os._exit(1)  # not reached
    child_sock.close()
    pid = 0
    console_fd = None
    try:
        while True:
            msg, fds = sync.recv(parent_sock)
            if msg is None:
                break  # stage1 exited and stage2 exec'd: both ends closed
            kind = msg["type"]
            if kind == "pid":
                pid = msg["pid"]
                os.waitpid(stage1_pid, 0)
                stage1_pid = 0
            elif kind == "console":
                console_fd = fds[0]
            elif kind == "warning":
                (warn or ct._stderr_warn)(msg["msg"])
            elif kind == "error":
                if pid and not detach:
                    ct.reap(pid)
                raise ct._ERRORS.get(msg.get("code", 1), ContainerInitError)(msg["msg"])
        if not pid:
            raise ContainerInitError(f"exec in {cid!r}: the process exited without a word")
    except BaseException:
        if console_fd is not None:
            os.close(console_fd)
        raise
    finally:
        if stage1_pid:
            os.waitpid(stage1_pid, 0)
        parent_sock.close()
    if pid_file:
        tmp = f"{pid_file}.tmp"
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.rename(tmp, pid_file)
    if console_fd is not None and console_socket:
        ct._send_console(console_socket, console_fd)
        os.close(console_fd)
        console_fd = None
    return ExecHandle(pid, console_fd, waitable=not detach, restore_subreaper=restore)


def _same_ns(kind: str, init_pid: int) -> bool:
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino == os.stat(f"/proc/{init_pid}/ns/{kind}").st_ino
    except FileNotFoundError:
        return True  # the kernel lacks this namespace type


def _stage1(
    init_pid: int,
    process: dict[str, Any],
    cg: Any,
    seccomp: bytes | None,
    sock: Any,
    preserve_fds: int,
    scopes: int = 0,
    keyring: bool = True,
) -> None:
    """Join the container (cgroup, namespaces), fork the process; report its pid and exit.

    Every module it needs is imported at the top of this file: once in the container's mount
    namespace an import would read the guest's files (see process.seal_imports).
    """
    flag_of = {entry: flag for flag, entry in NAMESPACES.values()}

    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        # Non-dumpable before joining: guest processes cannot open our /proc entries (exe, fds, mem).
        prctl.set_dumpable(False)
        if cg is not None:
            cg.add(os.getpid(), near=init_pid)  # a delegated v2 cgroup: init's sub-cgroup
        # Open them all first: once in the container's mount namespace /proc is the container's
        # (what we need of our own /proc later is read through the runtime's, held open here).
        executable.hold_host_proc()
        opened = []
        for kind in NS_ORDER:
            if not _same_ns(kind, init_pid):
                opened.append((kind, os.open(f"/proc/{init_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)))
        if keyring:
            # The caller's keys stay the caller's; joined before the guest's user namespace: charged
            # to us, not to the guest's uid, whose key quota the guest can fill.
            _join_session_keyring()
        for kind, fd in opened:
            setns(fd, flag_of[kind])
            os.close(fd)
        proc_mod.seal_imports()
        if any(kind == "user" for kind, _ in opened):
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        pid = os.fork()
        if pid == 0:
            _stage2(process, seccomp, sock, preserve_fds, scopes)
        sync.send(sock, "pid", pid=pid)
        os._exit(0)
    except BaseException as e:
        _fail(sock, e)


def _stage2(
    process: dict[str, Any],
    seccomp: bytes | None,
    sock: Any,
    preserve_fds: int,
    scopes: int = 0,
) -> None:
    """In the container: the process's settings, then exec."""
    try:
        os.setsid()
        proc_mod.warn = lambda text: sync.send(sock, "warning", msg=text)
        if process.get("terminal"):
            master, slave = open_pty("/dev/pts/ptmx")  # the container's devpts: we are in its root
            take_terminal(sock, master, slave, process.get("consoleSize"))
        proc_mod.set_rlimits(process.get("rlimits") or [], strict=False)
        proc_mod.set_oom_score_adj(process.get("oomScoreAdj"))
        env = proc_mod.with_home(
            list(process.get("env") or []), int((process.get("user") or {}).get("uid") or 0)
        )
        cwd = process.get("cwd") or "/"
        # Resolved in the container's root without magic links (berth.runtime.cwd: we hold the
        # host's /proc) and entered by fd: the command is looked up from there (".").
        workdir.enter(cwd, where="container")
        exe = executable.open_executable(process["args"], env, ".", creds=executable.Creds.of(process))
        executable.release_host_proc()  # nothing more is read through it: closed before the user's walk
        if scopes:
            restrict_scopes(scopes)  # as the init: still root in the container's user namespace
        if process.get("noNewPrivileges"):
            prctl.set_no_new_privs()
        elif seccomp:
            _load_seccomp(seccomp)
            seccomp = None
        proc_mod.become(process)
        workdir.enter(cwd, where="container")  # as the user: its search permissions, as chdir would
        if seccomp:
            _load_seccomp(seccomp)
        preserved = range(3, 3 + preserve_fds)
        for fd in preserved:
            os.set_inheritable(fd, True)
        proc_mod.close_fds_except({0, 1, 2, *preserved})
        proc_mod.execute(exe, env, init_fd=None)
    except BaseException as e:
        _fail(sock, e)


def _load_seccomp(program: bytes) -> None:
    from berth.linux.seccomp import load_bpf

    load_bpf(program)
