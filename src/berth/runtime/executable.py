"""The command a container process runs: found as execvp would, opened once, checked, exec'd.

Runs in the container's init (or an exec'd process), inside the guest's mount namespace,
where "/proc" is the guest's to fake: what berth reads of its own /proc goes through the
runtime's, opened before entering (:func:`hold_host_proc`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from berth.errors import BerthError, CannotExecute, CommandNotFound, UsageError
from berth.linux import caps
from berth.linux.libc import libc
from berth.runtime import elf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The runtime's own /proc, opened before entering a guest (:func:`hold_host_proc`).  Once in the
# guest's mount namespace "/proc" is whatever the guest made of it (a tmpfs with files of its
# choosing, a FIFO where a file should be): what berth needs to know about itself there
# (its fds, their mounts, its mount table) is read through this fd instead.  Close-on-exec, and
# the process holding it is not dumpable: the guest cannot reach it.
_host_proc: int | None = None
# Interpreter levels the kernel follows for #! (fs/exec.c: depth > 5 is ELOOP).
_MAX_INTERPRETERS = 5
_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100

libc.execveat.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.c_int,
]
libc.execveat.restype = ctypes.c_int
for _setfs in (libc.setfsuid, libc.setfsgid):
    _setfs.argtypes = [ctypes.c_uint32]
    _setfs.restype = ctypes.c_int
# execvp goes on to the next PATH entry after these errors (glibc posix/execvpe.c); EACCES too,
# remembered; any other error ends the search.
_NEXT_ENTRY = (errno.ENOENT, errno.ESTALE, errno.ENOTDIR, errno.ENODEV, errno.ETIMEDOUT)
_HEAD = 4096  # read at once from the command: its #! line, or an ELF header and (mostly) its phdrs


def hold_host_proc() -> None:
    """Open the runtime's /proc and read the kernel facts needed later, before entering a guest."""
    global _host_proc
    if _host_proc is None:
        _host_proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    caps.last_cap()  # read once, here: the guest's /proc/sys/kernel/cap_last_cap could say 0


def host_proc() -> int:
    """The fd of :func:`hold_host_proc` (opened now if it was not: only right outside a guest;
    -1 once :func:`release_host_proc` closed it, so what still reads through it fails, EBADF,
    instead of reading the guest's /proc)."""
    hold_host_proc()
    assert _host_proc is not None
    return _host_proc


def release_host_proc() -> None:
    """Close the fd of :func:`hold_host_proc` for good, once nothing more is read through it:
    closed, not only close-on-exec, before the process enters its working directory or execs."""
    global _host_proc
    if _host_proc is not None and _host_proc >= 0:
        os.close(_host_proc)
    _host_proc = -1


def proc_open(rel: str, flags: int) -> int:
    """Open ``rel`` (``self/...``) in the runtime's /proc, never blocking on what it finds."""
    return os.open(rel, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=host_proc())


def proc_read(rel: str, limit: int = 1 << 24) -> bytes:
    fd = proc_open(rel, os.O_RDONLY)
    try:
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Executable:
    """The command, opened once and checked (:func:`open_executable`): what
    :func:`berth.runtime.process.execute` runs.

    ``path``: as execvp would have named it (messages, tini); ``args``: the arguments, with the
    ``#!`` interpreters put in front as the kernel would; the file itself is reached through
    ``dir_fd`` (its directory, opened) and ``name`` (not a symlink), or through ``fd`` alone when
    ``name`` is empty.  Exec'd through these, never by path again: the guest cannot swap in another
    file (a link to /proc/self/exe) after the check.  Through its directory rather than ``fd``
    itself so that the process's name (``comm``, what ps and pgrep show) is the file's name, not
    the fd's number.  Both fds are close-on-exec: a file changed into a script after the check
    is refused by the kernel (ENOENT) instead of run with an interpreter no one checked.
    """

    def __init__(
        self, path: str, command: list[str], args: list[str], fd: int, dir_fd: int, name: str
    ) -> None:
        self.path = path
        self.command = command  # the arguments as given (what tini runs by path)
        self.args = args
        self.fd = fd
        self.dir_fd = dir_fd
        self.name = name
        # The command's own symlink (its directory, opened, and its name), followed at the exec
        # when :func:`open_executable` was asked to (``follow_link``): see there.
        self.link_dir = -1
        self.link_name = ""
        self.error: BerthError | None = None  # raised at the exec (an interpreter found missing)


