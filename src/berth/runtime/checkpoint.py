"""Checkpoint and restore of one container with CRIU.

**Dump**: ``criu dump`` of the tree under the container's init, with ``--tcp-established``
(established TCP connections survive), ``--manage-cgroups`` and the container's namespaces
(pid, mount, uts, ipc, net, cgroup: all the container's own, so CRIU dumps and re-creates them;
with ``external_netns`` the network namespace is left out and restore gets one from the caller).
The processes are seized with ptrace when they all descend from the init; otherwise (a ``berth
exec`` session) the cgroup is frozen by CRIU (``--freeze-cgroup``, which polls a v1 freezer in
100 ms steps: a tenth of a second of downtime).  Established connections are locked with one
nftables table (``--network-lock nftables``); ``--file-locks`` only when the processes hold a lock
(/proc/locks).  Files the container holds open from the host's mount namespace
(the guest's stdin ``/dev/null``, its console log) are declared external (``--external
file[MNT:INODE]``) and re-opened on restore (``--inherit-fd``).  The root filesystem is not
in the images: for an overlay guest the caller ships the upper layer with the images (the
template below it is shared), and restore mounts the same overlay again.  ``berth.json`` in
the image directory records what restore needs: the state, the overlay, the external files,
the cgroup's resources, the options the dump was made with.  It is written at CRIU's post-dump
step (an action script that waits for berth: :func:`berth.runtime.criu.run`), once the images
are whole and before CRIU ends the processes: an image directory with berth.json holds a whole
dump, and a berth killed before that step leaves the processes running (CRIU resumes them).

**tmpfs mounts** (``own_tmpfs``, berth's guests): CRIU would tar and gzip each tmpfs of the
container (/dev, /dev/shm, /sys/fs/cgroup, the masked paths: one ``tar`` and one ``gzip``
process per mount, some 7 ms each at dump and again at restore, all in the downtime).  Instead
each tmpfs mounted whole once is declared external (``--external mnt[MNT]:berth-tmpfs-N``);
berth holds an fd on its root during the dump (the filesystem outlives the processes CRIU ends)
and copies its entries (types, device nodes, modes, owners, times, xattrs, hard links) into
``images``/tmpfs/N afterwards.  Restore mounts a new tmpfs with the same options for each in
the restoring process's mount namespace, fills it from there, and CRIU binds it in place with
the mount's flags; binds of part of one (/dev/null over /proc/keys) follow.  With
``leave_running`` CRIU tars them as before (the processes would change them while berth copied).

**Pre-dump**: ``criu pre-dump --track-mem`` (and a dump with ``--prev-images-dir``) copies
memory while the guest runs.  It needs the kernel's soft-dirty bits (``CONFIG_MEM_SOFT_DIRTY``,
``criu check --feature mem_dirty_track``); where that is missing, :func:`can_pre_dump` says so.

**Restore** goes into a fresh container with the same id: a new state directory, the cgroup
created again with the same limits and joined by the restoring process (CRIU is told to leave
cgroups alone: the processes it creates are in it already), the overlay mounted in a private
mount namespace of the restoring process (so the host never sees it) and given to CRIU as
``--root``; CRIU re-creates the namespaces, the processes, their memory and connections.  The
restored init's pid and start time go to state.json.  CRIU runs (dump and restore) with berth's
copy of its kerndat cache (:func:`berth.runtime.criu.private_run`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
import subprocess
import time

from berth.errors import BerthError, StateError, UnsupportedError
from berth.linux import sparse
from berth.runtime import ckuserns, extmounts, scope
from berth.runtime import criu as criu_mod
from berth.runtime import state as st

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

    from berth.runtime.container import Container

META = "berth.json"
NETNS_KEY = "berth-netns"
# The character devices a restored guest's copied tmpfs (and a migrated tree) may hold:
# overlayfs's whiteout (0:0) and those every guest's /dev has (null, zero, full, random,
# urandom, tty, ptmx); never a block device nor another character device.
SAFE_DEVICES = frozenset(
    os.makedev(a, b) for a, b in ((0, 0), (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2))
)
# The content of the container's tmpfs mounts, copied by berth (dump(own_tmpfs=True)).
TMPFS_DIR = "tmpfs"
TMPFS_KEY = "berth-tmpfs-"
# Lock TCP connections with one nftables table (in CRIU) rather than iptables-restore runs.
NETWORK_LOCK = "nftables"
_O_ACCMODE = 0o3
_O_APPEND = 0o2000
# The host files a restore reopens for a checkpoint's external files by default: these devices
# by their exact names (a checkpoint may name any path: /dev/tty, /etc/passwd).
REOPEN_DEVICES = {
    "/dev/null": (1, 3),
    "/dev/zero": (1, 5),
    "/dev/full": (1, 7),
    "/dev/random": (1, 8),
    "/dev/urandom": (1, 9),
}


def safe_reopen(f: dict[str, Any]) -> str:
    """The default ``reopen`` of :func:`restore`: one of :data:`REOPEN_DEVICES` (checked: that
    character device, not a symlink), else StateError naming the file."""
    path = str(f.get("path"))
    want = REOPEN_DEVICES.get(path)
    try:
        st_ = os.lstat(path) if want else None
    except OSError:
        st_ = None
    if want is None or st_ is None or not stat.S_ISCHR(st_.st_mode) or st_.st_rdev != os.makedev(*want):
        raise StateError(
            f"the checkpoint holds the host file {path!r} open: a restore reopens only "
            f"{', '.join(REOPEN_DEVICES)}"
        )
    return path


def caller_stdio_reopen(f: dict[str, Any]) -> str | int:
    """The ``reopen`` of ``berth-runtime restore``: a harmless device (:func:`safe_reopen`), or
    the file the restoring command has as its own stdin, stdout or stderr (the caller hands the
    restored container its output file, as at the create), opened anew through that descriptor
    (the same file, whatever its path names meanwhile).  Any other host file: StateError."""
    path = str(f.get("path"))
    if path in REOPEN_DEVICES:
        return safe_reopen(f)
    try:
        st_ = os.lstat(path)
    except OSError:
        st_ = None
    if st_ is not None and stat.S_ISREG(st_.st_mode):
        for n in (0, 1, 2):
            try:
                mine = os.fstat(n)
            except OSError:
                continue
            if (mine.st_dev, mine.st_ino) == (st_.st_dev, st_.st_ino):
                flags = _open_flags(f["flags"]) & ~os.O_CREAT
                return os.open(f"/proc/self/fd/{n}", flags | os.O_CLOEXEC | os.O_NOCTTY)
    return safe_reopen(f)  # refused, in its words


def _reopen(path: str | int, f: dict[str, Any], userns: dict[str, Any] | None) -> int:
    """Open ``path`` for the external file ``f`` (an int: opened already by ``reopen``): a
    device as it is (never created, chmod'ed or chown'ed); a regular file (the guest's console
    log) created if missing, with at most the recorded mode's read/write bits, and given to the
    user namespace's root."""
    flags = _open_flags(f["flags"]) | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW
    try:
        fd = path if isinstance(path, int) else os.open(path, flags & ~os.O_CREAT)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
        mode = int(f.get("mode") or 0o640) & 0o666
        fd = os.open(path, flags | os.O_EXCL, mode)
        os.fchmod(fd, mode)  # CRIU checks the mode of the file it is given
    else:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        mode = f.get("mode")
        if isinstance(mode, int) and os.fstat(fd).st_mode & 0o7777 != mode & 0o666:
            os.fchmod(fd, mode & 0o666)
    if userns:
        ckuserns.own_file(userns, fd)
    return fd


