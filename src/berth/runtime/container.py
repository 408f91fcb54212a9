"""One container's lifecycle from the runtime's side: create, start, wait, kill, delete.

``berth run`` and ``berth-runtime`` both come through here (shared/DESIGN.md: one path,
two faces).  The container's side lives in :mod:`berth.runtime.init`.
"""

from __future__ import annotations

import _signal as signal
import os
import select
import time

from berth.errors import (
    BerthError,
    CannotExecute,
    CommandNotFound,
    ContainerInitError,
    NotFoundError,
    StateError,
    UnsupportedError,
    UsageError,
)
from berth.runtime import hooks, mounts, scope, sync
from berth.runtime import state as st
from berth.runtime.init import InitOptions, in_place_fits, stage1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from berth.runtime.zygote import Zygote

_ERRORS = {127: CommandNotFound, 126: CannotExecute}


def _resources() -> Any:
    from berth.runtime import resources

    return resources


def _zygote() -> Any:
    from berth.runtime import zygote

    return zygote


def _cgroups() -> Any:
    from berth import cgroups

    return cgroups


def _write_userns_maps(pid: int, linux: dict[str, Any]) -> None:
    def fmt(maps: list[dict[str, int]]) -> str:
        return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps)

    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("allow" if linux.get("gidMappings") else "deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(fmt(linux.get("uidMappings") or []))
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(fmt(linux.get("gidMappings") or []))


class Container:
    """A container with a state directory under ``state_root``."""

    def __init__(self, state_root: str, cid: str, data: dict[str, Any]) -> None:
        self.root = state_root
        self.id = cid
        self.data = data
        self.console_fd: int | None = None
        self._sock: Any = None

    # -- loading and status -------------------------------------------------------------
    @classmethod
    def load(cls, state_root: str, cid: str) -> Container:
        return cls(state_root, cid, st.read(state_root, cid))

    @property
    def dir(self) -> str:
        return st.container_dir(self.root, self.id)

    @property
    def pid(self) -> int:
        return int(self.data.get("pid") or 0)

    def status(self) -> str:
        recorded = self.data.get("status", st.STOPPED)
        if recorded == st.CREATING:
            return st.CREATING
        if not st.alive(self.data):
            return st.STOPPED
        if recorded == st.CREATED and not os.path.exists(os.path.join(self.dir, "exec.fifo")):
            return st.RUNNING
        cg = self.cgroup()
        if cg is not None and recorded in (st.RUNNING, st.PAUSED):
            try:
                if cg.frozen():
                    return st.PAUSED
            except (OSError, BerthError):
                pass
            return st.RUNNING
        return recorded

    def oci_state(self) -> dict[str, Any]:
        """The runtime spec's state object."""
        status = self.status()
        return {
            "ociVersion": self.data.get("ociVersion", "1.2.0"),
            "id": self.id,
            "status": status,
            "pid": self.pid if status != st.STOPPED else 0,
            "bundle": self.data.get("bundle", ""),
            "annotations": self.data.get("annotations") or {},
        }

    def cgroup(self) -> Any:
        path = self.data.get("berth", {}).get("cgroup")
        return _cgroups().open_cgroup(path) if path else None

    def save(self) -> None:
        st.write(self.root, self.id, self.data)

    # -- lifecycle ----------------------------------------------------------------------
    def start(
        self,
        *,
        timeout: float = 30.0,
        warn: Callable[[str], None] | None = None,
        fifo_fd: int | None = None,
    ) -> None:
        """Release the container's init: it execs the command.

        ``fifo_fd``: exec.fifo opened for reading (non-blocking) by the caller already, which let
        the init go as soon as it was ready; taken over (closed here)."""
        fifo = os.path.join(self.dir, "exec.fifo")
        try:
            # (the init let go early may have run its command and ended already: its byte in the
            # fifo says it did start, so no state check before reading it)
            status = self.status() if fifo_fd is None else st.CREATED
            if not st.can_start(status):
                raise StateError(
                    f"container {self.id!r} is {status}: only a created container can be started"
                )
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC) if fifo_fd is None else fifo_fd
        except BaseException:
            if fifo_fd is not None:
                os.close(fifo_fd)
            raise
        try:
            deadline = time.monotonic() + timeout
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while True:
                if poller.poll(100) and os.read(fd, 1):
                    break
                if not st.alive(self.data):
                    reported = self._reported_error()
                    if reported is not None:
                        raise reported
                    raise ContainerInitError(f"container {self.id!r}: its init exited before it could start")
                if time.monotonic() > deadline:
                    raise ContainerInitError(
                        f"container {self.id!r}: init did not start within {timeout:.0f}s"
                    )
            # Released: running from now on (as runc's; the init may fail its exec: it is stopped
            # then, below).  Recorded while the init execs, not after.
            os.unlink(fifo)
            self._record_status(st.RUNNING)
            # The fifo ends when the command is exec'd (close-on-exec), or carries the
            # error that stopped the init first (a startContainer hook, the execve itself).  As
            # runc's, ``start`` waits for that (a hook without a timeout that hangs, or an init
            # stopped before its exec, hang it), unless the annotation bounds the wait.  Not for
            # ``berth run`` (its own socket): its guest's init needs the socket until it exec'd.
            wait = self.data.get("berth", {}).get("exec_wait")
            deadline = time.monotonic() + float(wait) if wait and self._sock is None else None
            try:
                failed = read_start_error(fd, poller, lambda: st.alive(self.data), deadline)
                pending = False
            except TimeoutError:
                failed, pending = None, True
        finally:
            os.close(fd)
        if failed is not None:
            self._stopped_by(failed)
        if pending:
            (warn or _stderr_warn)(
                f"container {self.id!r}: released, but its command was not exec'd within {wait:g}s "
                "(a startContainer hook still running, or its init stopped): started anyway; "
                "a later failure goes to the container's stderr"
            )
        later = self.data.get("berth", {}).get("hooks")
        if later and later.get("poststart"):
            hooks.run_or_warn(later, "poststart", self.oci_state(), warn or _stderr_warn)
        if self._sock is not None:
            # berth run: the child says "started" once it is guarded by pdeathsig, then the
            # socket closes on exec (EOF) or carries the exec error.
            while True:
                msg, _fds = sync.recv(self._sock)
                if msg is None:
                    break
                if msg["type"] == "error":
                    raise _ERRORS.get(msg.get("code", 1), ContainerInitError)(msg["msg"])
            self._sock.close()
            self._sock = None

    def _record_status(self, status: str) -> None:
        """Save ``status`` with the rest of state.json as it is on disk now, under the lock of
        ``berth resources`` (berth.runtime.resources.update): a live update made since this
        process read the state (its command already running, the guest's cgroup busy) was lost
        when the whole of our copy was written back."""
        res = _resources()
        fd = res._lock(self.root)
        try:
            try:
                disk = st.read(self.root, self.id)
            except (BerthError, OSError):
                disk = None
            if disk is not None and disk.get("pid") == self.data.get("pid"):
                self.data = disk
            self.data["status"] = status
            self.save()
        finally:
            res.unlock(fd)

    def _stopped_by(self, error: BerthError) -> None:
        """The init failed between its release and the command's exec: make sure it is gone
        (stopped, as the runtime spec asks of a failed startContainer hook), then raise."""
        deadline = time.monotonic() + 2.0
        while st.alive(self.data) and time.monotonic() < deadline:
            time.sleep(0.01)
        if st.alive(self.data):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.data["status"] = st.STOPPED
        self.save()
        raise error

    def _reported_error(self) -> BerthError | None:
        """The error the init sent before it died (berth run keeps the sync socket), if any."""
        if self._sock is None:
            return None
        self._sock.setblocking(False)
        try:
            msg, _fds = sync.recv(self._sock)
        except OSError:
            return None
        finally:
            self._sock.setblocking(True)
        if msg is None or msg.get("type") != "error":
            return None
        return _ERRORS.get(msg.get("code", 1), ContainerInitError)(msg["msg"])

    def kill(self, sig: int = signal.SIGTERM, *, all_processes: bool = False) -> None:
        status = self.status()
        if not st.can_kill(status):
            raise StateError(f"container {self.id!r} is {status}: nothing to signal")
        if all_processes:
            cg = self.cgroup()
            if cg is not None:
                cg.kill(sig)
                return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def delete(
        self,
        *,
        force: bool = False,
        warn: Callable[[str], None] | None = None,
        deferred: list[Callable[[], None]] | None = None,
    ) -> None:
        """Remove the container: its processes (with ``force``), cgroup and state directory;
        then the spec's poststop hooks.  ``deferred``: the state directory is only renamed to a
        tombstone (gone under its name at once: the id is free), and the rest (the tombstone's
        removal, the other guests' CPU weights without this one) is added there for the caller
        to do after it answered."""
        status = self.status()
        if not st.can_delete(status) and not force:
            raise StateError(f"container {self.id!r} is {status}: stop it first or use --force")
        cg = self.cgroup()
        if cg is not None:
            cg.destroy()
        elif status != st.STOPPED and self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        later = self.data.get("berth", {}).get("hooks")
        if later and later.get("poststop"):
            state = {**self.oci_state(), "status": st.STOPPED, "pid": 0}
            hooks.run_or_warn(later, "poststop", state, warn or _stderr_warn)
        berth = self.data.get("berth") or {}

        def forget() -> None:
            _resources().forget(self.root, self.id, berth.get("cgroup") or "", berth.get("cpu"))

        if deferred is None:
            st.remove_tree(self.dir)
            forget()
            return
        grave = st.bury(self.dir)
        if grave == self.dir:
            st.remove_grave(grave)  # it could not be moved: removed in place, now
        elif grave is not None:
            deferred.append(lambda: st.remove_grave(grave))
        deferred.append(forget)