class Creds:
    """Who the process is at its execve, after :func:`berth.runtime.process.become`: the
    command is looked up as that user (execvp's rules, the kernel's permission checks).

    A plain class, not a NamedTuple: ``typing`` (and the ``re`` it imports) would cost
    ``berth run`` ~10 ms of imports."""

    __slots__ = ("effective", "gid", "groups", "uid")

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...], effective: int) -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.effective = effective  # capability mask (what the spec asks, cut to what the runtime holds)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Creds):
            return NotImplemented
        return (self.uid, self.gid, self.groups, self.effective) == (
            other.uid,
            other.gid,
            other.groups,
            other.effective,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Creds(uid={self.uid}, gid={self.gid}, groups={self.groups}, effective={self.effective:#x})"

    @classmethod
    def of(cls, process: dict[str, Any], *, through_init: bool = False) -> Creds:
        """The credentials ``process`` (an OCI ``process`` object) execs its command with;
        ``through_init``: tini's, which runs it by execvp after its own exec (the capabilities
        the kernel leaves a process at an exec: the ambient set, for root the bounding set)."""
        user = process.get("user") or {}
        uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
        sets = process.get("capabilities") or {}
        try:
            masks = {key: caps.to_mask(sets.get(key) or []) for key in ("effective", "bounding", "ambient")}
        except KeyError as e:
            raise UsageError("process.capabilities", f"unknown capability {e.args[0]!r}") from None
        effective = masks["effective"]
        if through_init:
            effective = masks["bounding"] if uid == 0 else masks["ambient"]
        groups = tuple(int(g) for g in user.get("additionalGids") or [])
        return cls(uid, gid, groups, effective)


def _act_as(creds: Creds) -> tuple[int, int, int, int, int]:
    """Switch this thread's file-system credentials (fsuid, fsgid, supplementary groups,
    effective capabilities) to ``creds``: the kernel then checks path walks, opens and
    faccessat(AT_EACCESS) as it will at the process's execve.  The groups stay (the process
    takes them next anyway); the rest comes back with :func:`_act_back`."""
    eff, perm, inh = caps.capget()
    if sorted(set(os.getgroups())) != sorted(set(creds.groups)):
        os.setgroups(list(creds.groups))
    old_gid = libc.setfsgid(creds.gid)
    old_uid = libc.setfsuid(creds.uid)
    saved = (eff, perm, inh, old_uid, old_gid)
    # setfsuid/setfsgid return the old id whether or not they switched: ask again (-1 changes nothing)
    if libc.setfsgid(0xFFFFFFFF) != creds.gid or libc.setfsuid(0xFFFFFFFF) != creds.uid:
        _act_back(saved)
        raise OSError(errno.EINVAL, f"setfsuid({creds.uid})/setfsgid({creds.gid}): not a user of the guest")
    # A switch of fsuid from 0 drops the file capabilities from the effective set: set it whole.
    caps.capset(creds.effective & perm, perm, inh)
    return saved


def _act_back(saved: tuple[int, int, int, int, int]) -> None:
    eff, perm, inh, old_uid, old_gid = saved
    caps.capset(eff, perm, inh)  # CAP_SETUID and CAP_SETGID back first, for the switch back
    libc.setfsuid(old_uid)
    libc.setfsgid(old_gid)
    caps.capset(eff, perm, inh)  # a switch of fsuid to 0 raised the file capabilities: as before


def _lookup(arg0: str, env: list[str], cwd: str, creds: Creds | None) -> tuple[str, int]:
    """(path, O_PATH fd) of the first candidate execvp would run, as the user of ``creds``."""
    saved = _act_as(creds) if creds is not None else None
    try:
        return _search(arg0, env, cwd)
    finally:
        if saved is not None:
            _act_back(saved)


def _search(arg0: str, env: list[str], cwd: str) -> tuple[str, int]:
    if not arg0:
        raise CommandNotFound("command not found in the guest: ''")
    candidates = [arg0]
    if "/" not in arg0:
        # an empty entry (a leading, trailing or doubled ':') is the working directory: execvp
        # names the file alone, as the kernel resolves it
        candidates = [f"{d}/{arg0}" if d else arg0 for d in env_path(env).split(":")]
    denied = None
    for path in candidates:
        try:
            # a relative path against the process's working directory, as at its exec (this
            # process is still at the guest's /)
            fd = os.open(os.path.join(cwd, path), os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.EACCES:
                denied = (path, e.strerror)
            elif e.errno not in _NEXT_ENTRY:
                raise CannotExecute(f"cannot execute {path!r} in the guest: {e.strerror}") from None
            continue
        st = os.fstat(fd)
        reason = None
        if stat.S_ISDIR(st.st_mode):
            reason = "is a directory"
        elif not os.access(f"self/fd/{fd}", os.X_OK, dir_fd=host_proc(), effective_ids=True):
            reason = "permission denied"
        if reason:
            os.close(fd)
            denied = (path, reason)
            continue
        return path, fd
    if denied:
        raise CannotExecute(f"cannot execute {denied[0]!r} in the guest: {denied[1]}")
    raise CommandNotFound(f"command not found in the guest: {arg0!r}")


def open_executable(
    args: list[str],
    env: list[str],
    cwd: str = "/",
    *,
    follow_link: bool = False,
    creds: Creds | None = None,
) -> Executable:
    """Resolve ``args[0]`` as execvp would, inside the (already entered) guest root, open it once
    and check it (and each ``#!`` interpreter) with the runtime's own /proc.

    A /proc magic link (``/bin/sh -> /proc/self/exe``, ``/proc/1/exe``, ``/proc/self/fd/N``)
    leads from the guest's root to a host file: the runtime's own interpreter, which the guest
    could then run and reopen for writing (the CVE-2019-5736 class).  Every file that would be
    executed must lie on a mount of our (the guest's) mount namespace.  Raises
    :class:`CommandNotFound` (127) or :class:`CannotExecute` (126); a missing ``#!``
    interpreter only at the exec (as execve would: runc finds the script at create, the start
    fails).

    The file is exec'd as it was checked (:class:`Executable`), so its name in ps is that of the
    file: a command that is a symlink (``sleep -> busybox``) shows as ``busybox``, a script as
    its interpreter (the kernel names it after the script).  Following the
    symlink at the exec instead would let a guest process swap it for a link to
    /proc/self/exe in between.  ``follow_link``: a container's first process, which no guest
    process of its own races (none runs yet): its symlink is followed once more at the exec, if
    it still leads to the checked file just before, so ps shows ``sleep`` as with runc.  (What
    is left: a process exec'd into the created container, or a host user who may write the
    rootfs, swapping the link in the microseconds between that check and the exec.)  Not for
    ``berth exec``: a guest process racing it wins that window often enough (measured: the
    host's python was exec'd within a dozen tries), so a busybox applet exec'd there shows as
    ``busybox`` (``pgrep sleep`` misses it; ``pidof sleep`` and ``ps`` see its argv).

    ``creds``: who the process will be at its exec; the command is looked up as that user (a
    PATH directory the user cannot search, a file the user may not execute, are passed over as
    execvp would).  ``cwd``: the process's working directory (empty PATH entries and relative
    paths resolve there).  An ELF's program interpreter (PT_INTERP, which the kernel opens by
    path: ``/proc/self/exe`` is the runtime's) is checked as ``#!`` interpreters are.
    """
    path, fd = _lookup(args[0], env, cwd, creds)
    try:
        mounts = _mount_ids()
    except BaseException:
        os.close(fd)
        raise
    named = path  # as the kernel would pass it to an interpreter
    argv = list(args)
    for _level in range(_MAX_INTERPRETERS + 1):
        try:
            head = _check_file(path, named, fd, mounts, cwd)
            if not head.startswith(b"#!"):
                exe = _finish(path, args, argv, fd, mounts)
                if follow_link and named == path:
                    _keep_link(exe, cwd)
                return exe
            if os.fstatvfs(fd).f_flag & os.ST_NOEXEC:
                # the kernel refuses a script there, though its interpreter lies elsewhere
                raise CannotExecute(f"cannot execute {named!r} in the guest: its mount is noexec")
            interp, arg = _shebang(named, head[:256])
            argv = [interp, *([arg] if arg else []), named, *argv[1:]]
            try:
                nfd = os.open(os.path.join(cwd, interp), os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                err = CommandNotFound if e.errno == errno.ENOENT else CannotExecute
                exe = Executable(path, args, argv, -1, -1, "")
                exe.error = err(f"exec {path!r} in the guest: interpreter {interp!r}: {e.strerror}")
                os.close(fd)
                return exe
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        fd, named = nfd, interp
    os.close(fd)
    raise CannotExecute(f"cannot execute {path!r} in the guest: too many levels of #! interpreters")


def _mount_ids() -> set[int]:
    """The ids of the mounts of our mount namespace (our own mountinfo, from the runtime's /proc)."""
    ids = set()
    for line in proc_read("self/mountinfo").split(b"\n"):
        first = line.split(None, 1)
        if first:
            try:
                ids.add(int(first[0]))
            except ValueError:
                raise CannotExecute(f"cannot read the guest's mount table: {line[:60]!r}") from None
    if not ids:
        raise CannotExecute("cannot read the guest's mount table: it is empty")
    return ids


def _mount_id(fd: int) -> int | None:
    try:
        for line in proc_read(f"self/fdinfo/{fd}", 1 << 16).split(b"\n"):
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_file(path: str, named: str, fd: int, mounts: set[int], cwd: str) -> bytes:
    """Refuse ``fd`` (``named``: the command ``path`` or one of its interpreters) unless it is on
    one of ``mounts`` and, for an ELF, so is its program interpreter; its first bytes (b"" if it
    is no regular file or cannot be read: execve says why)."""
    mnt = _mount_id(fd)
    if mnt is None:
        raise CannotExecute(f"cannot execute {path!r} in the guest: cannot tell which mount {named!r} is on")
    if mnt not in mounts:
        raise CannotExecute(
            f"cannot execute {path!r} in the guest: {named!r} leads outside the guest's file systems"
        )
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return b""
    try:
        rfd = proc_open(f"self/fd/{fd}", os.O_RDONLY)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            # the kernel reads it at the exec all the same (a #! line, an ELF interpreter)
            raise CannotExecute(
                f"cannot execute {path!r} in the guest: cannot read {named!r} to check it"
            ) from None
        return b""
    try:
        try:
            if not stat.S_ISREG(os.fstat(rfd).st_mode):
                return b""
            head = os.pread(rfd, _HEAD, 0)
        except OSError:
            return b""
        if head.startswith(b"\x7fELF"):
            _check_elf(path, named, rfd, head, mounts, cwd)
    finally:
        os.close(rfd)
    if head and not head.startswith((b"\x7fELF", b"#!")):
        raise CannotExecute(f"cannot execute {named!r} in the guest: exec format error (not ELF, no #!)")
    return head


def _check_elf(path: str, named: str, rfd: int, head: bytes, mounts: set[int], cwd: str) -> None:
    """Refuse the ELF file ``rfd`` (first bytes ``head``) if a program interpreter the kernel
    would load for it is no regular file on one of ``mounts``.  One the guest lacks is left to
    the exec to report (ENOENT, as execve)."""

    def read(offset: int, size: int) -> bytes:
        if offset + size <= len(head) or len(head) < _HEAD:  # within what was read, or the whole file
            return head[offset : offset + size]
        return os.pread(rfd, size, offset)

    try:
        interps = elf.interpreters(read)
    except elf.ElfError as e:
        raise CannotExecute(f"cannot execute {named!r} in the guest: exec format error ({e})") from None
    except OSError as e:
        raise CannotExecute(
            f"cannot execute {path!r} in the guest: reading {named!r}: {e.strerror}"
        ) from None
    for interp in interps:
        if not interp:
            continue  # execve: ENOENT
        shown = os.fsdecode(interp)
        try:
            ifd = os.open(os.path.join(os.fsencode(cwd), interp), os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            mnt = _mount_id(ifd)
            regular = stat.S_ISREG(os.fstat(ifd).st_mode)
        finally:
            os.close(ifd)
        if mnt is None or mnt not in mounts:
            raise CannotExecute(
                f"cannot execute {path!r} in the guest: the ELF interpreter {shown!r} of {named!r}"
                " leads outside the guest's file systems"
            )
        if not regular:
            raise CannotExecute(
                f"cannot execute {path!r} in the guest: the ELF interpreter {shown!r} of {named!r}"
                " is not a regular file"
            )


def _shebang(named: str, head: bytes) -> tuple[str, str]:
    """(interpreter, optional argument) of a ``#!`` line, split as the kernel does
    (fs/binfmt_script.c: spaces and tabs only; the rest of the line is one argument)."""
    if b"\n" in head:
        line = head[2:].split(b"\n", 1)[0]
    else:
        line = head[2:255]  # the kernel's buffer, its last byte a NUL
        if len(head) == 256 and not any(c in line.lstrip(b" \t") for c in b" \t\0"):
            raise CannotExecute(f"cannot execute {named!r} in the guest: #! line too long")
    line = line.strip(b" \t")
    end = 0
    while end < len(line) and line[end] not in b" \t\0":
        end += 1
    interp, rest = line[:end], line[end:].lstrip(b" \t").split(b"\0", 1)[0]
    if not interp:
        raise CannotExecute(f"cannot execute {named!r} in the guest: exec format error (empty #! line)")
    return os.fsdecode(interp), os.fsdecode(rest)


def _keep_link(exe: Executable, cwd: str) -> None:
    """Remember ``exe.path``'s own directory and name when its last component is a symlink."""
    parent, name = os.path.split(os.path.join(cwd, exe.path))
    try:
        dir_fd = os.open(parent or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            exe.link_dir, exe.link_name = dir_fd, name
            return
    except OSError:
        pass
    os.close(dir_fd)


def _finish(path: str, command: list[str], argv: list[str], fd: int, mounts: set[int]) -> Executable:
    """The :class:`Executable` for the checked ``fd``: through its directory and name when they
    still lead to it, else the fd itself."""
    try:
        where = os.readlink(f"self/fd/{fd}", dir_fd=host_proc())
    except OSError:
        where = ""
    if where.startswith("/") and not where.endswith(" (deleted)"):
        parent, name = os.path.split(where)
        try:
            dir_fd = os.open(parent or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            dir_fd = -1
        if dir_fd >= 0:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                mine = os.fstat(fd)
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino) and _mount_id(dir_fd) in mounts:
                    return Executable(path, command, argv, fd, dir_fd, name)
            except OSError:
                pass
            os.close(dir_fd)
    return Executable(path, command, argv, fd, -1, "")


def env_path(env: list[str]) -> str:
    for item in env:
        if item.startswith("PATH="):
            return item[5:]
    return DEFAULT_PATH


def _same_file(dir_fd: int, name: str, fd: int) -> bool:
    try:
        st, mine = os.stat(name, dir_fd=dir_fd), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def execveat(exe: Executable, env: dict[str, str]) -> int:
    """execveat(2) of ``exe`` (never glibc's fexecve: on ENOSYS it would run /proc/self/fd/N,
    a path in the guest's /proc).  Returns the errno when it fails."""
    argv = (ctypes.c_char_p * (len(exe.args) + 1))(*[os.fsencode(a) for a in exe.args], None)
    envp = (ctypes.c_char_p * (len(env) + 1))(*[os.fsencode(f"{k}={v}") for k, v in env.items()], None)
    if exe.link_name and _same_file(exe.link_dir, exe.link_name, exe.fd):
        libc.execveat(exe.link_dir, os.fsencode(exe.link_name), argv, envp, 0)
    elif exe.name:
        libc.execveat(exe.dir_fd, os.fsencode(exe.name), argv, envp, _AT_SYMLINK_NOFOLLOW)
    else:
        libc.execveat(exe.fd, b"", argv, envp, _AT_EMPTY_PATH)
    return ctypes.get_errno() or errno.EIO
