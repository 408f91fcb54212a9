"""The container's side of creation: the two forked children.

``stage1`` (forked by the runtime) joins the cgroup, enters or creates the
namespaces and forks ``stage2``, which is the container's pid 1.  ``stage2`` builds the
root filesystem, pivots into it, drops privileges, waits on ``exec.fifo`` until the
container is started and execs the command.  Any failure is sent to the runtime as one
line before the child exits; nothing here returns.
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import fcntl
import os
import struct
import termios

from berth.errors import BerthError, CannotExecute, CommandNotFound, UnsupportedError, UsageError
from berth.linux import prctl
from berth.linux.ns import NAMESPACES, Clone, setns, unshare
from berth.linux.path import secure_join
from berth.runtime import cwd as workdir
from berth.runtime import executable, mounts, pages, process, sync

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class InitOptions:
    """What the runtime hands the container's init besides the spec (a plain class:
    dataclasses cost milliseconds to import on the start path)."""

    def __init__(
        self,
        *,
        state_dir: str,
        fifo: str,
        rootfs: str,
        overlay: dict[str, Any] | None = None,
        use_init: bool = False,
        init_fd: int | None = None,
        userns: bool = False,
        preserve_fds: int = 0,
        watch_parent: bool = False,
        strict_rlimits: bool = False,
        seccomp_program: bytes | None = None,
        hook_sync: bool = False,
        no_pivot: bool = False,
        new_keyring: bool = False,
        cgroup_mounts: list[tuple[str, str, str]] | None = None,
        landlock_scopes: int = 0,
    ) -> None:
        self.state_dir = state_dir
        self.fifo = fifo
        self.rootfs = rootfs
        self.overlay = overlay  # {"lower": [...], "upper": str, "work": str}
        self.use_init = use_init
        self.init_fd = init_fd
        self.userns = userns
        self.preserve_fds = preserve_fds
        self.watch_parent = watch_parent  # berth run: die with the runtime (PR_SET_PDEATHSIG)
        self.strict_rlimits = strict_rlimits
        self.seccomp_program = seccomp_program
        self.hook_sync = hook_sync  # OCI hooks: stop after the mounts for the runtime's hooks
        self.no_pivot = no_pivot  # MS_MOVE + chroot instead of pivot_root (a rootfs on ramfs)
        self.new_keyring = new_keyring  # a session keyring of the container's own
        self.cgroup_mounts = cgroup_mounts  # the host's, read before the fork (mounts.host_cgroup_mounts)
        self.landlock_scopes = landlock_scopes  # berth.runtime.scope: decided by the runtime
        self.fifo_fd = -1  # set by stage1
        self.idmapped: list[int] = []  # set by stage1 in a user namespace
        self.sysfs_fd: int | None = None  # set by stage1: the host's /sys, for a userns on its network


# exec.fifo opened for writing once ``start`` came (:func:`_wait_start`): close-on-exec, so the
# reader sees its end when the command is exec'd; an error before that is written to it instead
# (the runtime's ``create`` that held the sync socket is gone by then).
_started_fd = -1


def _fail(sock: socket.socket, exc: BaseException) -> None:
    """Report ``exc`` to the runtime as one line and exit; never returns, whatever happens."""
    code = 1
    try:
        if isinstance(exc, CommandNotFound):
            code = 127
        elif isinstance(exc, CannotExecute):
            code = 126
        msg = str(exc) if isinstance(exc, (BerthError, OSError)) else f"{type(exc).__name__}: {exc}"
        if _started_fd >= 0:
            try:
                report_start_error(_started_fd, code, msg)
            except OSError:
                # ``start`` returned before (its wait for the exec is bounded): the container's
                # stderr, where runc's init writes its errors
                try:
                    os.write(2, f"berth-runtime: {msg}\n".encode(errors="replace"))
                except OSError:
                    pass
        sync.send(sock, "error", msg=msg, code=code, error_class=type(exc).__name__)
    except BaseException:
        pass
    finally:
        os._exit(code)


def report_start_error(fd: int, code: int, msg: str) -> None:
    """After the start byte, one error record on exec.fifo: ``CODE MESSAGE`` (one write below
    PIPE_BUF, so it arrives whole); read by :func:`berth.runtime.container.read_start_error`."""
    os.write(fd, f"{code} {msg}".encode(errors="replace")[:3000])


def ns_flags(spec: dict[str, Any]) -> tuple[int, list[tuple[str, str]]]:
    """(flags to unshare, [(type, path) to join]) from ``linux.namespaces``."""
    flags = 0
    join = []
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("path"):
            join.append((ns["type"], ns["path"]))
        else:
            flags |= NAMESPACES[ns["type"]][0]
    return flags, join


def _join(namespaces: list[tuple[str, str]]) -> None:
    """Join existing namespaces, the user namespace first."""
    opened = []
    for kind, path in sorted(namespaces, key=lambda kp: kp[0] != "user"):
        opened.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
    for kind, fd in opened:
        setns(fd, NAMESPACES[kind][0])
        os.close(fd)


def _mapped_root(linux: dict[str, Any], field: str) -> int:
    """The host id that id 0 of the user namespace maps to (``field``: uidMappings, gidMappings)."""
    for m in linux.get(field) or []:
        if m["containerID"] <= 0 < m["containerID"] + m["size"]:
            return int(m["hostID"])
    raise UsageError(f"linux.{field}", "maps no id 0: the guest's cgroup has no root to delegate to")


def _host_root() -> bool:
    """Are we the host's root (euid 0 in the initial user namespace), not a rootless runtime?"""
    try:
        with open("/proc/self/uid_map") as f:
            return os.geteuid() == 0 and f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def stage1(spec: dict[str, Any], opts: InitOptions, sock: socket.socket, cgroup: Any) -> None:
    """First child: cgroup, namespaces, then fork the container's pid 1 and exit."""
    try:
        _enter(spec, opts, sock, cgroup, ns_flags(spec))
        pid = os.fork()
        if pid == 0:
            stage2(spec, opts, sock)
        sync.send(sock, "pid", pid=pid)
        os._exit(0)
    except BaseException as e:
        _fail(sock, e)