def create(
    cid: str,
    spec: dict[str, Any],
    *,
    state_root: str,
    bundle: str,
    cgroup_parent: str = "berth",
    overlay: dict[str, Any] | None = None,
    use_init: bool = False,
    watch_parent: bool = False,
    console_socket: str | None = None,
    pid_file: str | None = None,
    preserve_fds: int = 0,
    seccomp_cache: str | None = None,
    strict_rlimits: bool = False,
    no_pivot: bool = False,
    new_keyring: bool = True,
    warn: Callable[[str], None] | None = None,
    on_pid: Callable[[Container], None] | None = None,
    zygote: Zygote | None = None,
) -> Container:
    """Set up a container whose init waits for :meth:`Container.start`.

    On any failure everything made so far (state dir, cgroup, processes) is removed and
    the error is raised.  The spec's prestart, createRuntime and createContainer hooks run
    here; ``warn`` receives the init's warnings (default: stderr).

    ``on_pid`` (a guest's starter, which records the run): called once with the container,
    its state written (created, with the init's pid), as soon as the init's pid is known,
    while the init still builds its root, so the caller's record is made then, not on the
    start's critical path after the init is ready.  With create hooks (their state is
    ``creating``) it is called once the init is ready, as the state is written then.  If it
    was called and the create fails, the caller undoes what it did.

    ``new_keyring`` (the default; berth-runtime's ``--no-new-keyring`` turns it off): the init
    joins a new anonymous session keyring, and so does every process :mod:`berth.runtime.exec`
    starts in the container: a guest holds none of its starter's keys (``berth run`` from a
    shell, guestd), which keyctl(2) would read where its seccomp profile lets it through.

    ``zygote`` (guestd's spare worker: :mod:`berth.runtime.zygote`): an init forked ahead; it
    becomes this container's init if the spec lets it (no user namespace, a new pid namespace),
    and nothing is forked here; else it is ended and the init is forked as always.
    """
    warn = warn or _stderr_warn
    _check_sysctl_namespaces(spec.get("linux") or {})
    scopes = 0
    if scope.ANNOTATION in (spec.get("annotations") or {}):
        scopes = scope.wanted(spec.get("annotations"))  # a bad value refused before anything is made
        if scopes:
            from berth.linux import landlock  # here: the init cannot import past pivot_root

            scopes, why = scope.decide(scopes, landlock.abi_version())
            if why:
                warn(why)
    wait = exec_wait(spec)
    spec_hooks = spec.get("hooks") or {}
    hook_sync = hooks.wanted(spec_hooks, *hooks.CREATE_PHASES, *hooks.CONTAINER_PHASES)
    if spec_hooks.get("startContainer"):
        import subprocess  # noqa: F401 - the init runs this hook after pivot_root, where it cannot import
    sdir = st.reserve(state_root, cid)
    cg = None
    pid = zygote_pid = 0
    res_lock = None
    parent_sock = child_sock = None
    linux = spec.get("linux") or {}
    try:
        fifo = os.path.join(sdir, "exec.fifo")
        # The init reopens it for writing through an O_PATH fd after it became process.user:
        # writable by all (as runc's), or a non-root user without CAP_DAC_OVERRIDE (--cap-drop
        # ALL) could not.  Nobody else reaches it: the state directory is root's alone (0700).
        os.mkfifo(fifo, 0o600)
        os.chmod(fifo, 0o622)  # (past the umask)
        rootfs = spec["root"]["path"]
        if not os.path.isabs(rootfs):
            rootfs = os.path.join(bundle, rootfs)
        if overlay is not None:
            rootfs = os.path.join(sdir, "rootfs")
            os.mkdir(rootfs, 0o755)
            overlay = dict(overlay)
            # An upper layer in the state dir goes with the container (berth run's): volatile.
            overlay.setdefault("volatile", "upper" not in overlay)
            overlay.setdefault("upper", os.path.join(sdir, "upper"))
            overlay.setdefault("work", os.path.join(sdir, "work"))
            os.makedirs(overlay["upper"], 0o755, exist_ok=True)
            os.makedirs(overlay["work"], 0o700, exist_ok=True)
        program = None
        if linux.get("seccomp"):
            from berth.linux.seccomp import compiled

            program = compiled(
                linux["seccomp"],
                seccomp_cache or os.path.join(state_root, ".seccomp-cache"),
                copy_to=os.path.join(sdir, "seccomp.bpf"),  # for exec
            )
        init_fd = None
        if use_init:
            from berth.runtime.process import init_bound, init_memfd

            init_fd = None if init_bound(spec) else init_memfd()
        userns = any(n["type"] == "user" for n in linux.get("namespaces") or [])
        idmap_src = None
        if userns and overlay is None and (spec.get("annotations") or {}).get(IDMAP_ROOTFS) == "true":
            # The idmapped rootfs is attached in the state dir: its own path may not be searchable.
            idmap_src, rootfs = rootfs, os.path.join(sdir, "rootfs")
            os.mkdir(rootfs, 0o755)
        if userns:
            owned = [fifo, rootfs] + ([overlay["upper"], overlay["work"]] if overlay else [])
            _share_with_userns_root(sdir, linux, owned)
            if overlay is not None and overlay.get("idmap") is not False:
                # The idmapped layers are attached here: the store's path may not be searchable.
                overlay["lower_at"] = [os.path.join(sdir, f"lower{i}") for i in range(len(overlay["lower"]))]
                for path in overlay["lower_at"]:
                    os.mkdir(path, 0o755)
        host_cgroups = mounts.host_cgroup_mounts(spec)  # here, not in the init after the cgroup wait
        cgpath = linux.get("cgroupsPath") or f"{cgroup_parent}/{cid}"
        # Admission control and every guest's CPU weights (berth.runtime.resources).
        res_lock, res_fields = _resources().place(state_root, cid, cgpath, spec, linux)
        cg = _cgroups().open_cgroup(cgpath)
        opts = InitOptions(
            state_dir=sdir,
            fifo=fifo,
            rootfs=rootfs,
            overlay=overlay,
            use_init=use_init,
            init_fd=init_fd,
            userns=userns or _rootless(),  # no mknod: bind devices (rootless podman too)
            preserve_fds=preserve_fds,
            watch_parent=watch_parent,
            strict_rlimits=strict_rlimits,
            seccomp_program=program,
            hook_sync=hook_sync,
            no_pivot=no_pivot,
            new_keyring=new_keyring,
            cgroup_mounts=host_cgroups,
            landlock_scopes=scopes,
        )
        if zygote is not None and not (in_place_fits(spec) and preserve_fds == 0):
            zygote.discard()
            zygote = None
        if zygote is not None:
            # Now, not once the cgroup is made: it takes the container (unpickles it, joins the
            # keyring) while we make the cgroup, and joins that, then its namespaces, at our word
            # (what the kernel makes for them is charged to the guest's cgroup).
            parent_sock, child_sock = sync.pair()
            if _zygote().hand_over(zygote, spec, opts, cg, child_sock):
                zygote_pid = zygote.pid
            else:
                zygote = None  # ended by hand_over: the init is forked below
                parent_sock.close()
                parent_sock = None
            child_sock.close()
            child_sock = None
        data: dict[str, Any] = {
            "ociVersion": spec.get("ociVersion", "1.2.0"),
            "id": cid,
            "status": st.CREATING,
            "pid": 0,
            "bundle": bundle,
            "annotations": spec.get("annotations") or {},
            "berth": {
                "cgroup": cg.path,
                "rootfs": rootfs,
                "created": time.time(),
                # this process, until the state is "created": gc leaves a "creating" state alone
                # while its creator lives (st.creator_gone)
                "creator": [os.getpid(), st.proc_start_time(os.getpid())],
                **res_fields,
            },
        }
        if scopes:
            data["berth"]["landlock"] = scopes  # exec gives its processes the same (berth.runtime.scope)
        if not new_keyring:
            data["berth"]["shared_keyring"] = True  # berth-runtime --no-new-keyring: exec's processes too
        if watch_parent:
            # berth run: the container lives only as long as this process (its init dies by
            # pdeathsig once started); killed before the start, its init would wait on exec.fifo
            # for good: gc tells that from another runtime's container between create and start
            # by this (owner_gone)
            data["berth"]["owner"] = [os.getpid(), st.proc_start_time(os.getpid())]
        if wait is not None:
            data["berth"]["exec_wait"] = wait
        later = {k: spec_hooks[k] for k in ("poststart", "poststop") if spec_hooks.get(k)}
        if later:
            data["berth"]["hooks"] = later
        st.write(state_root, cid, data)  # now: the cgroup's creation may wait (berth.cgroups.warm)
        try:
            cg.create()
        except (BerthError, PermissionError) as e:
            if not _rootless():
                raise
            # As runc: a rootless runtime without a delegated cgroup runs without limits.
            warn(f"rootless: no cgroup ({e}); resource limits are skipped")
            cg = None
            data["berth"]["cgroup"] = ""
            st.write(state_root, cid, data)
        if cg is not None and linux.get("resources"):
            cg.set(linux["resources"])
        _resources().unlock(res_lock)
        res_lock = None
        stage1_pid = 0
        if zygote_pid:  # the init already: nothing to fork; it joins the cgroup now
            try:
                sync.send(parent_sock, "cgroup", join=cg is not None)
            except OSError:
                pass  # it failed and ended: its error is read below
        else:
            parent_sock, child_sock = sync.pair()
            stage1_pid = os.fork()
            if stage1_pid == 0:
                parent_sock.close()
                stage1(spec, opts, child_sock, cg)
                os._exit(1)  # not reached
            child_sock.close()
            child_sock = None
        if init_fd is not None:
            os.close(init_fd)
        console_fd = None
        ready = mounted = False
        early = on_pid is not None and not hook_sync  # no hook sees the state before the init is ready
        try:
            while not (ready and pid):
                msg, fds = sync.recv(parent_sock)
                if msg is None:
                    raise ContainerInitError(f"container {cid!r}: init exited without a word")
                kind = msg["type"]
                if kind == "userns":
                    try:
                        _write_userns_maps(msg["pid"], linux)
                        layers = _idmapped_layers(msg["pid"], overlay, idmap_src or rootfs, spec)
                    except BaseException:
                        os.kill(msg["pid"], signal.SIGKILL)  # it waits for our answer: reaped below
                        raise
                    try:
                        sync.send(parent_sock, "userns-done", fds=layers)
                    finally:
                        for fd in layers:
                            os.close(fd)
                elif kind == "pid":
                    pid = msg["pid"]
                    if stage1_pid:
                        os.waitpid(stage1_pid, 0)
                        stage1_pid = 0
                    if early and on_pid is not None:
                        _created(state_root, cid, data, pid)
                        on_pid(Container(state_root, cid, data))
                elif kind == "console":
                    console_fd = fds[0]
                elif kind == "ready":
                    ready = True
                elif kind == "warning":
                    warn(msg["msg"])
                elif kind == "mounted":
                    mounted = True
                elif kind == "error":
                    raise _ERRORS.get(msg.get("code", 1), ContainerInitError)(msg["msg"])
                if mounted and pid:
                    # The init waits after its mounts: prestart and createRuntime run now.
                    mounted = False
                    hook_state = {**Container(state_root, cid, data).oci_state(), "pid": pid}
                    hook_state["status"] = st.CREATING
                    for phase in hooks.CREATE_PHASES:
                        hooks.run(spec_hooks, phase, hook_state)
                    sync.send(parent_sock, "mounted-done", state=hook_state)
        finally:
            if stage1_pid:
                os.waitpid(stage1_pid, 0)
        if not early:
            _created(state_root, cid, data, pid)
            if on_pid is not None:
                on_pid(Container(state_root, cid, data))
        if pid_file:
            tmp = f"{pid_file}.tmp"
            with open(tmp, "w") as f:
                f.write(str(pid))
            os.rename(tmp, pid_file)
        c = Container(state_root, cid, data)
        if console_fd is not None:
            if console_socket:
                _send_console(console_socket, console_fd)
                os.close(console_fd)
            else:
                c.console_fd = console_fd
        if watch_parent:
            c._sock = parent_sock
            parent_sock = None
        return c
    except BaseException:
        if zygote is not None and not zygote_pid:
            zygote.discard()  # refused before it was handed the container: ended and reaped here
        pid = pid or zygote_pid
        if not pid and parent_sock is not None:
            # The init's error may come before the intermediate child's "pid" message: collect it,
            # so the init is killed and reaped here, not left to finish on its own after we return.
            pid = _drain_for_pid(parent_sock)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
        if cg is not None:
            try:
                cg.destroy()
            except BerthError:
                pass
        st.remove_tree(sdir)
        raise
    finally:
        _resources().unlock(res_lock)
        for s in (parent_sock, child_sock):
            if s is not None:
                s.close()


