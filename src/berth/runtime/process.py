"""The container process's own settings: rlimits, identity, capabilities, its fds, the exec.

Everything here runs in the container's init (or an exec'd process) just before ``execve``;
the command itself is found and checked by :mod:`berth.runtime.executable`.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py imports enum (milliseconds on the run path)
import ctypes
import errno
import fcntl
import os
import resource
import stat
import sys

from berth.errors import CannotExecute, CommandNotFound, UsageError
from berth.linux import caps, prctl
from berth.linux.libc import libc
from berth.runtime import executable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INIT_NAMES = frozenset(
    {"init", "systemd", "tini", "tini-static", "dumb-init", "catatonit", "runit", "s6-svscan", "openrc-init"}
)
TINI = "/usr/bin/tini-static"
_IGNORED_BY_PYTHON = (signal.SIGPIPE, signal.SIGXFSZ)
# Where the guest finds tini (:func:`init_bound`): on its /dev tmpfs, not in its root filesystem.
INIT_AT = "/dev/.berth-init"
_CLOSE_RANGE_CLOEXEC = 1 << 2

libc.close_range.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
libc.close_range.restype = ctypes.c_int


def warn(msg: str) -> None:
    """A warning from inside the container's setup: to the runtime's stderr, one line."""
    try:
        os.write(2, f"berth: warning: {msg}\n".encode())
    except OSError:
        pass


_SEALED_AWAY: list[Any] = []  # what seal_imports took out of reach of the import system


def seal_imports() -> None:
    """Once inside a guest's root, no module may be loaded from the guest's files.

    A lazy ``import`` after pivot_root (or after setns into a guest's mount namespace) would
    search sys.path *inside the guest*, where the guest's owner can plant ``berth/…`` or a
    stdlib module and have it run in a process that still holds every capability.  Leave only
    the builtin and frozen importers: such an import then fails instead.
    """
    import sys

    sys.path[:] = []
    sys.path_hooks[:] = []
    # A new empty cache; the old one is kept, not freed: freeing its finders (and their sets of
    # file names) would write to every page they sit on, each a copy-on-write fault in this fork.
    _SEALED_AWAY.append(sys.path_importer_cache)
    sys.path_importer_cache = {}
    sys.meta_path[:] = [
        f for f in sys.meta_path if getattr(f, "__name__", "") in ("BuiltinImporter", "FrozenImporter")
    ]


def set_rlimits(rlimits: list[dict[str, Any]], *, strict: bool = False) -> None:
    """Apply OCI rlimits.  A hard limit above what this host lets us raise to (no
    CAP_SYS_RESOURCE) is lowered to the current hard limit with a warning, unless ``strict``."""
    for rl in rlimits:
        name = rl["type"]
        res = getattr(resource, name, None)
        if res is None:
            raise UsageError("process.rlimits", f"unknown rlimit {name!r}")
        soft, hard = int(rl["soft"]), int(rl["hard"])
        # setrlimit here takes a C long: 2**63 and more (no less than the kernel's own cap on any
        # limit) is "no limit", as is RLIM_INFINITY (2**64 - 1)
        soft = resource.RLIM_INFINITY if soft < 0 or soft >= 2**63 else soft
        hard = resource.RLIM_INFINITY if hard < 0 or hard >= 2**63 else hard
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, PermissionError) as e:
            if strict:
                raise UsageError("process.rlimits", f"{name}: cannot set {soft}:{hard}: {e}") from None
            cur_hard = resource.getrlimit(res)[1]

            def lower(v: int, cap: int = cur_hard) -> int:
                if cap == resource.RLIM_INFINITY:
                    return v
                return cap if v == resource.RLIM_INFINITY else min(v, cap)

            resource.setrlimit(res, (lower(soft), lower(hard)))
            warn(
                f"rlimit {name} {soft}:{hard} lowered to {lower(soft)}:{lower(hard)}: the host allows no more"
            )


def set_oom_score_adj(value: int | None) -> None:
    if value is None:
        return
    try:
        fd = executable.proc_open("self/oom_score_adj", os.O_WRONLY)  # not the guest's /proc: it may fake it
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as e:  # lowering it needs CAP_SYS_RESOURCE, which a host may not give
        raise UsageError("process.oomScoreAdj", f"cannot set {value}: {e.strerror}") from None


def cap_masks(capabilities: dict[str, list[str]] | None) -> dict[str, int]:
    """The five OCI capability sets as masks (unknown names refused)."""
    capabilities = capabilities or {}
    out = {}
    for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        names = capabilities.get(key) or []
        try:
            out[key] = caps.to_mask(names)
        except KeyError as e:
            raise UsageError(f"process.capabilities.{key}", f"unknown capability {e.args[0]!r}") from None
    return out


def become(process: dict[str, Any]) -> None:
    """Bounding set, then uid/gid/groups (keeping caps across the switch), then the other sets."""
    masks = cap_masks(process.get("capabilities"))
    # A capability the runtime does not hold itself cannot be granted (this host, for one, has
    # no CAP_SYS_RESOURCE): leave it out with a warning, as podman does, instead of failing.
    held = caps.capget()[1]
    missing = (masks["permitted"] | masks["effective"] | masks["ambient"]) & ~held
    if missing:
        warn(f"capabilities not held by the runtime, left out: {', '.join(caps.from_mask(missing))}")
    for key in ("effective", "permitted", "inheritable", "ambient"):
        masks[key] &= held
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    groups = [int(g) for g in user.get("additionalGids") or []]
    caps.drop_bounding(masks["bounding"])
    prctl.set_keepcaps(True)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl.set_keepcaps(False)
    caps.apply_sets(
        effective=masks["effective"],
        permitted=masks["permitted"],
        inheritable=masks["inheritable"],
        ambient=masks["ambient"],
    )
    if "umask" in user and user["umask"] is not None:
        os.umask(int(user["umask"]))


def with_home(env: list[str], uid: int) -> list[str]:
    """``env`` with ``HOME`` set, when it has none, to the home of ``uid`` in the guest's
    /etc/passwd, ``/`` if it has no entry (as runc does).  Read in the guest (already entered),
    without NSS (it would load the guest's libraries): a plain file only, at most 1 MiB."""
    if any(item.startswith("HOME=") for item in env):
        return env
    home = "/"
    try:
        fd = os.open("/etc/passwd", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            data = os.read(fd, 1 << 20) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        except OSError:
            data = b""
        finally:
            os.close(fd)
        for line in data.decode(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 7 and fields[2] == str(uid) and fields[5]:
                home = fields[5]
                break
    return [*env, f"HOME={home}"]


def wants_init(args: list[str]) -> bool:
    """Is the command itself an init (so berth should not put tini in front of it)?"""
    return os.path.basename(args[0]) in INIT_NAMES


def init_bound(spec: dict[str, Any]) -> bool:
    """Is tini bound into the guest (read-only at :data:`INIT_AT`, on the guest's own /dev tmpfs),
    rather than run from a memfd?  As Docker's --init: a file the guest's mount namespace holds,
    which CRIU can dump and restore (it cannot restore a memfd as an executable); no copy per
    start.  A guest without a /dev tmpfs (a spec that binds the host's /dev) gets the memfd, and so
    does a guest that keeps CAP_SYS_ADMIN in the host's user namespace (--privileged): it could
    remount the bind read-write and change the host's tini."""
    linux = spec.get("linux") or {}
    own_userns = any(n.get("type") == "user" for n in linux.get("namespaces") or [])
    bounding = ((spec.get("process") or {}).get("capabilities") or {}).get("bounding") or []
    if "CAP_SYS_ADMIN" in bounding and not own_userns:
        return False
    return any(m.get("destination") == "/dev" and m.get("type") == "tmpfs" for m in spec.get("mounts") or [])


def init_memfd() -> int:
    """tini, copied into a sealed memfd: the guest's pid 1 runs a file no host path leads to."""
    src = os.open(TINI, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        fd = os.memfd_create("tini", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        done = 0
        while done < size:
            n = os.sendfile(fd, src, done, size - done)
            if n == 0:
                break
            done += n
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
        return fd
    finally:
        os.close(src)


def preserved_fds(count: str | int | None, ours: tuple[int | None, ...] = ()) -> int:
    """The number of fds ``--preserve-fds`` passes (3 to 3+N-1), checked before anything is made:
    each must be open in this process and none ours (``ours``: fds the runtime opened before the
    check, its log: one took the lowest free slot, a gap the caller left).  runc passes whatever
    it holds at such a gap to the container (its own fds: a leak); berth refuses the command."""
    try:
        n = int(count or 0)
    except ValueError:
        raise UsageError("--preserve-fds", f"{count!r} is not a number") from None
    if n < 0:
        raise UsageError("--preserve-fds", f"{n} is negative")
    for fd in range(3, 3 + n):
        if fd in ours or not _is_open(fd):
            passed = f"fds 3 to {2 + n}" if n > 1 else "fd 3"
            raise UsageError("--preserve-fds", f"fd {fd} is not open ({n} passes {passed} to the container)")
    return n


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def close_fds_except(keep: set[int]) -> None:
    """Mark every fd but ``keep`` close-on-exec (no runtime fd leaks into the guest).

    close_range(2) over the gaps between the kept fds: nothing is listed, so a guest's fake
    /proc/self/fd (this runs in its mount namespace) cannot hide an fd.  The fds still needed
    until execve (the sync socket, the executable) stay open."""
    start = 0
    for fd in sorted({*keep, 0xFFFFFFFF + 1}):
        if fd > start and _close_range_cloexec(start, fd - 1) < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOSYS, errno.EINVAL):
                raise OSError(err, f"close_range({start}, {fd - 1}, CLOSE_RANGE_CLOEXEC): {os.strerror(err)}")
            # A kernel before 5.11: one fd at a time, up to the highest number an fd can have
            # (fs.nr_open, 2**20 unless raised; rlimits lowered since may hide higher fds).
            for n in range(start, min(fd, _nr_open())):
                try:
                    os.set_inheritable(n, False)
                except OSError:
                    pass
        start = fd + 1


def _nr_open() -> int:
    try:
        return int(executable.proc_read("sys/fs/nr_open", 64))
    except (OSError, ValueError):
        return 1 << 20


def _close_range_cloexec(first: int, last: int) -> int:
    return int(libc.close_range(first, min(last, 0xFFFFFFFF), _CLOSE_RANGE_CLOEXEC))


def execute(exe: executable.Executable, env: list[str], *, init_fd: int | str | None) -> None:
    """Exec the command opened by :func:`berth.runtime.executable.open_executable` (behind tini
    from ``init_fd``, a memfd or a path in the guest, when given: tini then runs ``exe.path``
    itself).  Returns only by raising."""
    if exe.error is not None:
        raise exe.error
    envd = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    sys.stdout.flush()
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across execve: the
    # command gets the default dispositions, as runc's does (back to ignored if execve fails: the
    # error is then written to a pipe whose reader may be gone).
    for sig in _IGNORED_BY_PYTHON:
        signal.signal(sig, signal.SIG_DFL)
    err = 0
    try:
        if init_fd is not None:
            os.execve(init_fd, ["tini", "--", exe.path, *exe.command[1:]], envd)
        err = executable.execveat(exe, envd)
        if err in (errno.EPERM, errno.ENOSYS) and exe.error is None:
            # A seccomp profile of the user's that allows execve(2) but not execveat(2) (runc
            # needs only execve): by path, as before berth exec'd by fd (the file checked just
            # now, the guest's to swap in the meantime, a window only such a profile opens).
            os.execve(exe.path, exe.command, envd)
    except OSError as e:
        err = e.errno or errno.EIO
    for sig in _IGNORED_BY_PYTHON:
        signal.signal(sig, signal.SIG_IGN)
    reason = os.strerror(err)
    if err == errno.ELOOP and exe.name and init_fd is None:
        reason = "the guest replaced it with a symlink after it was checked"
    elif err in (errno.EPERM, errno.ENOSYS) and init_fd is None:
        reason += " (execveat(2) and execve(2) both refused: a seccomp profile must allow one)"
    if err == errno.ENOENT:
        raise CommandNotFound(f"exec {exe.path!r} in the guest: {reason}")
    raise CannotExecute(f"exec {exe.path!r} in the guest: {reason}")