def in_place_fits(spec: dict[str, Any]) -> bool:
    """Can a process that is already pid 1 of a new pid namespace (made in the host's user
    namespace) be this container's init (:func:`stage1_in_place`)?  Not with a user namespace
    (it must own the pid namespace), nor with a pid namespace to join or none, nor with a time
    namespace (it too takes effect in children only)."""
    flags, join = ns_flags(spec)
    kinds = {kind for kind, _path in join}
    return (
        bool(flags & Clone.NEWPID)
        and not flags & (Clone.NEWUSER | Clone.NEWTIME)
        and not kinds
        & {
            "user",
            "pid",
            "time",
        }
    )


def stage1_in_place(
    spec: dict[str, Any], opts: InitOptions, sock: socket.socket, cgroup: Any, pid: int
) -> None:
    """:func:`stage1` without its fork, in a process forked ahead as pid 1 of a new pid namespace
    (berth.runtime.zygote, where :func:`in_place_fits`): it joins the cgroup and the other
    namespaces itself, reports ``pid`` (its pid on the host) and goes on as :func:`stage2`.
    Handed the container before its cgroup was made, it joins that (and then the namespaces)
    at the runtime's ``cgroup`` message."""
    try:
        flags, join = ns_flags(spec)
        _enter(spec, opts, sock, cgroup, (flags & ~Clone.NEWPID, join), cgroup_later=True)
        sync.send(sock, "pid", pid=pid)
    except BaseException as e:
        _fail(sock, e)
    stage2(spec, opts, sock)