def read_start_error(
    fd: int, poller: Any, alive: Callable[[], bool], deadline: float | None = None
) -> BerthError | None:
    """What follows the start byte on exec.fifo: nothing up to its end (the command was exec'd),
    or the init's error record (:func:`berth.runtime.init.report_start_error`) as the error.
    :class:`TimeoutError` if neither came by ``deadline`` (``time.monotonic()``)."""
    data = b""
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError
        if poller.poll(100):
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
        elif not alive():
            # gone (its fifo end with it): what it wrote is buffered, read it all
            try:
                while chunk := os.read(fd, 4096):
                    data += chunk
            except BlockingIOError:
                pass
            break
    if not data:
        return None
    code, _, msg = data.decode(errors="replace").partition(" ")
    try:
        status = int(code)
    except ValueError:
        status, msg = 1, data.decode(errors="replace")
    return _ERRORS.get(status, ContainerInitError)(msg)


#: The annotation bounding (seconds) how long ``start`` waits, once the init took its start byte,
#: for the command's exec or the error that stopped the init first (its startContainer hooks run
#: meanwhile); then it returns, the container "running".  Without it ``start`` waits as runc's.
#: Until the exec the container's pid 1 is the runtime's init: only SIGKILL reaches it.
EXEC_WAIT_ANNOTATION = "org.berth.start.exec-wait"


