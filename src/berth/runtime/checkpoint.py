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
the cgroup's resources, the options the dump was made with.

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

import json
import os
import subprocess
import time

from berth.errors import BerthError, StateError, UnsupportedError
from berth.runtime import criu as criu_mod
from berth.runtime import state as st

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from berth.runtime.container import Container

META = "berth.json"
NETNS_KEY = "berth-netns"
# Lock TCP connections with one nftables table (in CRIU) rather than iptables-restore runs.
NETWORK_LOCK = "nftables"
_O_ACCMODE = 0o3
_O_APPEND = 0o2000


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
    """Whether every pid in ``pids`` descends from ``init`` (``berth exec`` sessions do not)."""
    parent = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    for start in pids:
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
) -> dict[str, Any]:
    """Checkpoint ``c`` into ``images``; the metadata written there as berth.json.

    ``parent``: an earlier pre-dump's image dir (relative paths are taken from ``images``).
    ``criu_args``: more options for ``criu dump`` (berth-runtime's external mounts and namespaces).
    ``external_netns``: the container's own network namespace is not dumped (its addresses,
    routes, firewall): restore puts the processes into one the caller made (:func:`restore`'s
    ``netns_fd``), or a fresh one with loopback up.  Its sockets are dumped as usual.
    Without ``leave_running`` (and unless ``pre_dump``) the container's processes are gone
    afterwards and its state directory is kept for :func:`forget`.
    """
    criu = criu or criu_mod.find()
    status = c.status()
    if status not in (st.RUNNING, st.PAUSED):
        raise StateError(f"container {c.id!r} is {status}: only a running container can be checkpointed")
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
    netns = _own_netns(c.pid) if external_netns and not pre_dump else None
    args = ["pre-dump" if pre_dump else "dump", "-t", str(c.pid), "-D", images, "-W", work]
    if pre_dump:
        args += ["--track-mem"]
    else:
        args += ["--manage-cgroups", "--ext-unix-sk", "--link-remap", "--skip-in-flight"]
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
    if parent:
        args += ["--prev-images-dir", parent, "--track-mem"]
    args += list(criu_args)
    freezer = _freezer_dir(c)
    # CRIU polls a v1 freezer every 100 ms after freezing it (100 ms of downtime for nothing);
    # when every process descends from the init, seizing them with ptrace is as complete.
    if freezer and status == st.RUNNING and not _all_in_tree(c.pid, pids):
        args += ["--freeze-cgroup", freezer]
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
        "time": time.time(),
        **(extra or {}),
    }
    log = os.path.join(work, "pre-dump.log" if pre_dump else "dump.log")
    t0 = time.monotonic()
    criu_mod.run(criu, args, log, what=f"checkpoint of {c.id!r}", kdat=True)
    meta["dump_seconds"] = time.monotonic() - t0
    with open(os.path.join(images, META), "w") as f:
        json.dump(meta, f)
    return meta


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
def restore(
    state_root: str,
    cid: str,
    images: str,
    *,
    cgroup_path: str | None = None,
    overlay: dict[str, Any] | None = None,
    rootfs: str | None = None,
    resources: dict[str, Any] | None = None,
    reopen: Callable[[dict[str, Any]], str] | None = None,
    bundle: str | None = None,
    work: str | None = None,
    tcp_established: bool = True,
    criu: str | None = None,
    pid_file: str | None = None,
    criu_args: Sequence[str] = (),
    inherit: Sequence[tuple[int, str]] = (),
    netns_fd: int | None = None,
) -> Container:
    """Restore the checkpoint in ``images`` as container ``cid`` under ``state_root``.

    ``overlay`` (lower/upper/work) or ``rootfs`` give the root filesystem (default: what was
    recorded at dump time); ``cgroup_path`` the cgroup (default: the recorded one), created and
    given ``resources`` (default: the recorded ones); ``reopen(file)`` maps an external file
    recorded at dump time to the path to open now (default: the same path).  ``inherit``:
    (fd, CRIU key) pairs of the caller's open fds CRIU is to use for the key (``--inherit-fd``:
    stdio pipes, an external network namespace); ``criu_args``: more options.  ``netns_fd``:
    the network namespace for a checkpoint dumped with ``external_netns`` (default: a new one
    with loopback up).  On failure nothing is left: no state directory, cgroup or process.
    """
    from berth.cgroups import open_cgroup
    from berth.runtime.container import Container

    criu = criu or criu_mod.find()
    meta = read_meta(images)
    old = meta["state"]
    overlay = overlay if overlay is not None else (None if rootfs else meta.get("overlay"))
    cgroup_path = cgroup_path or meta.get("cgroup") or f"berth/{cid}"
    resources = resources if resources is not None else meta.get("resources")
    sdir = st.reserve(state_root, cid)
    cg = None
    pid = 0
    fds: list[int] = []
    try:
        cg = open_cgroup(cgroup_path)
        cg.create()
        if resources:
            cg.set(resources)
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
        # The restoring process has joined the cgroup (made above with the limits): the restored
        # processes are created in it and CRIU need not mount and walk cgroup trees again
        # (--cgroup-root: for a caller's --manage-cgroups=soft|full|strict after ours).
        args += ["--manage-cgroups=ignore", "--cgroup-root", "/" + cgroup_path.strip("/")]
        args += ["--ext-unix-sk", "--link-remap"]
        if meta.get("file_locks", True):
            args.append("--file-locks")
        if meta.get("network_lock"):
            args += ["--network-lock", meta["network_lock"]]
        if tcp_established:
            args.append("--tcp-established")
        if meta.get("netns_external"):
            fd = new_netns() if netns_fd is None else os.dup(netns_fd)
            fds.append(fd)
            args += ["--inherit-fd", f"fd[{fd}]:{NETNS_KEY}"]
        for f in meta.get("files") or []:
            path = reopen(f) if reopen else f["path"]
            # CRIU checks the mode of the file it is given: a new file gets the recorded one.
            fd = os.open(path, _open_flags(f["flags"]) | os.O_CLOEXEC, f.get("mode", 0o640))
            if f.get("mode") is not None and os.fstat(fd).st_mode & 0o7777 != f["mode"]:
                os.fchmod(fd, f["mode"])
            os.set_inheritable(fd, True)
            fds.append(fd)
            args += ["--inherit-fd", f"fd[{fd}]:{f['key']}"]
        for theirs, key in inherit:
            fd = os.dup(theirs)  # criu gets it under this number (pass_fds)
            fds.append(fd)
            args += ["--inherit-fd", f"fd[{fd}]:{key}"]
        args += list(criu_args)
        data = dict(old)
        berth = dict(old.get("berth") or {})
        berth.update(cgroup=cg.path, rootfs=target, restored=time.time())
        data.update(id=cid, status=st.CREATING, pid=0, berth=berth)
        if bundle:
            data["bundle"] = bundle
        st.write(state_root, cid, data)
        log = os.path.join(work, "restore.log")
        _restore_in_private_ns(criu, args, log, cg, overlay, target, fds, cid)
        with open(pidf) as f:
            pid = int(f.read().strip())
        data["pid"] = pid
        data["status"] = st.RUNNING
        berth["start_time"] = st.proc_start_time(pid)
        st.write(state_root, cid, data)
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
        for fd in fds:
            os.close(fd)


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