def _enter(
    spec: dict[str, Any],
    opts: InitOptions,
    sock: socket.socket,
    cgroup: Any,
    namespaces: tuple[int, list[tuple[str, str]]],
    *,
    cgroup_later: bool = False,
) -> None:
    """stage1's part before its fork: signals, the cgroup, the keyring, the namespaces.

    ``cgroup_later`` (the init forked ahead, handed its container before the runtime made the
    cgroup): the cgroup is joined at the runtime's ``cgroup`` message, after the keyring and
    before any namespace (what the kernel makes for those is charged to the guest's cgroup)."""
    for sig in (
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ):
        signal.signal(sig, signal.SIG_DFL)
    prctl.set_dumpable(False)
    if cgroup is not None and not cgroup_later:
        _join_cgroup(spec, cgroup)
    # Opened while still the host's root: a user namespace's root may not reach the state dir.
    opts.fifo_fd = os.open(opts.fifo, os.O_PATH | os.O_CLOEXEC)
    if opts.new_keyring:
        # Before any user namespace: the new keyring is charged to the runtime's user, not to
        # a quota of the guest's own uid, which the guest can fill (berth exec likewise).
        _join_session_keyring()
    if cgroup_later:
        msg, _fds = sync.recv(sock)
        if not msg or msg["type"] != "cgroup":
            os._exit(1)  # the runtime gave up (its end closed): nothing to report to
        if cgroup is not None and msg.get("join"):
            _join_cgroup(spec, cgroup)
    flags, join = namespaces
    _join(join)
    if flags & Clone.NEWUSER and not flags & Clone.NEWNET and mounts.wants_sysfs(spec):
        # Still the host's root: a copy of the host's /sys without the mounts below it (from
        # the guest's user namespace only a copy of them all, locked in, could be had).
        opts.sysfs_fd = mounts.clone_sysfs()
    if flags & Clone.NEWUSER:
        unshare(Clone.NEWUSER)
        sync.send(sock, "userns", pid=os.getpid())
        msg, layers = sync.recv(sock)
        if not msg or msg["type"] != "userns-done":
            os._exit(1)
        opts.idmapped = layers  # detached idmapped mounts: the overlay's lower layers or the rootfs
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    if flags & ~Clone.NEWUSER:
        unshare(flags & ~Clone.NEWUSER)


def _join_cgroup(spec: dict[str, Any], cgroup: Any) -> None:
    """Move into the guest's cgroup (delegated to its mapped root where the spec asks)."""
    cgroup.add(os.getpid())
    if mounts.cgroup_delegated(spec) and _host_root():
        # Still the host's root here: hand the guest's cgroup to its mapped root.  (A
        # rootless runtime's cgroup is its user's already, delegated by its manager.)
        linux = spec.get("linux") or {}
        # name=systemd (v1) only for berth's system guests: the runtime spec forbids
        # changing ownership on cgroup v1 for an OCI bundle's guest.
        cgroup.delegate(
            _mapped_root(linux, "uidMappings"),
            _mapped_root(linux, "gidMappings"),
            v1=mounts.systemd_cgroup(spec),
        )


def _lo_up() -> None:
    """Bring up loopback in the new network namespace (an ioctl: no netlink library on this path)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
    finally:
        s.close()


def _open_console(rootfs: str) -> tuple[int, int]:
    """A pty from the guest's own devpts instance: (master, slave)."""
    # Resolved as in the guest: a plain join would follow the rootfs's own /dev symlink from the
    # host's root (say /dev -> /proc/self/cwd/../../dev) to the host's devpts.
    return open_pty(secure_join(rootfs, "/dev/pts/ptmx"))


def open_pty(ptmx: str) -> tuple[int, int]:
    """(master, slave) of a new pty from the devpts instance of ``ptmx``."""
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    return master, slave


def take_terminal(sock: socket.socket, master: int, slave: int, size: dict[str, int] | None) -> None:
    """Make ``slave`` our controlling terminal and stdio; hand ``master`` to the runtime."""
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size["height"], size["width"], 0, 0))
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    sync.send(sock, "console", fds=[master])
    os.close(master)


def _sysctl(values: dict[str, str]) -> None:
    for key, value in values.items():
        path = "/proc/sys/" + key.replace(".", "/")
        with open(path, "w") as f:
            f.write(str(value))