# -- what the container holds -----------------------------------------------------------------
def _mount_ids(pid: int) -> set[int]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return {int(line.split()[0]) for line in f if line.strip()}


def overlay_of(pid: int) -> dict[str, Any] | None:
    """The overlay mounted as the container's root ({"lower": [...], "upper", "work"}), if any."""
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] != "/":
                continue
            sep = fields.index("-")
            if fields[sep + 1] != "overlay":
                return None
            opts = dict(o.partition("=")[::2] for o in fields[sep + 3].split(","))
            return {"lower": opts["lowerdir"].split(":"), "upper": opts["upperdir"], "work": opts["workdir"]}
    return None


def external_files(pids: list[int]) -> list[dict[str, Any]]:
    """Files the processes hold open from outside the container's mounts (the host's
    /dev/null, a log file): CRIU cannot find them in the container, berth re-opens them."""
    out: dict[str, dict[str, Any]] = {}
    if not pids:
        return []
    inside = _mount_ids(pids[0])
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    info = dict(ln.split(":", 1) for ln in f.read().splitlines() if ":" in ln)
                mnt = int(info["mnt_id"])
                if mnt in inside:
                    continue
                path = os.readlink(f"/proc/{pid}/fd/{fd}")
                if not path.startswith("/"):
                    continue  # pipes, sockets, anon inodes: CRIU handles them
                stt = os.stat(f"/proc/{pid}/fd/{fd}")
                ino = stt.st_ino
            except (OSError, KeyError, ValueError):
                continue
            key = f"file[{mnt:x}:{ino:x}]"
            flags = int(info["flags"], 8)
            out.setdefault(
                key,
                {
                    "key": key,
                    "path": path,
                    "flags": flags & (_O_ACCMODE | _O_APPEND),
                    "mode": stt.st_mode & 0o7777,
                },
            )
    return list(out.values())


def holds_file_locks(pids: Sequence[int]) -> bool:
    """Whether any of ``pids`` holds a POSIX or flock lock (CRIU's --file-locks is needed)."""
    want = {str(p) for p in pids}
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF" ("->" marks a waiter)
                rest = fields[2:] if fields[1:2] == ["->"] else fields[1:]
                if len(rest) > 3 and rest[3] in want:
                    return True
    except OSError:
        return True  # cannot tell: dump them
    return False


def _all_in_tree(init: int, pids: Sequence[int]) -> bool:
    """Whether every pid in ``pids`` descends from ``init`` (``berth exec`` sessions do not).
    A pid gone since the list was read is no process to dump (a guest's short-lived ``sleep``
    could make this False: CRIU then froze the cgroup, and CRIU's dump of a task stopped with
    SIGSTOP in a frozen cgroup can hang, CRIU's PR 1813)."""
    parent = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone
        except (OSError, ValueError, IndexError):
            return False
    for start in parent:
        pid = start
        for _ in range(len(pids) + 1):
            if pid == init:
                break
            if pid not in parent:
                return False
            pid = parent[pid]
        else:
            return False
    return True


def _own_netns(pid: int) -> int | None:
    """The inode of ``pid``'s network namespace if it is not ours (the host's)."""
    ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    return None if ino == os.stat("/proc/self/ns/net").st_ino else ino


def _freezer_dir(c: Container) -> str | None:
    cg = c.cgroup()
    if cg is None:
        return None
    d = cg.dir("freezer")
    return d or cg.unified_dir()


def delegated(cg: Any) -> dict[str, Any] | None:
    """To whom ``cg`` was delegated ({"uid", "gid", "v1"}: a guest in its own user namespace
    whose root manages its cgroup, as systemd does), None if it was not; restore delegates the
    new cgroup the same way."""
    if cg is None:
        return None
    v2 = cg.unified_dir()
    found = None
    v1 = False
    for d in cg.delegation_dirs(v1=True):
        try:
            st_ = os.stat(d)
        except OSError:
            continue
        if st_.st_uid != 0:
            found = {"uid": st_.st_uid, "gid": st_.st_gid}
            v1 = v1 or d != v2
    return None if found is None else {**found, "v1": v1}


def refuse_scoped(state: dict[str, Any], cid: str) -> None:
    """Refuse to checkpoint a container whose processes run under a Landlock scope
    (:mod:`berth.runtime.scope`; ``state``: its state record).  CRIU 4.1.1 knows nothing of
    Landlock: its parasite, run inside each process, connects to CRIU's control socket, an
    abstract unix socket made outside the domain, and the scope refuses that (the dump fails);
    and a restore would give the processes back without the domain, which no one can put them
    in again from outside.  Better no checkpoint than a guest silently unscoped."""
    scopes = scope.applied(state)
    if scopes:
        raise UnsupportedError(
            f"checkpoint of {cid!r}: its processes run under a Landlock scope ({scope.names(scopes)}: it "
            "shares the host's network or pid namespace), which CRIU 4.1.1 can neither dump nor restore; "
            "to checkpoint or migrate it, create it with --security-opt landlock=unconfined "
            f"(berth-runtime: without the {scope.ANNOTATION} annotation)"
        )


def _check_restorable(pid: int) -> None:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return
    if exe.startswith("/memfd:"):
        raise UnsupportedError(
            "checkpoint: the guest's init runs from a memfd (berth's tini), which CRIU 4.1.1 cannot "
            "restore as an executable; run the guest with --no-init"
        )


def _external_binds(
    pid: int, criu_args: Sequence[str], *, cgroups: bool = False, sysfs: bool = False
) -> list[dict[str, Any]]:
    """The container's binds CRIU is to take as external (:mod:`berth.runtime.extmounts`), each
    with its key; those the caller's ``criu_args`` name already are left to it."""
    named = {a[4 : a.index("]")] for a in criu_args if a.startswith("mnt[") and "]" in a}
    out = []
    for e in extmounts.of_pid(pid, cgroups=cgroups, sysfs=sysfs):
        if e["mnt"] in named:
            continue
        if e["host"] is None:
            raise UnsupportedError(
                f"checkpoint: {e['mnt']} in the guest is bound from a filesystem not mounted on the host"
            )
        out.append({**e, "key": f"{extmounts.KEY}{len(out)}"})
    return out


# -- the container's tmpfs mounts ----------------------------------------------------------------
def _hold_tmpfs(pid: int) -> list[tuple[dict[str, Any], int]]:
    """The container's tmpfs mounts (:func:`tmpfs_mounts`), each with an fd on its root that
    keeps the filesystem readable after CRIU has ended the processes (and their mount
    namespace).  One that cannot be opened as itself is left to CRIU."""
    out = []
    for m in tmpfs_mounts(pid):
        try:
            flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(f"/proc/{pid}/root{m['mnt']}", flags)
        except OSError:
            continue
        if os.fstat(fd).st_dev != m["dev"]:
            os.close(fd)
            continue
        out.append((m, fd))
    return out