def _restore_in_private_ns(
    criu: str,
    args: list[str],
    log: str,
    cg: Any,
    overlay: dict[str, Any] | None,
    target: str,
    fds: list[int],
    cid: str,
) -> None:
    """Run ``criu restore`` in a child that joined the cgroup and mounted the root in a mount
    namespace of its own (gone with it: the restored container has its own copy)."""
    from berth.linux.mount import MS, mount
    from berth.linux.ns import Clone, unshare
    from berth.runtime.mounts import mount_overlay

    kdat = criu_mod.kdat_cache(criu)

    def prepare() -> None:
        cg.add(os.getpid())
        unshare(Clone.NEWNS)
        mount("none", "/", None, MS.REC | MS.PRIVATE)
        criu_mod.private_run(kdat)
        if overlay is not None:
            mount_overlay(overlay["lower"], overlay["upper"], overlay["work"], target)
        else:
            mount(target, target, None, MS.BIND | MS.REC)

    p = subprocess.run(
        [criu, *args, "-o", log, "-v4"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        pass_fds=tuple(fds),
        preexec_fn=prepare,
        check=False,
    )
    if p.returncode != 0:
        why = criu_mod.last_error(log) or p.stderr.strip() or f"exit status {p.returncode}"
        raise criu_mod.CriuError(f"restore of {cid!r} failed: {why} (log: {log})")