def exec_wait(spec: dict[str, Any]) -> float | None:
    """How long ``start`` waits for the exec of ``spec``'s command: the annotation's seconds
    (:data:`EXEC_WAIT_ANNOTATION`), or None (until it comes)."""
    given = (spec.get("annotations") or {}).get(EXEC_WAIT_ANNOTATION)
    if given is None:
        return None
    try:
        value = float(given)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:  # (nan and inf too)
        raise UsageError(f"annotations.{EXEC_WAIT_ANNOTATION}", f"{given!r} is not a number of seconds > 0")
    return value


def _created(state_root: str, cid: str, data: dict[str, Any], pid: int) -> None:
    """Record the init ``pid`` in the container's state: created (it waits on exec.fifo once
    ready), with its start time (:func:`berth.runtime.state.alive`)."""
    data["pid"] = pid
    data["status"] = st.CREATED
    data["berth"]["start_time"] = st.proc_start_time(pid)
    st.write(state_root, cid, data)


def _host_id(maps: list[dict[str, int]] | None, cid: int) -> int:
    for m in maps or []:
        if m["containerID"] <= cid < m["containerID"] + m["size"]:
            return m["hostID"] + cid - m["containerID"]
    return 65534


IDMAP_ROOTFS = "org.berth.rootfs.idmap"  # annotation "true": idmap a plain rootfs too


