"""One cgroup across every hierarchy of the host (v1, v2, hybrid): the thin executor.

What to write is computed by the pure mappings in :mod:`v1`, :mod:`v2` and :mod:`devices`; this
module only creates directories, writes files and waits for the kernel.
"""

from __future__ import annotations

import errno
import os
import select
import time

from berth.cgroups.layout import V1_CONTROLLERS, Layout, clean_path
from berth.errors import CgroupError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    from berth.cgroups.writes import Write

_WR = os.O_WRONLY | os.O_CLOEXEC
_RD = os.O_RDONLY | os.O_CLOEXEC
# The cgroups of systemd units: the host's own, never removed by berth (remove_empty_parents).
_SYSTEMD_UNITS = (".slice", ".scope", ".service", ".mount", ".socket", ".swap")
# Set on every parent directory create() makes (kernfs keeps trusted.* xattrs on v1 and v2
# cgroups while they exist): remove_empty_parents climbs above its ``upto`` only through these,
# never into one an admin or systemd made.  Where it cannot be set (no CAP_SYS_ADMIN) the
# parent is simply kept.
_MADE_XATTR = "trusted.berth.made"


#: Attempts to make a cgroup in one hierarchy while its empty parent is being removed beside us.
_CREATE_TRIES = 20


def _write(path: str, value: str) -> None:
    fd = os.open(path, _WR)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    fd = os.open(path, _RD)
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _read_or_none(path: str) -> str | None:
    try:
        return _read(path)
    except OSError:
        return None


# What a delegated cgroup's new owner gets besides the directory (kernel cgroup-v2.rst
# "Delegation"; the kernel lists its own in /sys/kernel/cgroup/delegate).
_V2_DELEGATE = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
_V1_DELEGATE = ("cgroup.procs", "tasks")


def _delegate_files() -> tuple[str, ...]:
    """The cgroup2 files to chown on delegation: the kernel's list, else the documented three."""
    text = _read_or_none("/sys/kernel/cgroup/delegate")
    return tuple(text.split()) if text else _V2_DELEGATE


def _errtext(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror} ({name})" if name else str(exc.strerror or exc)


def _poll_until(cond: Callable[[], bool], deadline: float) -> bool:
    """Wait until ``cond()`` holds or the monotonic ``deadline`` passes; short, growing polls."""
    delay = 0.0005
    while True:
        if cond():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.02)


def _wait_events(path: str, key: str, want: int, deadline: float) -> bool:
    """Wait until the ``cgroup.events`` style file at ``path`` says ``key want``.

    The kernel signals every change of the file with POLLPRI, so this sleeps in poll(2), not in a loop.
    """
    fd = os.open(path, _RD)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while True:
            os.lseek(fd, 0, os.SEEK_SET)
            for line in os.read(fd, 4096).decode().splitlines():
                k, _, v = line.partition(" ")
                if k == key and v.strip() == str(want):
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(min(left, 0.1) * 1000)
    finally:
        os.close(fd)