def _save_tmpfs(held: list[tuple[dict[str, Any], int]], images: str) -> list[dict[str, Any]]:
    """Copy the held tmpfs mounts into ``images``/tmpfs/N; their records for berth.json."""
    top = os.path.join(images, TMPFS_DIR)
    os.mkdir(top, 0o700)
    out = []
    for i, (m, fd) in enumerate(held):
        rel = f"{TMPFS_DIR}/{i}"
        os.mkdir(os.path.join(images, rel), 0o700)
        copy_tree(f"/proc/self/fd/{fd}", os.path.join(images, rel), m["dev"])
        keep = {k: m.get(k) for k in ("mnt", "source", "options", "mnt_options")}
        out.append({"key": f"{TMPFS_KEY}{i}", **keep, "dir": rel})
    return out


def tmpfs_mounts(pid: int) -> list[dict[str, Any]]:
    """The container's tmpfs filesystems mounted whole (root "/") exactly once: [{"mnt" (the
    mount point inside), "dev" (st_dev), "source", "options" (the superblock's)}].  A tmpfs
    mounted whole twice is left to CRIU (two copies would not be one filesystem again)."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return parse_tmpfs_mounts(f.read())


def parse_tmpfs_mounts(mountinfo: str) -> list[dict[str, Any]]:
    """:func:`tmpfs_mounts` of a mountinfo text."""
    whole: dict[int, list[dict[str, Any]]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if fields[sep + 1] != "tmpfs" or fields[3] != "/":
            continue
        major, minor = (int(x) for x in fields[2].split(":"))
        dev = os.makedev(major, minor)
        mnt = _unescape(fields[4])
        whole.setdefault(dev, []).append(
            {"mnt": mnt, "dev": dev, "source": _unescape(fields[sep + 2]), "options": fields[sep + 3]}
        )
        whole[dev][-1]["mnt_options"] = fields[5]  # the mount's own flags (nosuid, atime)
    return [ms[0] for ms in whole.values() if len(ms) == 1]


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) decoded."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _tmpfs_data(options: str) -> tuple[bool, str]:
    """(read-only, mount data) from a tmpfs superblock's options in mountinfo."""
    opts = [o for o in options.split(",") if o]
    return "ro" in opts, ",".join(o for o in opts if o not in ("ro", "rw"))


def copy_tree(src: str, dst: str, dev: int | None = None, *, safe: bool = False) -> None:
    """Copy the tree at ``src`` into the directory ``dst`` (there already: it gets ``src``'s
    mode, owner, times and extended attributes), every entry with its type (files, directories,
    symlinks, device nodes, fifos; sockets are left out: their owners bind them again), mode,
    owner, times, extended attributes and hard links.  ``dev``: only this filesystem (mount
    points of others are copied as empty directories).  ``safe``: from a checkpoint that may
    have been tampered with: no device node but :data:`SAFE_DEVICES` (StateError)."""
    links: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, os.stat_result, str]] = []
    todo = [(src, dst)]
    while todo:
        sdir, ddir = todo.pop()
        with os.scandir(sdir) as it:
            entries = list(it)
        for e in entries:
            s, d = e.path, os.path.join(ddir, e.name)
            st = os.lstat(s)
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFDIR:
                os.mkdir(d, 0o700)
                dirs.append((s, st, d))
                if dev is None or st.st_dev == dev:
                    todo.append((s, d))
                continue
            if fmt == stat.S_IFREG:
                first = links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
                if first is not None:
                    os.link(first, d)
                    continue
                _copy_file(s, d)
                if st.st_nlink > 1:
                    links[(st.st_dev, st.st_ino)] = d
            elif fmt == stat.S_IFLNK:
                os.symlink(os.readlink(s), d)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
                if safe and fmt != stat.S_IFIFO and (fmt == stat.S_IFBLK or st.st_rdev not in SAFE_DEVICES):
                    raise StateError(
                        f"{s}: device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} in a checkpoint"
                    )
                os.mknod(d, fmt | 0o600, st.st_rdev)
            else:
                continue  # a socket
            _copy_meta(s, st, d)
    for s, st, d in reversed(dirs):  # after their contents (which change a directory's times)
        _copy_meta(s, st, d)
    _copy_meta(src, os.stat(src), dst, follow=True)  # src may be a /proc/self/fd link


def _copy_file(src: str, dst: str) -> None:
    fi = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            sparse.copy(fi, fo, os.fstat(fi))  # a guest's sparse file in its tmpfs: its holes stay holes
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def _copy_meta(src: str, st: os.stat_result, dst: str, *, follow: bool = False) -> None:
    """``src``'s owner, mode, extended attributes and times onto ``dst``, in that order (a chown
    clears ``security.capability`` and the set-id bits: the chmod after it sets the bits again,
    the file capabilities come last)."""
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError:
        names = []
    for n in names:
        try:
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=follow), follow_symlinks=False)
        except OSError:
            pass  # a name the filesystem does not take
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def can_pre_dump(criu: str) -> str | None:
    """None if iterative pre-dumps work here, else why not."""
    if criu_mod.has_feature(criu, "mem_dirty_track"):
        return None
    return "the kernel has no soft-dirty page tracking (CONFIG_MEM_SOFT_DIRTY), which CRIU's pre-dump needs"