def _wait_start(fifo_fd: int) -> None:
    """Block until ``start`` opens the fifo for reading, then tell it we are going.  The fifo
    stays open (close-on-exec): the reader waits for its end, or an error (:func:`_fail`)."""
    global _started_fd
    fd = os.open(f"self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=executable.host_proc())
    os.write(fd, b"0")
    _started_fd = fd
    os.close(fifo_fd)


def stage2(spec: dict[str, Any], opts: InitOptions, sock: socket.socket) -> None:
    """The container's pid 1 until it execs the command."""
    try:
        os.setsid()
        proc = spec.get("process") or {}
        linux = spec.get("linux") or {}
        flags, _join_ns = ns_flags(spec)
        fifo_fd = opts.fifo_fd
        terminal = bool(proc.get("terminal"))

        # Our own /proc, for what we read of it once in the guest's root (executable.hold_host_proc).
        executable.hold_host_proc()
        # Root filesystem.
        rootfs = mounts.bind_root(
            opts.rootfs, linux.get("rootfsPropagation"), os.path.join(opts.state_dir, "hostroot")
        )
        if opts.overlay:
            ov = opts.overlay
            lower = ov["lower"]
            if opts.idmapped:
                lower = ov["lower_at"]
                mounts.attach_idmapped(opts.idmapped, lower)
            mounts.mount_overlay(
                lower,
                ov["upper"],
                ov["work"],
                rootfs,
                userxattr=opts.userns,
                volatile=bool(ov.get("volatile")),
            )
        elif opts.idmapped:
            mounts.attach_idmapped(opts.idmapped, [rootfs])
        mounts.prepare_root(
            spec,
            rootfs,
            userns=opts.userns,
            console_slave=None,
            sysfs_fd=opts.sysfs_fd,
            cgroups=opts.cgroup_mounts,
        )
        init: int | str | None = opts.init_fd
        if opts.use_init and init is None:
            mounts.bind_init(rootfs, process.TINI, process.INIT_AT)
            init = process.INIT_AT
        master = slave = -1
        if terminal:
            master, slave = _open_console(rootfs)
            target = mounts._Target(rootfs, "/dev/console", is_file=True)
            try:
                mounts.mount(f"/proc/self/fd/{slave}", target.proc, None, mounts.MS.BIND)
            finally:
                target.close()
        hook_state = None
        if opts.hook_sync:
            # prestart/createRuntime run in the runtime; createContainer here, in our namespaces.
            sync.send(sock, "mounted")
            msg, _ = sync.recv(sock)
            if not msg or msg["type"] != "mounted-done":
                os._exit(1)
            hook_state = msg["state"]
            from berth.runtime import hooks

            hooks.run(spec.get("hooks"), "createContainer", hook_state)
        if opts.no_pivot:
            os.chdir(rootfs)
            mounts.mount(rootfs, "/", None, mounts.MS.MOVE)
            os.chroot(".")
            os.chdir("/")
        else:
            mounts.enter_root(rootfs)
        process.seal_imports()  # from here on nothing may be imported from the guest
        cwd = proc.get("cwd") or "/"
        # As runc and docker: a working directory missing in the guest is created (by root),
        # before the root turns read-only.  Resolved in the guest's root without magic links
        # (berth.runtime.cwd: we hold the host's /proc), and entered by fd: the command is looked
        # up from there (".").  Entered again as the user once we are that user.
        workdir.enter(cwd, create=True)
        if linux.get("sysctl"):
            _sysctl(linux["sysctl"])  # before /proc/sys turns read-only (as runc)
        mounts.mask_paths(linux.get("maskedPaths") or [])
        mounts.readonly_paths(linux.get("readonlyPaths") or [])
        if (spec.get("root") or {}).get("readonly"):
            mounts.readonly_root()

        if flags & Clone.NEWUTS:
            if spec.get("hostname"):
                socket.sethostname(spec["hostname"])
            if spec.get("domainname"):
                with open("/proc/sys/kernel/domainname", "w") as f:
                    f.write(spec["domainname"])
        if flags & Clone.NEWNET:
            _lo_up()

        # Warnings (an rlimit lowered) go to the runtime, which logs them, not to the guest's stderr.
        process.warn = lambda text: sync.send(sock, "warning", msg=text)
        process.set_rlimits(proc.get("rlimits") or [], strict=opts.strict_rlimits)
        if linux.get("personality"):
            set_personality(linux["personality"])
        process.set_oom_score_adj(proc.get("oomScoreAdj"))

        if terminal:
            take_terminal(sock, master, slave, proc.get("consoleSize"))

        env = process.with_home(list(proc.get("env") or []), int((proc.get("user") or {}).get("uid") or 0))
        creds = executable.Creds.of(proc, through_init=init is not None)  # tini looks it up again
        exe = executable.open_executable(proc["args"], env, ".", follow_link=True, creds=creds)

        pages.finish()  # an init forked ahead records what it wrote (berth.runtime.pages)
        # Privileges: the Landlock scope, no_new_privs, seccomp, then the identity and capability
        # sets.  The scope first: still root with every capability of our user namespace, which
        # landlock_restrict_self needs without no_new_privs, and before any seccomp filter.
        if opts.landlock_scopes:
            restrict_scopes(opts.landlock_scopes)
        seccomp_prog = opts.seccomp_program
        if proc.get("noNewPrivileges"):
            prctl.set_no_new_privs()
        elif seccomp_prog:
            _load_seccomp(seccomp_prog)
            seccomp_prog = None
        process.become(proc)
        workdir.enter(cwd)  # as the user: the path walk checks its search permissions, as chdir would

        sync.send(sock, "ready")
        _wait_start(fifo_fd)
        if hook_state is not None and (spec.get("hooks") or {}).get("startContainer"):
            from berth.runtime import hooks

            hooks.run(spec.get("hooks"), "startContainer", {**hook_state, "status": "created"})
        if opts.watch_parent:
            prctl.set_pdeathsig(signal.SIGKILL)
            # The runtime may have died before pdeathsig was armed: its end of the socket is then gone.
            sync.send(sock, "started")
        if seccomp_prog:
            _load_seccomp(seccomp_prog)
        preserved = range(3, 3 + opts.preserve_fds)
        for fd in preserved:
            os.set_inheritable(fd, True)
        process.close_fds_except({0, 1, 2, *preserved})
        executable.release_host_proc()
        process.execute(exe, env, init_fd=init)
    except BaseException as e:
        _fail(sock, e)


PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}