class Cgroup:
    """The cgroup ``path`` (relative to each hierarchy root) on a host with ``layout``."""

    def __init__(self, path: str, layout: Layout) -> None:
        self.path = clean_path(path)
        self.layout = layout
        self._created: list[str] = []  # directories create() made (parents included), top first

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r}, mode={self.layout.mode!r})"

    # -- where things are ------------------------------------------------------------------

    def dir(self, controller: str) -> str | None:
        """This cgroup's directory in the v1 hierarchy of ``controller``; None if not mounted."""
        mnt = self.layout.v1.get(controller)
        return None if mnt is None else f"{mnt}/{self.path}"

    def unified_dir(self) -> str | None:
        """The cgroup2 directory (to attach BPF programs to); None on a v1-only host."""
        u = self.layout.unified
        return None if u is None else f"{u}/{self.path}"

    def dirs(self) -> list[str]:
        """This cgroup's directory in every hierarchy (v1 ones, then cgroup2)."""
        return [f"{mnt}/{self.path}" for mnt in self.layout.mountpoints()]

    def _procs_dir(self) -> str:
        """Where to read membership: v2's dir, else the v1 pids, freezer or memory hierarchy."""
        if self.layout.mode != "v2":
            for c in ("pids", "freezer", "memory"):
                d = self.dir(c)
                if d is not None:
                    return d
        d = self.unified_dir()
        if d is None:
            d = self.dirs()[0]
        return d

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())

    # -- create / add ----------------------------------------------------------------------

    def create(self) -> None:
        """Make the cgroup (and missing parents) in every hierarchy; undo it all on failure."""
        made: list[str] = []
        cpuset = self.layout.v1.get("cpuset")
        try:
            for mnt in self.layout.mountpoints():
                for attempt in range(_CREATE_TRIES):
                    try:
                        self._mkdir_p(mnt, made, cpuset=mnt == cpuset)
                        break
                    except OSError as e:
                        # An empty parent was removed by a guest ending (or a gc) at this moment:
                        # make it again, in this hierarchy (the ones done hold the new cgroup: their
                        # parent is no longer empty).  ENOENT: it was gone; ENODEV: it died under
                        # our mkdir or a write into it.
                        if e.errno not in (errno.ENOENT, errno.ENODEV) or attempt == _CREATE_TRIES - 1:
                            raise
            # (a parent made, then removed, is not ours; one made again is listed once)
            made[:] = dict.fromkeys(d for d in made if os.path.isdir(d))
            if self.layout.mode == "v2":
                self._enable(self.layout.unified_controllers())
        except OSError as exc:
            for d in reversed(made):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            where = exc.filename or self.path
            raise CgroupError(f"create cgroup {self.path}: {where}: {_errtext(exc)}") from None
        self._created += made

    def _mkdir_p(self, mnt: str, made: list[str], *, cpuset: bool) -> None:
        parts = self.path.split("/")
        # Fast path: the parent exists, one mkdir.  Else find the deepest existing ancestor.
        n = len(parts)
        while n > 0:
            try:
                os.mkdir(f"{mnt}/{'/'.join(parts[:n])}")
            except FileExistsError:
                if n == len(parts):
                    return
                break
            except FileNotFoundError:
                n -= 1
                continue
            made.append(f"{mnt}/{'/'.join(parts[:n])}")
            if n < len(parts):
                _mark_made(made[-1])
            if cpuset:
                self._cpuset_init(mnt, parts[:n], last=n == len(parts))
            break
        for i in range(n + 1, len(parts) + 1):
            d = f"{mnt}/{'/'.join(parts[:i])}"
            try:
                os.mkdir(d)
            except FileExistsError:
                continue  # a create racing with ours made it (and fills its cpuset in)
            made.append(d)
            if i < len(parts):
                _mark_made(d)
            if cpuset:
                self._cpuset_init(mnt, parts[:i], last=i == len(parts))

    @staticmethod
    def _cpuset_init(mnt: str, parts: list[str], *, last: bool) -> None:
        """A new v1 cpuset starts with no cpus and mems: copy the parent's.  Its own new children
        get them from the kernel (clone_children)."""
        d = f"{mnt}/{'/'.join(parts)}"
        for key in ("cpuset.cpus", "cpuset.mems"):
            if not _read(f"{d}/{key}").strip():
                _write(f"{d}/{key}", Cgroup._cpuset_of(mnt, parts[:-1], key) or "\n")
        if not last:
            _write(f"{d}/cgroup.clone_children", "1")

    @staticmethod
    def _cpuset_of(mnt: str, parts: list[str], key: str) -> str:
        """``key`` (cpuset.cpus or .mems) of the v1 cpuset ``parts``; if a create racing with
        ours made it and has not copied its own parent's in yet, they are copied here first (top
        down; both write the same value): else our new cgroup would get none and take no task."""
        if not parts:
            return _read(f"{mnt}/{key}").strip()
        d = f"{mnt}/{'/'.join(parts)}"
        value = _read(f"{d}/{key}").strip()
        if not value:
            value = Cgroup._cpuset_of(mnt, parts[:-1], key)
            if value:
                _write(f"{d}/{key}", value)
        return value

    def _enable(self, controllers: frozenset[str] | set[str]) -> None:
        """Enable ``controllers`` in ``cgroup.subtree_control`` of every cgroup2 ancestor."""
        unified = self.layout.unified
        if not controllers or unified is None:
            return
        parts = self.path.split("/")
        for i in range(len(parts)):
            d = "/".join([unified, *parts[:i]])
            have = set(_read(f"{d}/cgroup.subtree_control").split())
            avail = set(_read(f"{d}/cgroup.controllers").split())
            missing = sorted((set(controllers) & avail) - have)
            if missing:
                value = " ".join(f"+{c}" for c in missing)
                try:
                    _write(f"{d}/cgroup.subtree_control", value)
                except OSError as exc:
                    raise CgroupError(
                        f"enable controllers: {d}/cgroup.subtree_control: cannot write {value!r}: {_errtext(exc)}"
                    ) from None

    def add(self, pid: int, *, near: int | None = None) -> None:
        """Move process ``pid`` into the cgroup in every hierarchy.

        ``near``: a process of this cgroup (a container's init).  Where the cgroup2 directory may
        hold no process itself (a delegated cgroup whose owner enabled controllers for its
        children: EBUSY, v2's no-internal-process rule), ``pid`` joins ``near``'s sub-cgroup
        instead, as runc's exec does.
        """
        value = str(pid)
        ud = self.unified_dir()
        for d in self.dirs():
            try:
                _write(f"{d}/cgroup.procs", value)
            except OSError as exc:
                if d == ud and exc.errno == errno.EBUSY and near is not None:
                    sub = self._sub_of(near)
                    if sub is not None:
                        try:
                            _write(f"{sub}/cgroup.procs", value)
                            continue
                        except OSError as exc2:
                            exc = exc2
                raise CgroupError(f"add pid {pid} to {d}/cgroup.procs: {_errtext(exc)}") from None

    def _sub_of(self, pid: int) -> str | None:
        """The cgroup2 directory of process ``pid`` if it lies below this cgroup, else None."""
        text = _read_or_none(f"/proc/{pid}/cgroup") or ""
        for line in text.splitlines():
            if line.startswith("0::/"):
                rel = line[4:].rstrip("/")
                if rel.startswith(self.path + "/") and "/../" not in f"{rel}/":
                    return f"{self.layout.unified}/{rel}"
        return None

    # -- delegation ------------------------------------------------------------------------

    def delegation_dirs(self, *, v1: bool = True) -> list[str]:
        """The directories :meth:`delegate` hands over: this cgroup in the cgroup2 hierarchy and
        (``v1``) in the v1 hierarchies without controllers (``name=systemd``).  The v1 controller
        hierarchies are never delegated: a v1 child's limits are its owner's to set."""
        out = []
        if v1:
            out = [f"{mnt}/{self.path}" for key, mnt in self.layout.v1.items() if key not in V1_CONTROLLERS]
        ud = self.unified_dir()
        if ud is not None:
            out.append(ud)
        return out

    def delegate(self, uid: int, gid: int, *, v1: bool = True) -> list[str]:
        """Delegate the cgroup to ``uid``/``gid`` (a user namespace's root), as the kernel's
        cgroup-v2.rst "Delegation" and systemd's Delegate= do: the directory (so it may make
        sub-cgroups) and the files that move processes and enable controllers for its children
        (cgroup.procs, cgroup.threads, cgroup.subtree_control; v1: tasks), never the cgroup's own
        limits.  ``v1=False``: the cgroup2 hierarchy only (an OCI bundle's guest: the runtime spec
        forbids changing ownership on cgroup v1).  Returns the paths chowned.  Root-owned cleanup
        (:meth:`destroy`) removes what the delegate made inside, deepest first."""
        done: list[str] = []
        files = _delegate_files()
        for d in self.delegation_dirs(v1=v1):
            v2 = d == self.unified_dir()
            for name in ("", *(files if v2 else _V1_DELEGATE)):
                path = f"{d}/{name}" if name else d
                try:
                    os.chown(path, uid, gid)
                except FileNotFoundError:
                    if not name:
                        raise CgroupError(f"delegate {self.path}: {d} does not exist") from None
                    continue  # a file this kernel does not have (cgroup.threads before 4.14)
                except OSError as exc:
                    raise CgroupError(f"delegate {self.path}: chown {path}: {_errtext(exc)}") from None
                done.append(path)
        return done

    def _delegation_keys(self) -> dict[str, str]:
        """{key: dir} of :meth:`delegation_dirs`, keyed so that another host's layout maps:
        "v2" for the cgroup2 dir, "v1:NAME" for a v1 hierarchy mounted at .../NAME."""
        v2 = self.unified_dir()
        out = {}
        for d in self.delegation_dirs(v1=True):
            mnt = d[: -len(self.path) - 1] if d.endswith("/" + self.path) else d
            out["v2" if d == v2 else "v1:" + os.path.basename(mnt)] = d
        return out

    def subtree(self) -> dict[str, list[str]]:
        """The cgroups a delegate made below this one in the delegated hierarchies (what a
        guest's systemd made), {key: [relative paths, parents first]} (:meth:`recreate`)."""
        out: dict[str, list[str]] = {}
        for key, d in self._delegation_keys().items():
            rels = []
            for top, dirs, _files in os.walk(d):
                dirs.sort()
                rels += [os.path.relpath(os.path.join(top, x), d) for x in dirs]
            if rels:
                out[key] = rels
        return out

    def recreate(self, tree: Mapping[str, Sequence[str]], uid: int, gid: int) -> None:
        """Make :meth:`subtree`'s cgroups again below this one, delegated to ``uid``/``gid`` as
        their maker had them (a restored systemd finds its scopes and slices); keys this
        host's layout lacks are skipped."""
        dirs = self._delegation_keys()
        v2 = self.unified_dir()
        files = _delegate_files()
        for key, rels in tree.items():
            base = dirs.get(key)
            if base is None:
                continue
            for rel in rels:
                if rel.startswith("/") or ".." in rel.split("/"):
                    raise CgroupError(f"recreate {self.path}: {rel!r} is not below it")
                d = os.path.join(base, rel)
                try:
                    os.mkdir(d)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise CgroupError(f"recreate {self.path}: mkdir {d}: {_errtext(exc)}") from None
                for name in ("", *(files if base == v2 else _V1_DELEGATE)):
                    try:
                        os.chown(os.path.join(d, name) if name else d, uid, gid)
                    except FileNotFoundError:
                        pass

    # -- resources -------------------------------------------------------------------------

    def plan(self, resources: Mapping[str, Any]) -> list[tuple[str, Write]]:
        """The (directory, write) list :meth:`set` does for ``resources`` on this host."""
        from berth.cgroups import v1, v2

        layout = self.layout
        out: list[tuple[str, Write]] = []
        if layout.mode != "v2":
            mem = self.dir("memory")
            blk = self.dir("blkio")
            limit_now = None
            memory = resources.get("memory")
            if mem is not None and isinstance(memory, dict) and memory.get("limit") and memory.get("swap"):
                limit_now = _int_or_none(_read_or_none(f"{mem}/memory.limit_in_bytes"))
            for w in v1.writes(
                resources,
                controllers=set(layout.v1),
                mem_limit_now=limit_now,
                has_swap=mem is not None and os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"),
                bfq=blk is not None and os.path.exists(f"{blk}/blkio.bfq.weight"),
                unified_ok=layout.mode == "hybrid",
            ):
                out.append((f"{layout.v1[w.controller]}/{self.path}", w))
        ud = self.unified_dir()
        if ud is not None:
            scope = layout.v2_scope()
            writes = v2.writes(resources, controllers=scope, bfq=os.path.exists(f"{ud}/io.bfq.weight"))
            out += [(ud, w) for w in writes]
        return out

    def set(self, resources: Mapping[str, Any]) -> None:
        """Apply an OCI ``linux.resources`` object (see :mod:`berth.cgroups.v1` / ``v2``)."""
        if not isinstance(resources, dict):
            raise UsageError("linux.resources", "must be an object")
        plan = self.plan(resources)
        if self.layout.mode != "v1":
            needed = {w.controller for d, w in plan if w.controller and d == self.unified_dir()}
            if needed:
                self._enable(needed)
        memory = resources.get("memory")
        if isinstance(memory, dict) and memory.get("checkBeforeUpdate") and self.layout.mode == "v2":
            self._check_memory(memory)
        self._apply(plan)
        rules = resources.get("devices")
        if rules is not None and "devices" not in self.layout.v1:
            from berth.cgroups import devices

            ud = self.unified_dir()
            if ud is None:
                raise CgroupError(f"device rules for {self.path}: no devices controller and no cgroup2 mount")
            devices.attach_program(ud, devices.parse_rules(rules))

    def _check_memory(self, memory: Mapping[str, Any]) -> None:
        limit = memory.get("limit")
        ud = self.unified_dir()
        if not isinstance(limit, int) or limit <= 0 or ud is None:
            return
        usage = _int_or_none(_read_or_none(f"{ud}/memory.current"))
        if usage is not None and limit < usage:
            raise CgroupError(f"memory limit {limit} for {self.path} is below its current usage {usage}")

    def _apply(self, plan: list[tuple[str, Write]]) -> None:
        later: list[tuple[str, Write]] = []
        for d, w in plan:
            try:
                _write(f"{d}/{w.file}", w.value)
            except OSError as exc:
                if w.retry and exc.errno == errno.EINVAL:
                    later.append((d, w))
                elif not (w.optional and exc.errno == errno.ENOENT):
                    raise self._write_error(d, w, exc) from None
        for d, w in later:
            try:
                _write(f"{d}/{w.file}", w.value)
            except OSError as exc:
                raise self._write_error(d, w, exc) from None

    def _write_error(self, d: str, w: Write, exc: OSError) -> CgroupError:
        path = f"{d}/{w.file}"
        if exc.errno == errno.EBUSY and w.file in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            usage = _read_or_none(f"{d}/memory.usage_in_bytes")
            return CgroupError(
                f"{path}: memory limit {w.value} is below the cgroup's current usage "
                f"{(usage or '?').strip()}: {_errtext(exc)}"
            )
        return CgroupError(f"{path}: cannot write {w.value!r}: {_errtext(exc)}")

    # -- membership ------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Every process in the cgroup and its descendants."""
        out: list[int] = []
        stack = [self._procs_dir()]
        while stack:
            d = stack.pop()
            try:
                out += [int(p) for p in _read(f"{d}/cgroup.procs").split()]
                with os.scandir(d) as it:
                    stack += [e.path for e in it if e.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                continue
        return out

    def populated(self) -> bool:
        """Whether any process is in the cgroup or its descendants."""
        if self.layout.mode == "v2":
            ud = self.unified_dir()
            text = _read_or_none(f"{ud}/cgroup.events")
            if text is not None:
                return "populated 1" in text
        return bool(self.pids())

    # -- freezer ---------------------------------------------------------------------------

    def freeze(self, timeout: float = 5.0) -> None:
        """Stop every process in the cgroup; return once the kernel says FROZEN."""
        deadline = time.monotonic() + timeout
        d = self.dir("freezer")
        if d is not None:
            state = f"{d}/freezer.state"
            self._set(state, "FROZEN")
            n = 0

            def frozen() -> bool:
                nonlocal n
                n += 1
                if n % 20 == 0:  # a task can miss the first request (runc retries the same way)
                    _write(state, "FROZEN")
                return _read(state).strip() == "FROZEN"

            if not _poll_until(frozen, deadline):
                self._set(state, "THAWED")
                raise CgroupError(f"freeze {self.path}: {state} not FROZEN after {timeout:g}s")
            return
        ud = self._unified_or_fail("freeze")
        self._set(f"{ud}/cgroup.freeze", "1")
        if not _wait_events(f"{ud}/cgroup.events", "frozen", 1, deadline):
            self._set(f"{ud}/cgroup.freeze", "0")
            raise CgroupError(f"freeze {self.path}: {ud}/cgroup.events not frozen after {timeout:g}s")

    def thaw(self) -> None:
        d = self.dir("freezer")
        if d is not None:
            self._set(f"{d}/freezer.state", "THAWED")
        else:
            self._set(f"{self._unified_or_fail('thaw')}/cgroup.freeze", "0")

    def frozen(self) -> bool:
        """Whether the cgroup is frozen (False if it does not exist)."""
        d = self.dir("freezer")
        try:
            if d is not None:
                return _read(f"{d}/freezer.state").strip() == "FROZEN"
            ud = self._unified_or_fail("frozen")
            return "frozen 1" in _read(f"{ud}/cgroup.events")
        except FileNotFoundError:
            return False

    def _unified_or_fail(self, op: str) -> str:
        ud = self.unified_dir()
        if ud is None:
            raise CgroupError(f"{op} {self.path}: no freezer hierarchy and no cgroup2 mount")
        return ud

    def _set(self, path: str, value: str) -> None:
        try:
            _write(path, value)
        except OSError as exc:
            raise CgroupError(f"{path}: cannot write {value!r}: {_errtext(exc)}") from None

    # -- kill / destroy --------------------------------------------------------------------

    def kill(self, sig: int = 9) -> None:
        """Send ``sig`` to every process in the cgroup (and its descendants).

        SIGKILL goes through ``cgroup.kill`` where the kernel has it (one write, no race with fork);
        otherwise the cgroup is frozen, each process signalled, and thawed.
        """
        ud = self.unified_dir()
        if sig == 9 and ud is not None and os.path.exists(f"{ud}/cgroup.kill"):
            self._set(f"{ud}/cgroup.kill", "1")
            if self.dir("freezer") is not None and self.frozen():
                self.thaw()  # a v1-frozen task dies only once thawed
            return
        self._signal_all(sig)

    def _signal_all(self, sig: int) -> None:
        can_freeze = self.dir("freezer") is not None or self.unified_dir() is not None
        was_frozen = can_freeze and self.frozen()
        froze = False
        if can_freeze and not was_frozen:
            try:
                self.freeze()
                froze = True
            except CgroupError:
                pass  # a task stuck in the kernel: signal anyway
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if froze or (was_frozen and sig == 9):
                self.thaw()

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what is left, wait until empty, remove the cgroup (and its sub-cgroups) everywhere.

        Parents are removed only if this object created them and they are empty.  Idempotent.
        """
        deadline = time.monotonic() + timeout
        if not self.exists():
            return
        if self.populated():
            self.kill(9)
            if not _poll_until(lambda: not self.populated(), deadline - timeout / 2):
                # Forked during the kill, or (hybrid) put into the v1 hierarchies only: one by one.
                self._signal_all(9)
                if not _poll_until(lambda: not self.populated(), deadline):
                    raise CgroupError(
                        f"destroy {self.path}: processes {self.pids()[:8]} still there after {timeout:g}s"
                    )
        for top in self.dirs():
            self._rmtree(top, deadline)
        leaves = set(self.dirs())
        for d in reversed(self._created):
            if d not in leaves:
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        self._created = []

    @staticmethod
    def _rmtree(top: str, deadline: float) -> None:
        """rmdir ``top`` and its sub-cgroups, deepest first; EBUSY (a task still exiting) is retried."""
        try:
            os.rmdir(top)  # the common case, no sub-cgroup: no listing of its control files
            return
        except FileNotFoundError:
            return
        except OSError:
            pass  # sub-cgroups (or a task still exiting): deepest first
        try:
            walk = list(os.walk(top, topdown=False))
        except OSError:
            return
        for d, _subdirs, _files in walk:
            err: list[OSError] = []

            def gone(d: str = d, err: list[OSError] = err) -> bool:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    return True
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        err.append(exc)
                        return True
                    return False
                return True

            if not _poll_until(gone, deadline) or err:
                reason = _errtext(err[0]) if err else "still busy"
                raise CgroupError(f"remove cgroup {d}: {reason}")

    def remove_empty_parents(self, upto: str) -> None:
        """Remove the empty ancestors of this cgroup, deepest first, up to and including ``upto``
        (itself an ancestor path, e.g. ``"berth"``), then those above ``upto`` that berth's
        create() made (``"a"`` of a parent ``"a/b"``; never one made by hand or by systemd).
        Non-empty ones and everything above stay, and so does a systemd unit's (``*.slice``,
        ``.scope``, ``.service``, …: the host's own, even given as ``upto``) and everything above it."""
        top = clean_path(upto, "upto")
        if not self.path.startswith(top + "/"):
            raise UsageError("upto", f"{upto!r} is not an ancestor of {self.path!r}")
        parts = self.path.split("/")
        keep = top.count("/")
        for mnt in self.layout.mountpoints():
            for i in range(len(parts) - 1, 0, -1):
                d = f"{mnt}/{'/'.join(parts[:i])}"
                if parts[i - 1].endswith(_SYSTEMD_UNITS) or (i <= keep and not _made(d)):
                    break
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    continue
                except OSError:
                    break

    # -- stats -----------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int | None]]:
        """Normalized statistics (see :mod:`berth.cgroups.stats`)."""
        from berth.cgroups import stats

        def read_v1(controller: str, file: str) -> str | None:
            d = self.dir(controller)
            return None if d is None else _read_or_none(f"{d}/{file}")

        ud = self.unified_dir()

        def read_v2(controller: str, file: str) -> str | None:
            if ud is None:
                return None
            if controller != "cpu" and controller not in self.layout.v2_scope():
                return None
            return _read_or_none(f"{ud}/{file}")

        if self.layout.mode == "v2":
            return stats.collect_v2(read_v2)
        first = stats.collect_v1(read_v1)
        if self.layout.mode == "hybrid":
            return stats.merge(first, stats.collect_v2(read_v2))
        return first


def _mark_made(d: str) -> None:
    try:
        os.setxattr(d, _MADE_XATTR, b"1")
    except OSError:
        pass  # (then kept: see _MADE_XATTR)


def _made(d: str) -> bool:
    try:
        return os.getxattr(d, _MADE_XATTR) == b"1"
    except OSError:
        return False


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text.strip())
    except ValueError:
        return None