# -- dump --------------------------------------------------------------------------------------
def dump(
    c: Container,
    images: str,
    *,
    leave_running: bool = False,
    tcp_established: bool = True,
    pre_dump: bool = False,
    parent: str | None = None,
    work: str | None = None,
    criu: str | None = None,
    resources: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    criu_args: Sequence[str] = (),
    external_netns: bool = False,
    own_tmpfs: bool = False,
    cgroup_props: bool = True,
    on_post_dump: Callable[[], None] | None = None,
    on_spawn: Callable[[int], None] | None = None,
    on_written: Callable[[], None] | None = None,
    on_freeze: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Checkpoint ``c`` into ``images``; the metadata written there as berth.json.

    berth.json (and the tmpfs copies) are written at CRIU's post-dump step, once the images are
    whole and before CRIU ends (or resumes) the processes: a dump directory with berth.json is
    complete.  If this process dies before, CRIU resumes the processes (the action script of
    :func:`berth.runtime.criu.run` fails).  ``on_post_dump()``: called first at that step;
    ``on_spawn(pid)``: called with CRIU's pid once it runs (not for a pre-dump);
    ``on_written()``: called at that step once berth.json is written.  ``on_freeze()``: called
    before CRIU runs if CRIU is to freeze the container's cgroup (``--freeze-cgroup``): a CRIU
    killed then leaves it frozen.

    ``parent``: an earlier pre-dump's image dir (relative paths are taken from ``images``).
    ``criu_args``: more options for ``criu dump`` (berth-runtime's external mounts and namespaces).
    ``external_netns``: the container's own network namespace is not dumped (its addresses,
    routes, firewall): restore puts the processes into one the caller made (:func:`restore`'s
    ``netns_fd``), or a fresh one with loopback up.  Its sockets are dumped as usual.
    ``own_tmpfs`` (without ``leave_running``): the content of the container's tmpfs mounts is
    copied by berth into ``images``/tmpfs after the dump, not tarred by CRIU (see the module's
    notes); restore mounts them again from there.  ``cgroup_props=False``: CRIU records the
    processes' cgroups but not the cgroups' settings (``--manage-cgroups=ignore``: it need not
    mount every hierarchy, some 15 ms of downtime on a v1 host), for a restore that is given the
    resources (berth's own restore is: it recreates the cgroup with them before CRIU runs).
    Without ``leave_running`` (and unless ``pre_dump``) the container's processes are gone
    afterwards and its state directory is kept for :func:`forget`.
    """
    criu = criu or criu_mod.find()
    status = c.status()
    if status not in (st.RUNNING, st.PAUSED):
        raise StateError(f"container {c.id!r} is {status}: only a running container can be checkpointed")
    refuse_scoped(c.data, c.id)
    _check_restorable(c.pid)
    if pre_dump:
        why = can_pre_dump(criu)
        if why:
            raise criu_mod.CriuError(f"checkpoint --pre-dump: {why}")
    os.makedirs(images, 0o700, exist_ok=True)
    work = work or images
    os.makedirs(work, 0o700, exist_ok=True)
    cg = c.cgroup()
    pids = cg.pids() if cg is not None else [c.pid]
    files = external_files(sorted(pids, key=lambda p: p != c.pid))
    overlay = overlay_of(c.pid)
    locks = holds_file_locks(pids)
    userns = ckuserns.of_pid(c.pid, c.dir, overlay)
    deleg = delegated(cg)
    # In its own user namespace the guest's network namespace is CRIU's to dump (berth.runtime.ckuserns).
    netns = _own_netns(c.pid) if external_netns and not pre_dump and userns is None else None
    args = ["pre-dump" if pre_dump else "dump", "-t", str(c.pid), "-D", images, "-W", work]
    if pre_dump:
        args += ["--track-mem"]
    else:
        args += ["--manage-cgroups" if cgroup_props else "--manage-cgroups=ignore"]
        args += ["--ext-unix-sk", "--link-remap", "--skip-in-flight"]
        args += ["--network-lock", NETWORK_LOCK]
        if locks:
            args.append("--file-locks")
        if tcp_established:
            args.append("--tcp-established")
        if leave_running:
            args.append("--leave-running")
        for f in files:
            args += ["--external", f["key"]]
        if netns:
            args += ["--external", f"net[{netns}]:{NETNS_KEY}"]
    # In its own user namespace but the host's network namespace (ip: mode), its /sys is the
    # host's, bound: CRIU, in the guest's new user namespace, may not mount a sysfs there.
    shared_net = _own_netns(c.pid) is None
    ext = _external_binds(
        c.pid, criu_args, cgroups=userns is not None, sysfs=userns is not None and shared_net
    )
    for e in ext:
        args += ["--external", f"mnt[{e['mnt']}]:{e['key']}"]
    held: list[tuple[dict[str, Any], int]] = []
    if own_tmpfs and not pre_dump and not leave_running:
        held = _hold_tmpfs(c.pid)
        for i, (m, _fd) in enumerate(held):
            args += ["--external", f"mnt[{m['mnt']}]:{TMPFS_KEY}{i}"]
    if parent:
        args += ["--prev-images-dir", parent, "--track-mem"]
    args += list(criu_args)
    freezer = _freezer_dir(c)
    # CRIU polls a v1 freezer every 100 ms after freezing it (100 ms of downtime for nothing);
    # when every process descends from the init, seizing them with ptrace is as complete.
    if freezer and status == st.RUNNING and not _all_in_tree(c.pid, pids):
        args += ["--freeze-cgroup", freezer]
        if on_freeze is not None:
            on_freeze()
    meta = {
        "version": 1,
        "id": c.id,
        "state": c.data,
        "overlay": overlay,
        "files": files,
        "resources": resources,
        "cgroup": (c.data.get("berth") or {}).get("cgroup", ""),
        "pre_dump": pre_dump,
        "file_locks": locks,
        "network_lock": NETWORK_LOCK,
        "netns_external": bool(netns),
        "cgroup_props": cgroup_props,
        "ext_mounts": ext,
        "userns": userns,
        "delegated": deleg,
        # What the delegate (a guest's systemd) made below its cgroup, made again on restore.
        "cgroup_tree": cg.subtree() if deleg and cg is not None else {},
        "host_netns": shared_net,
        "time": time.time(),
        **(extra or {}),
    }
    log = os.path.join(work, "pre-dump.log" if pre_dump else "dump.log")
    t0 = time.monotonic()

    def whole() -> None:
        # CRIU's images are whole, the processes still there (stopped): the tmpfs copies and
        # berth.json go in now, before CRIU ends them.  A dump whose berth.json exists is
        # complete; one killed before is not, and CRIU resumes the processes.
        if on_post_dump is not None:
            on_post_dump()
        meta["dump_seconds"] = time.monotonic() - t0
        if held:
            meta["tmpfs"] = _save_tmpfs(held, images)
            meta["tmpfs_seconds"] = time.monotonic() - t0 - meta["dump_seconds"]
        write_meta(images, meta)
        if on_written is not None:
            on_written()

    try:
        criu_mod.run(
            criu,
            args,
            log,
            what=f"checkpoint of {c.id!r}",
            kdat=True,
            post_dump=None if pre_dump else whole,
            on_spawn=on_spawn,
        )
        if pre_dump:
            meta["dump_seconds"] = time.monotonic() - t0
            write_meta(images, meta)
    finally:
        for _m, fd in held:
            os.close(fd)
    if not os.path.exists(os.path.join(images, META)):  # (a CRIU that ran no action script)
        raise criu_mod.CriuError(f"checkpoint of {c.id!r}: CRIU did not run its post-dump step (log: {log})")
    meta["dump_seconds"] = time.monotonic() - t0  # with CRIU's end of the processes
    return meta


def write_meta(images: str, meta: dict[str, Any]) -> None:
    """berth.json into ``images``, whole or not at all (written beside, renamed)."""
    path = os.path.join(images, META)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.rename(tmp, path)


def read_meta(images: str) -> dict[str, Any]:
    try:
        with open(os.path.join(images, META)) as f:
            meta: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        raise StateError(f"{images}: not a berth checkpoint (no {META})") from None
    except ValueError as e:
        raise StateError(f"{images}/{META}: damaged ({e})") from None
    if meta.get("pre_dump"):
        raise StateError(f"{images}: a pre-dump, not a checkpoint that can be restored")
    return meta


def forget(c: Container) -> None:
    """After a dump without --leave-running: remove what is left of the container (its cgroup
    and state directory; its processes are gone)."""
    c.delete(force=True)


# -- restore -----------------------------------------------------------------------------------
def _bad(images: str, field: str, why: str) -> StateError:
    return StateError(f"{images}/{META}: {field}: {why}")


def check_meta(meta: dict[str, Any], images: str, *, cgroup_path: str, binds: Sequence[str] = ()) -> None:
    """What a restore takes from a checkpoint's berth.json, checked (it may have been tampered
    with, or come from another host): a StateError naming the field.  Every host path it binds
    in is one of ``binds`` (the new spec's bind sources), berth's tini, a device of
    :data:`SAFE_DEVICES` or the guest's own cgroup (``cgroup_path``); every tmpfs copy is a
    directory of the image directory; every file it reopens an absolute, normal path; a
    pre-dump it builds on (``parent``) a berth pre-dump."""
    from berth.runtime.process import TINI

    real = os.path.realpath(images)
    with os.scandir(images) as it:  # CRIU's images themselves: none may lead out (/etc/shadow as pages)
        for e in it:
            if e.is_symlink() and e.name != "parent":
                raise StateError(f"{images}/{e.name}: a symlink in a checkpoint")
    if not isinstance(meta.get("state"), dict):
        raise _bad(images, "state", "missing or not an object")
    if meta.get("network_lock") not in (None, "iptables", "nftables", "skip"):
        raise _bad(images, "network_lock", f"{meta['network_lock']!r} is not a CRIU network lock")
    import re

    for field in ("ext_mounts", "tmpfs", "files"):  # their keys go into CRIU's --external and --inherit-fd
        for rec in meta.get(field) or [] if isinstance(meta.get(field), list) else []:
            key = rec.get("key") if isinstance(rec, dict) else None
            ok = isinstance(key, str) and (
                re.fullmatch(r"file\[[0-9a-f]+:[0-9a-f]+\]", key)
                if field == "files"
                else re.fullmatch(r"[\w./-]+", key, re.ASCII)
            )
            if not ok:
                raise _bad(images, field, f"the key {key!r} is not one berth makes")
    allowed = {os.path.normpath(b) for b in binds if isinstance(b, str)} | {TINI, os.path.realpath(TINI)}
    ext = meta.get("ext_mounts") or []
    if not isinstance(ext, list):
        raise _bad(images, "ext_mounts", "not a list")
    for e in ext:
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("mnt", "host", "key")):
            raise _bad(images, "ext_mounts", f"{e!r} is not a mount record")
        host = e["host"]
        if e.get("sysfs"):
            continue  # a new sysfs is mounted for it, nothing of the host's
        if os.path.normpath(host) != host or not host.startswith("/"):
            raise _bad(images, "ext_mounts", f"{host!r} is not an absolute, normal path")
        if e.get("cgroup"):
            moved = extmounts.moved_cgroup(host, str(meta.get("cgroup") or ""), cgroup_path)
            if not (moved.startswith("/sys/fs/cgroup/") and moved.endswith("/" + cgroup_path.strip("/"))):
                raise _bad(images, "ext_mounts", f"{host!r} is not the guest's own cgroup")
            continue
        if host in allowed:
            continue
        try:
            dev = os.stat(host)
        except OSError:
            dev = None
        if dev is None or not stat.S_ISCHR(dev.st_mode) or dev.st_rdev not in SAFE_DEVICES:
            raise _bad(images, "ext_mounts", f"the host path {host!r} is not one this guest binds")
    tmpfs = meta.get("tmpfs") or []
    if not isinstance(tmpfs, list):
        raise _bad(images, "tmpfs", "not a list")
    for t in tmpfs:
        d = t.get("dir") if isinstance(t, dict) else None
        if (
            not isinstance(d, str)
            or not d.startswith(f"{TMPFS_DIR}/")
            or not d[len(TMPFS_DIR) + 1 :].isdigit()
        ):
            raise _bad(images, "tmpfs", f"{d!r} is not a copy in the image directory")
        if not all(
            isinstance(t.get(k), (str, type(None))) for k in ("key", "source", "options", "mnt_options")
        ):
            raise _bad(images, "tmpfs", f"{d!r}: a field is not a string")
        path = os.path.join(images, d)
        if os.path.realpath(path) != os.path.join(real, d) or not os.path.isdir(path):
            raise _bad(images, "tmpfs", f"{d!r} is not a directory of the image directory")
        for top, _dirs, names in os.walk(path):  # its device nodes: those a guest's /dev has
            for n in names:
                st_ = os.lstat(os.path.join(top, n))
                if stat.S_ISBLK(st_.st_mode) or (
                    stat.S_ISCHR(st_.st_mode) and st_.st_rdev not in SAFE_DEVICES
                ):
                    rdev = f"{os.major(st_.st_rdev)}:{os.minor(st_.st_rdev)}"
                    raise _bad(images, "tmpfs", f"{os.path.join(top, n)}: device {rdev} in a checkpoint")
    files = meta.get("files") or []
    if not isinstance(files, list):
        raise _bad(images, "files", "not a list")
    for f in files:
        path = f.get("path") if isinstance(f, dict) else None
        if not isinstance(path, str) or not path.startswith("/") or os.path.normpath(path) != path:
            raise _bad(images, "files", f"{path!r} is not an absolute, normal path")
        if not isinstance(f.get("flags"), int) or not isinstance(f.get("key"), str):
            raise _bad(images, "files", f"{path!r}: its flags or key are missing")
    _check_parents(images)


def _check_parents(images: str) -> None:
    """The pre-dumps a checkpoint builds on (CRIU's ``parent`` links, followed by the restore
    and made readable to the guest): each a berth pre-dump beside the checkpoint, not any
    directory of the host."""
    path = images
    beside = os.path.dirname(os.path.realpath(images)) + "/"  # where pre-dumps are made
    seen: set[str] = set()
    while os.path.lexists(parent := os.path.join(path, "parent")):
        real = os.path.realpath(parent)
        if real in seen:
            return
        seen.add(real)
        if not real.startswith(beside):
            raise StateError(f"{images}: its parent {real} is not beside it")
        try:
            with open(os.path.join(real, META)) as f:
                ok = json.load(f).get("pre_dump") is True
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise StateError(f"{images}: its parent {real} is not a berth pre-dump")
        path = real


def restore(
    state_root: str,
    cid: str,
    images: str,
    *,
    cgroup_path: str | None = None,
    overlay: dict[str, Any] | None = None,
    rootfs: str | None = None,
    resources: dict[str, Any] | None = None,
    reopen: Callable[[dict[str, Any]], str | int] | None = None,
    bundle: str | None = None,
    work: str | None = None,
    tcp_established: bool = True,
    criu: str | None = None,
    pid_file: str | None = None,
    criu_args: Sequence[str] = (),
    inherit: Sequence[tuple[int, str]] = (),
    netns_fd: int | None = None,
    on_cgroup: Callable[[Any], None] | None = None,
    binds: Sequence[str] = (),
    hooks: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    verify: Callable[[int, list[int]], None] | None = None,
    own_lock_only: bool = False,
    seccomp_program: bytes | None = None,
) -> Container:
    """Restore the checkpoint in ``images`` as container ``cid`` under ``state_root``.

    ``overlay`` (lower/upper/work) or ``rootfs`` give the root filesystem (default: what was
    recorded at dump time); ``cgroup_path`` the cgroup (default: the recorded one), created and
    given ``resources`` (default: the recorded ones); ``reopen(file)`` maps an external file
    recorded at dump time to the path to open now (default: :func:`safe_reopen`, the harmless
    devices only).  ``inherit``:
    (fd, CRIU key) pairs of the caller's open fds CRIU is to use for the key (``--inherit-fd``:
    stdio pipes, an external network namespace); ``criu_args``: more options.  ``netns_fd``:
    the network namespace for a checkpoint dumped with ``external_netns`` (default: a new one
    with loopback up).  ``on_cgroup(cgroup)``: called once the cgroup exists with its limits,
    before any process is restored into it (a guest's address filter is attached there).  On
    failure nothing is left: no state directory, cgroup or process.

    ``spec`` (the container's spec now): its CPU request (share, reservation, cap) is admitted
    on this host and everyone's CPU weights recomputed, as a create does
    (:func:`berth.runtime.resources.place`: AdmissionError when the reservations would pass
    the host's capacity).  Without it the recorded request is kept as it was.

    The image directory may have been tampered with (or sent by another host): its berth.json
    is checked (:func:`check_meta`: the host paths it binds in must be the caller's ``binds``,
    the guest's devices, berth's tini or the guest's own cgroup; its tmpfs copies in the image
    directory), and the restored state keeps none of the old one's commands: its poststart and
    poststop ``hooks`` are the caller's (the new spec's).

    ``verify(init, pids)`` (images from another host): the processes are restored stopped
    (``--leave-stopped``) and checked before they run (:func:`berth.runtime.ckverify.verify`:
    it raises on a mismatch, and they are killed), then continued.  ``own_lock_only``: CRIU's
    connection lock table (named from the images' run id) is dropped after the restore only if
    it did not exist before it: one that did is someone else's.  ``seccomp_program``: the
    spec's filter, kept in the state directory as a create keeps it, for what ``exec`` starts
    in the restored container (without it an exec'd process had no filter).
    """
    from berth.cgroups import open_cgroup
    from berth.runtime.container import Container

    criu = criu or criu_mod.find()
    meta = read_meta(images)
    old = meta["state"]
    overlay = overlay if overlay is not None else (None if rootfs else meta.get("overlay"))
    cgroup_path = cgroup_path or meta.get("cgroup") or f"berth/{cid}"
    resources = resources if resources is not None else meta.get("resources")
    check_meta(meta, images, cgroup_path=cgroup_path, binds=binds)
    check_pages(images)
    sdir = st.reserve(state_root, cid)
    cg = None
    pid = 0
    fds: list[int] = []
    res_lock = None
    try:
        if spec is not None:
            from berth.runtime import resources as res_mod

            linux = {**(spec.get("linux") or {}), "resources": copy.deepcopy(resources or {})}
            res_lock, res_fields = res_mod.place(state_root, cid, cgroup_path, spec, linux)
            resources = linux["resources"]
        else:
            res_fields = {k: v for k, v in (old.get("berth") or {}).items() if k in ("cpu", "limits")}
        if seccomp_program:
            with open(os.path.join(sdir, "seccomp.bpf"), "wb") as f:  # for exec
                f.write(seccomp_program)
        cg = open_cgroup(cgroup_path)
        cg.create()
        if resources:
            cg.set(resources)
        deleg = meta.get("delegated")
        if deleg:
            cg.delegate(int(deleg["uid"]), int(deleg["gid"]), v1=bool(deleg.get("v1")))
            if meta.get("cgroup_tree"):
                cg.recreate(meta["cgroup_tree"], int(deleg["uid"]), int(deleg["gid"]))
        if on_cgroup is not None:
            on_cgroup(cg)
        target = rootfs
        if overlay is not None:
            target = os.path.join(sdir, "rootfs")
            os.mkdir(target, 0o755)
        if not target:
            raise StateError(f"{images}: no root filesystem recorded: pass the rootfs")
        work = work or os.path.join(sdir, "criu")
        os.makedirs(work, 0o700, exist_ok=True)
        pidf = os.path.join(sdir, "criu.pid")
        args = [
            "restore",
            "-D",
            images,
            "-W",
            work,
            "--root",
            target,
            "--restore-detached",
            "--pidfile",
            pidf,
        ]
        if verify is not None:
            args.append("--leave-stopped")  # checked before they run (below)
        nft_lock = meta.get("network_lock") == "nftables"
        lock_was_there = own_lock_only and nft_lock and lock_table_exists(images)
        # The restoring process has joined the cgroup (made above with the limits): the restored
        # processes are created in it and CRIU need not mount and walk cgroup trees again
        # (--cgroup-root: for a caller's --manage-cgroups=soft|full|strict after ours).
        # A guest whose systemd made cgroups below its own (made again above): CRIU puts each
        # process back into its own (soft: it writes no settings into what it finds).
        manage = "soft" if meta.get("cgroup_tree") else "ignore"
        args += [f"--manage-cgroups={manage}", "--cgroup-root", "/" + cgroup_path.strip("/")]
        args += ["--ext-unix-sk", "--link-remap"]
        if meta.get("file_locks", True):
            args.append("--file-locks")
        if meta.get("network_lock"):
            args += ["--network-lock", meta["network_lock"]]
        if meta.get("userns") and meta.get("host_netns"):
            # On the host's network from a user namespace of its own: TCP repair needs
            # CAP_NET_ADMIN over the host's network, which CRIU there lacks.  Established
            # connections come back closed (the peer learns it at its next send); listeners and
            # everything else as they were.
            args.append("--tcp-close")
        elif tcp_established:
            args.append("--tcp-established")
        if meta.get("netns_external"):
            fd = new_netns() if netns_fd is None else os.dup(netns_fd)
            fds.append(fd)
            args += ["--inherit-fd", f"fd[{fd}]:{NETNS_KEY}"]
        for f in meta.get("files") or []:
            path = (reopen or safe_reopen)(f)
            fd = _reopen(path, f, meta.get("userns"))
            os.set_inheritable(fd, True)
            fds.append(fd)
            args += ["--inherit-fd", f"fd[{fd}]:{f['key']}"]
        for theirs, key in inherit:
            fd = os.dup(theirs)  # criu gets it under this number (pass_fds)
            fds.append(fd)
            args += ["--inherit-fd", f"fd[{fd}]:{key}"]
        tmpfs = []
        for t in meta.get("tmpfs") or []:
            # Mounted and filled in the restoring process's mount namespace; CRIU binds it in.
            at = os.path.join(work, f"tmpfs-{len(tmpfs)}")
            os.mkdir(at, 0o700)
            tmpfs.append({**t, "at": at, "from": os.path.join(images, t["dir"])})
            args += ["--external", f"mnt[{t['key']}]:{at}"]
        sysfs_at = []
        for e in meta.get("ext_mounts") or []:
            host = e["host"]
            if e.get("cgroup"):
                host = extmounts.moved_cgroup(host, meta.get("cgroup") or "", cgroup_path)
            if e.get("sysfs"):  # a new sysfs, mounted in the restoring process's mount namespace
                host = os.path.join(work, f"sysfs-{len(sysfs_at)}")
                os.mkdir(host, 0o700)
                sysfs_at.append(host)
            args += ["--external", f"mnt[{e['key']}]:{host}"]
        args += list(criu_args)
        # Of the old state only what names nothing to run or remove on this host.
        data = {k: old[k] for k in ("ociVersion", "annotations") if k in old}
        berth = {k: v for k, v in (old.get("berth") or {}).items() if k == "created"}
        berth.update(res_fields, cgroup=cg.path, rootfs=target, restored=time.time())
        if hooks:
            berth["hooks"] = hooks
        data.update(id=cid, status=st.CREATING, pid=0, berth=berth)
        if bundle:
            data["bundle"] = bundle
        st.write(state_root, cid, data)
        if res_lock is not None:  # counted from here on by the state's berth.cpu
            from berth.runtime import resources as res_mod

            res_mod.unlock(res_lock)
            res_lock = None
        log = os.path.join(work, "restore.log")
        if meta.get("userns"):
            ckuserns.share_with_guest(meta["userns"], images, sdir, work)
            if overlay is not None:
                overlay = ckuserns.overlay(meta["userns"], overlay, sdir)
        try:
            _restore_in_private_ns(criu, args, log, cg, overlay, target, fds, cid, tmpfs, sysfs_at)
        finally:
            for fd in (overlay or {}).get("lower_fds") or []:
                os.close(fd)
        with open(pidf) as f:
            pid = int(f.read().strip())
        if verify is not None:
            _verify_and_continue(verify, pid, cg, images)
        data["pid"] = pid
        data["status"] = st.RUNNING
        berth["start_time"] = st.proc_start_time(pid)
        st.write(state_root, cid, data)
        if nft_lock and not lock_was_there:
            drop_lock_table(images)
        if pid_file:
            tmp = f"{pid_file}.tmp"
            with open(tmp, "w") as f:
                f.write(str(pid))
            os.rename(tmp, pid_file)
        return Container(state_root, cid, data)
    except BaseException:
        if pid:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if cg is not None:
            try:
                cg.destroy()
            except BerthError:
                pass
        st.remove_tree(sdir)
        raise
    finally:
        if res_lock is not None:
            from berth.runtime import resources as res_mod

            res_mod.unlock(res_lock)
        for fd in fds:
            os.close(fd)


def _verify_and_continue(verify: Callable[[int, list[int]], None], pid: int, cg: Any, images: str) -> None:
    """The restored (stopped) tasks checked by ``verify``: continued (but for the processes
    stopped when dumped: :func:`berth.runtime.ckverify.stopped_at_dump`), or all killed (those
    of the cgroup by the caller's cleanup, descendants outside it here) and the error raised."""
    import signal

    from berth.runtime import ckverify

    try:
        verify(pid, cg.pids())
    except BaseException:
        for p in ckverify.tasks_of([pid, *cg.pids()]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        raise
    for p in ckverify.to_continue(pid, cg.pids(), ckverify.stopped_at_dump(images)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)


def _pb_fields(msg: bytes) -> Iterator[tuple[int, int, int | bytes | None]]:
    """The fields of a protobuf message as they come: (number, wire type, value), the value an
    int (varint), the bytes (length-delimited) or None (fixed32, fixed64: skipped).  ValueError
    where the message is malformed (a truncated varint or field, a varint of more than 64 bits:
    a tenth byte above 1 or an eleventh, field number 0, a group's wire type); the fields
    before it have been yielded."""
    i = 0

    def varint(what: str) -> int:
        nonlocal i
        value = 0
        for n in range(10):
            if i >= len(msg):
                raise ValueError(f"truncated {what}")
            b = msg[i]
            i += 1
            if n == 9 and b > 1:  # bits past the 64th (or an eleventh byte)
                raise ValueError(f"{what} of more than 64 bits")
            value |= (b & 0x7F) << (7 * n)
            if not b & 0x80:
                return value
        raise AssertionError("unreachable")  # the tenth byte returned or raised

    while i < len(msg):
        key = varint("key varint")
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        value: int | bytes | None = None
        if wire == 0:
            value = varint("varint")
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 2:
            n = varint("length varint")
            value = msg[i : i + n]
            i += n
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(msg):
            raise ValueError("truncated field")
        yield num, wire, value


def _pb_string(msg: bytes, field: int) -> str | None:
    """The string field ``field`` of a protobuf message: its last copy, as protobuf and CRIU
    take it (None if absent, not ASCII, or the message is malformed anywhere)."""
    last: bytes | None = None
    try:
        for num, _wire, value in _pb_fields(msg):
            if num == field and isinstance(value, bytes):  # wire type 2
                last = value
        return None if last is None else last.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None


def _pb_varints(msg: bytes) -> dict[int, int]:
    """The varint fields of a protobuf message ({field: value}; ValueError if malformed)."""
    return {num: value for num, wire, value in _pb_fields(msg) if wire == 0 and isinstance(value, int)}


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_PE_PRESENT = 4  # pagemap_entry.flags: the pages are in this dump's pages file


def check_pages(images: str) -> None:
    """Each ``pages-N.img`` holds exactly the pages its pagemap lists (a truncated or padded
    one makes CRIU's restore spin for good instead of failing: seen with CRIU 4.1.1)."""
    for name in sorted(os.listdir(images)):
        if not (name.startswith("pagemap-") and name.endswith(".img")):
            continue
        try:
            with open(os.path.join(images, name), "rb") as f:
                data = f.read()
            off, pages_id, want = 8, None, 0  # after the two magics
            while off < len(data):
                size = int.from_bytes(data[off : off + 4], "little")
                if off + 4 + size > len(data):
                    raise ValueError("truncated entry")
                fields = _pb_varints(data[off + 4 : off + 4 + size])
                off += 4 + size
                if pages_id is None:
                    pages_id = fields.get(1, 0)  # pagemap_head.pages_id
                    continue
                present = fields[4] & _PE_PRESENT if 4 in fields else not fields.get(3)  # flags, in_parent
                if present:
                    want += fields.get(2, 0) * PAGE_SIZE  # nr_pages
        except (OSError, ValueError, KeyError) as e:
            raise StateError(f"{images}/{name}: damaged ({e})") from None
        if pages_id is None:
            raise StateError(f"{images}/{name}: damaged (no header)")
        pages = os.path.join(images, f"pages-{pages_id}.img")
        have = os.stat(pages).st_size if os.path.exists(pages) else 0
        if have != want:
            raise StateError(
                f"{images}/pages-{pages_id}.img: damaged ({have} bytes; its pagemap lists {want})"
            )


def lock_table(images: str) -> str | None:
    """The nftables table (family inet) in which CRIU locks a dump's TCP connections on the
    host's network: ``CRIU-<run id>``, the run id from the dump's inventory, cut as CRIU cuts it
    (``inet CRIU-%s`` into 32 bytes).  None if the inventory has no run id."""
    try:
        with open(os.path.join(images, "inventory.img"), "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return None
    if len(data) < 8:
        return None
    size = int.from_bytes(data[4:8], "little")
    run_id = _pb_string(data[8 : 8 + size], 13)  # inventory_entry.dump_criu_run_id
    if not run_id or not all(c.isalnum() or c == "-" for c in run_id):
        return None
    return ("inet CRIU-" + run_id)[:31][len("inet ") :]


def lock_table_exists(images: str) -> bool:
    """Whether the dump's connection lock table (:func:`lock_table`) exists on this host now."""
    import shutil
    import subprocess

    table = lock_table(images)
    nft = shutil.which("nft")
    if table is None or nft is None:
        return False
    return subprocess.run([nft, "list", "table", "inet", table], capture_output=True).returncode == 0


def drop_lock_table(images: str) -> None:
    """Remove the dump's connection lock table if CRIU left it after the restore (it does when
    the connections came back closed, --tcp-close): its drop rules name 4-tuples that are gone.
    Best effort."""
    import shutil
    import subprocess

    table = lock_table(images)
    nft = shutil.which("nft")
    if table is None or nft is None:
        return
    if subprocess.run([nft, "list", "table", "inet", table], capture_output=True).returncode == 0:
        subprocess.run([nft, "delete", "table", "inet", table], capture_output=True)


class NetnsHolder:
    """A new network namespace with loopback up, held by a child process until :meth:`close`,
    so that it can be set up by pid (a veth moved in, addresses) before a restore uses it.  The
    child also sits in a mount namespace of its own, rooted in an empty tmpfs: whatever is
    written through /proc/PID/root (a guest's /etc/hosts) lands nowhere."""

    def __init__(self) -> None:
        from berth.linux.mount import MS, mount
        from berth.linux.ns import Clone, unshare
        from berth.runtime.init import _lo_up

        ready_r, ready_w = os.pipe()
        hold_r, self._hold_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: make them, say so, wait until the parent is done
            code = 1
            try:
                os.close(ready_r)
                os.close(self._hold_w)
                unshare(Clone.NEWNET | Clone.NEWNS)
                mount("none", "/", None, MS.REC | MS.PRIVATE)
                # /tmp of this private mount namespace only: the host's is not touched.
                mount("tmpfs", "/tmp", "tmpfs", MS.NOSUID | MS.NODEV | MS.NOEXEC, "size=1m,mode=755")
                os.mkdir("/tmp/etc")
                os.chroot("/tmp")
                os.chdir("/")
                _lo_up()
                os.write(ready_w, b"1")
                os.read(hold_r, 1)
                code = 0
            finally:
                os._exit(code)
        self.pid = pid
        os.close(ready_w)
        os.close(hold_r)
        try:
            if os.read(ready_r, 1) != b"1":
                self.close()
                raise BerthError("restore: could not make a network namespace for the guest")
        finally:
            os.close(ready_r)

    def fd(self) -> int:
        """An fd on the namespace (the caller closes it); it outlives the holder."""
        return os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.pid:
            os.close(self._hold_w)
            os.waitpid(self.pid, 0)
            self.pid = 0


def new_netns() -> int:
    """An fd on a new network namespace with loopback up."""
    h = NetnsHolder()
    try:
        return h.fd()
    finally:
        h.close()


def _open_flags(flags: int) -> int:
    acc = flags & _O_ACCMODE
    out = {0: os.O_RDONLY, 1: os.O_WRONLY, 2: os.O_RDWR}.get(acc, os.O_RDONLY)
    if flags & _O_APPEND:
        out |= os.O_APPEND
    if acc:
        out |= os.O_CREAT
    return out


#: Seconds a CRIU restore may take (R15: damaged images deadlocked CRIU 4.1.1 and a receiver with
#: it); a guest of many GB restores in well under a minute here.
RESTORE_TIMEOUT = 600.0


def restore_timeout() -> float:
    """:data:`RESTORE_TIMEOUT`, or ``BERTH_RESTORE_TIMEOUT`` (seconds) when set to a number > 0."""
    try:
        value = float(os.environ.get("BERTH_RESTORE_TIMEOUT", ""))
    except ValueError:
        return RESTORE_TIMEOUT
    return value if 0 < value < 1e9 else RESTORE_TIMEOUT


def _restore_in_private_ns(
    criu: str,
    args: list[str],
    log: str,
    cg: Any,
    overlay: dict[str, Any] | None,
    target: str,
    fds: list[int],
    cid: str,
    tmpfs: Sequence[dict[str, Any]] = (),
    sysfs_at: Sequence[str] = (),
) -> None:
    """Run ``criu restore`` in a child that joined the cgroup and mounted the root in a mount
    namespace of its own (gone with it: the restored container has its own copy), and the
    container's ``tmpfs`` mounts, filled from the images, for CRIU to bind in; a read-only
    sysfs (of the host's network namespace) at each of ``sysfs_at``."""
    from berth.linux.mount import MS, mount
    from berth.linux.ns import Clone, unshare
    from berth.runtime.init import _join_session_keyring
    from berth.runtime.mounts import attach_idmapped, mount_overlay

    kdat = criu_mod.kdat_cache(criu)

    def prepare() -> None:
        cg.add(os.getpid())
        _join_session_keyring()  # CRIU restores no keyring: its processes keep CRIU's, not ours
        unshare(Clone.NEWNS)
        mount("none", "/", None, MS.REC | MS.PRIVATE)
        criu_mod.private_run(kdat)
        if overlay is not None:
            lower = overlay["lower"]
            if overlay.get("lower_fds"):  # a guest in a user namespace: its idmapped layers
                attach_idmapped(overlay["lower_fds"], overlay["lower_at"])
                lower = overlay["lower_at"]
            userxattr = bool(overlay.get("userxattr"))
            mount_overlay(lower, overlay["upper"], overlay["work"], target, userxattr=userxattr)
        else:
            mount(target, target, None, MS.BIND | MS.REC)
        for t in tmpfs:
            ro, data = _tmpfs_data(t["options"])
            flags = extmounts.mount_flags(t.get("mnt_options") or "")  # as the guest had them
            mount(t.get("source") or "tmpfs", t["at"], "tmpfs", flags, data)
            copy_tree(t["from"], t["at"], safe=True)
            if ro:
                mount("none", t["at"], None, MS.REMOUNT | MS.RDONLY | flags, data)
        for at in sysfs_at:
            mount("sysfs", at, "sysfs", MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC, None)

    limit = restore_timeout()
    try:
        p = subprocess.run(
            [*criu_mod.argv(criu), *args, "-o", log, "-v4"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            pass_fds=tuple(fds),
            preexec_fn=prepare,
            check=False,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:  # (criu killed; what it restored goes with the cgroup)
        raise criu_mod.CriuError(
            f"restore of {cid!r} did not end within {limit:g}s (BERTH_RESTORE_TIMEOUT; log: {log})"
        ) from None
    if p.returncode != 0:
        why = criu_mod.last_error(log) or p.stderr.strip() or f"exit status {p.returncode}"
        raise criu_mod.CriuError(f"restore of {cid!r} failed: {why} (log: {log})")