def _rootless() -> bool:
    """Are we not the host's root (not uid 0, or in a user namespace: rootless podman)?"""
    if os.geteuid() != 0:
        return True
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def _idmapped_layers(
    pid: int, overlay: dict[str, Any] | None, rootfs: str, spec: dict[str, Any]
) -> list[int]:
    """The overlay's lower layers (shared templates, owned by host ids), or with the
    IDMAP_ROOTFS annotation the rootfs itself, idmapped through the guest's user namespace:
    detached mounts (fds) for its init.  No per-guest chown copy.  (An OCI bundle's rootfs
    is already owned by the mapped ids: idmapping it again would shift twice.)"""
    if overlay:
        trees = [] if overlay.get("idmap") is False else list(overlay["lower"])
    else:
        trees = [rootfs] if (spec.get("annotations") or {}).get(IDMAP_ROOTFS) == "true" else []
    if not trees:
        return []
    from berth.linux import idmap

    ns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return idmap.idmapped_trees(trees, ns)
    except OSError as e:
        raise UnsupportedError(
            f"userns: cannot idmap {e.filename} (kernel or filesystem without "
            f"idmapped mounts?): {e.strerror or e}"
        ) from None
    finally:
        os.close(ns)


def _share_with_userns_root(sdir: str, linux: dict[str, Any], owned: list[str]) -> None:
    """Let a user namespace's root reach its state: the dir searchable by its group, its own
    dirs owned by it."""
    import stat

    parent = os.path.dirname(sdir)
    while True:
        mode = os.stat(parent).st_mode
        if not mode & stat.S_IXOTH:
            raise UnsupportedError(
                f"userns: {parent} is not searchable by other users (mode {stat.S_IMODE(mode):04o}): "
                "the guest's mapped root could not reach its state dir"
            )
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    uid = _host_id(linux.get("uidMappings"), 0)
    gid = _host_id(linux.get("gidMappings"), 0)
    # Searchable by its root's group alone, not by all: its upper layer (berth run's) holds
    # what the guest writes, set-id files included (as berth.guests.store.secure_dir).
    os.chown(sdir, -1, gid)
    os.chmod(sdir, 0o710)
    for path in owned:
        if os.path.dirname(path) == sdir:
            os.chown(path, uid, gid)