def set_personality(personality: dict[str, Any]) -> None:
    """personality(2) from ``linux.personality`` (the domain; runc supports no flags either)."""
    import ctypes

    from berth.linux.libc import check, libc

    libc.personality.argtypes = [ctypes.c_ulong]
    libc.personality.restype = ctypes.c_int
    domain = personality.get("domain", "LINUX")
    if personality.get("flags"):
        raise UnsupportedError(f"linux.personality.flags: not supported ({personality['flags']!r})")
    check(libc.personality(PERSONALITY_DOMAINS[domain]), f"personality({domain})")


# keyctl(2) has no glibc wrapper, and loading libkeyutils here would load it from the *guest's*
# files (we are past pivot_root): the syscall number, per arch.
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 280, "s390x": 280}
_KEYCTL_JOIN_SESSION_KEYRING = 1


def _join_session_keyring() -> None:
    """A new anonymous session keyring (what runc does unless --no-new-keyring): the container
    does not share the runtime's.  Skipped where the kernel's keyrings are missing or keyctl is
    refused to us (a seccomp filter or an LSM above us refuses it to the guest too); any other
    failure is fatal, EDQUOT too (the process would keep its starter's keys).  Called before the
    process enters the guest's user namespace, so the keyring is charged to the runtime's user:
    a guest that fills its own uid's key quota cannot make a start or an exec fail."""
    import ctypes

    from berth.linux.libc import libc

    nr = _SYS_KEYCTL.get(os.uname().machine)
    if nr is None:
        return
    if libc.syscall(nr, _KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        err = ctypes.get_errno()
        if err not in (38, 1, 13):  # ENOSYS, EPERM, EACCES
            raise OSError(err, f"keyctl(JOIN_SESSION_KEYRING) (a new session keyring): {os.strerror(err)}")


def _load_seccomp(program: bytes) -> None:
    from berth.linux.seccomp import load_bpf

    load_bpf(program)


def restrict_scopes(scopes: int) -> None:
    """A new Landlock domain with ``scopes`` for this process and all it forks (the binding is
    imported by the runtime before the fork: past pivot_root nothing can be imported)."""
    from berth.linux.landlock import restrict_scopes as restrict

    restrict(scopes)