_NS_FILES = {"network": "net", "ipc": "ipc", "uts": "uts"}


def _check_sysctl_namespaces(linux: dict[str, Any]) -> None:
    """linux.sysctl only for namespaces of the container's own (spec.validate checks that their
    type is in linux.namespaces): one joined by path must not be the runtime's own, the host's
    (``{"type": "network", "path": "/proc/1/ns/net"}`` with net.ipv4.ip_forward would set the
    host's), as runc refuses.  A path that cannot be looked at fails later, at the setns."""
    if not linux.get("sysctl"):
        return
    from berth.spec.validate import sysctl_namespace

    paths = {ns.get("type"): ns["path"] for ns in linux.get("namespaces") or () if ns.get("path")}
    for key in linux["sysctl"]:
        kind = sysctl_namespace(key)
        if kind not in paths:
            continue
        try:
            joined, own = os.stat(paths[kind]), os.stat(f"/proc/self/ns/{_NS_FILES[kind]}")
        except OSError:
            continue
        if (joined.st_dev, joined.st_ino) == (own.st_dev, own.st_ino):
            raise UsageError(
                f"linux.sysctl.{key}", f"the {kind} namespace joined ({paths[kind]}) is the host's own"
            )


def _stderr_warn(text: str) -> None:
    try:
        os.write(2, f"berth: warning: {text}\n".encode())
    except OSError:
        pass


def _drain_for_pid(sock: Any, timeout: float = 5.0) -> int:
    """Read what is left on the sync socket until its end (or ``timeout``); the init's pid if sent."""
    sock.settimeout(timeout)
    pid = 0
    try:
        while True:
            msg, fds = sync.recv(sock)
            for fd in fds:
                os.close(fd)
            if msg is None:
                return pid
            if msg.get("type") == "pid":
                pid = int(msg["pid"])
    except OSError:
        return pid


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def reap(pid: int) -> None:
    """Collect our child ``pid`` if it is still there (already killed, or long gone)."""
    if pid > 0:
        _reap(pid)


def _send_console(path: str, fd: int) -> None:
    import array
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
        s.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    finally:
        s.close()


def wait_exit(pid: int) -> int:
    """Wait for our child ``pid``; its exit status, 128+N when killed by signal N."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 255
        except InterruptedError:
            continue
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)


def find(state_root: str, cid: str) -> Container:
    try:
        return Container.load(state_root, cid)
    except NotFoundError:
        raise
