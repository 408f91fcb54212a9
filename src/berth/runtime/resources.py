"""Resources across the running guests: admission, cluster-wide CPU weights, live update.

CPU weights depend on *every* running guest (:mod:`berth.policy.cpu`: ``w_i ∝ r_i + (C-R)·s_i/S``),
so they are recomputed and written to every guest's cgroup whenever a guest is created
(:func:`place`), deleted (:func:`forget`) or changed (:func:`update`).  "Running guests" are the
containers under the same state root whose cgroup has the same parent; each one's
:class:`~berth.policy.cpu.CpuRequest` is recorded in its ``state.json`` (``berth.cpu``), and its
ANON / MEMLOCK limits (``berth.limits``) for the supervisor (:mod:`berth.runtime.supervise`).

A lock file (``<state root>/.resources.lock``, ``flock``) serializes admission: a guest is counted
from the moment its state says ``creating``, so two guests starting at once cannot both take the
last free reservation, and no weight computation misses a guest.

Host capacity is the number of CPUs berth may run on (``sched_getaffinity``); the host reserve
(never handed out as reservations) is ``BERTH_HOST_RESERVE`` (``5%`` or ``0.05``), default 5 %.

Fast path: when the new guest and every running one ask for nothing but the default share, no
weight is written (all guests stay at the kernel's default weight) and :mod:`berth.policy` is not
even imported.  To know that without reading every guest's state.json (O(guests) per start: the
density benchmark starts 1000), an index beside the lock (``.resources.json``, written under it)
keeps the CPU requests that are not the default and the state directories it has seen (by inode
number, one ``scandir``); a directory it has not seen (made by a restore, or an older berth) is
read once.  ``berth run`` without CPU flags pays one directory listing and the index.
"""

from __future__ import annotations

import os

from berth.errors import BerthError, UsageError
from berth.runtime import state as st

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.policy.cpu import CpuKnobs, CpuRequest

LOCK = ".resources.lock"
INDEX = ".resources.json"
DEFAULT: dict[str, Any] = {"share": 100, "reserve": 0.0, "cap": None, "burst_us": None}
_CPU_KEYS = ("berth.cpu.share", "berth.cpu.reserve", "berth.cpu.cap", "berth.cpu.burst-us")


def host_capacity() -> float:
    """CPUs guests share: those this process may run on (the parent cpuset's)."""
    try:
        return float(len(os.sched_getaffinity(0)))
    except OSError:
        return float(os.cpu_count() or 1)


def host_reserve() -> float:
    """The fraction of the host never reserved: ``BERTH_HOST_RESERVE`` (``5%`` or ``0.05``)."""
    raw = os.environ.get("BERTH_HOST_RESERVE", "").strip()
    if not raw:
        return 0.05
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(
            "BERTH_HOST_RESERVE", f"{raw!r} is not a fraction (0.05) or a percentage (5%)"
        ) from None
    if not 0 <= value < 1:
        raise UsageError("BERTH_HOST_RESERVE", f"{raw!r} must be from 0 up to (not including) 100%")
    return value


# -- requests -------------------------------------------------------------------------------


def request_from_annotations(name: str, ann: dict[str, str]) -> CpuRequest:
    """The :class:`~berth.policy.cpu.CpuRequest` the ``berth.cpu.*`` annotations describe."""
    from berth.policy.cpu import CpuRequest

    return CpuRequest(name=name, **_record_from_annotations(ann, dict(DEFAULT)))


def _record_from_annotations(ann: dict[str, str], base: dict[str, Any]) -> dict[str, Any]:
    rec = dict(base)
    for key, dest, kind in (
        ("berth.cpu.share", "share", int),
        ("berth.cpu.reserve", "reserve", float),
        ("berth.cpu.cap", "cap", float),
        ("berth.cpu.burst-us", "burst_us", int),
    ):
        v = ann.get(key)
        if v is None:
            continue
        if v in ("", "none", "null"):
            rec[dest] = DEFAULT[dest]
            continue
        try:
            rec[dest] = kind(float(v)) if kind is int else float(v)
        except ValueError:
            raise UsageError(f"annotations.{key}", f"{v!r} is not a number") from None
    return rec


def record_from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The CPU request to record for a guest made from ``spec``: the ``berth.cpu.*`` annotations.

    A plain OCI spec (podman, containerd, Kubernetes) has none: its ``linux.resources.cpu`` is
    applied exactly as given, as runc would, and it takes no part in berth's weight policy
    (kubelet computes shares for its pods itself and expects to find them unchanged)."""
    ann = spec.get("annotations") or {}
    if any(k in ann for k in _CPU_KEYS):
        return _record_from_annotations(ann, DEFAULT)
    return dict(DEFAULT)


def limits_from_annotations(ann: dict[str, str]) -> dict[str, int]:
    """The supervised limits (``anon``, ``memlock`` in bytes) the annotations set."""
    out = {}
    for key, dest in (("berth.memory.anon", "anon"), ("berth.memory.memlock", "memlock")):
        v = ann.get(key)
        if v:
            try:
                out[dest] = int(v)
            except ValueError:
                raise UsageError(f"annotations.{key}", f"{v!r} is not a number of bytes") from None
    return out


def _is_default(rec: dict[str, Any] | None) -> bool:
    return rec is None or (
        rec.get("share", 100) == 100
        and not rec.get("reserve")
        and rec.get("cap") is None
        and rec.get("burst_us") is None
    )


def _request(name: str, rec: dict[str, Any] | None) -> CpuRequest:
    from berth.policy.cpu import CpuRequest

    r: dict[str, Any] = dict(DEFAULT)
    r.update(rec or {})
    return CpuRequest(
        name=name,
        share=int(r["share"]),
        reserve=float(r["reserve"] or 0.0),
        cap=r["cap"],
        burst_us=r["burst_us"],
    )


# -- the running set ------------------------------------------------------------------------


def _lock(state_root: str) -> int:
    import fcntl

    os.makedirs(state_root, mode=0o711, exist_ok=True)
    fd = os.open(os.path.join(state_root, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def unlock(fd: int | None) -> None:
    """Release the lock :func:`place` returned (closing the fd drops the flock)."""
    if fd is not None:
        os.close(fd)


def running(state_root: str, parent: str, exclude: str | None = None) -> dict[str, dict[str, Any]]:
    """``{id: state}`` of the guests under ``state_root`` whose cgroup is a child of ``parent``
    and that are running or being created."""
    out = {}
    for cid in st.ids(state_root):
        if cid == exclude:
            continue
        try:
            data = st.read(state_root, cid)
        except BerthError:
            continue
        cg = (data.get("berth") or {}).get("cgroup") or ""
        if os.path.dirname(cg.strip("/")) != parent.strip("/"):
            continue
        if data.get("status") == st.CREATING or st.alive(data):
            out[cid] = data
    return out


class _Index:
    """The CPU requests under a state root that are not the default, kept under the lock.

    ``seen``: ``{id: inode of its state dir}`` of every container looked at; ``cpu``: ``{id:
    [cgroup parent, request]}`` of those among them with a request other than the default.  On
    each load the state root is listed: an unseen (or recreated) directory is read, a vanished
    one dropped.  A wrong entry can only make a start take the slow path (the full scan)."""

    def __init__(self, state_root: str) -> None:
        self.path = os.path.join(state_root, INDEX)
        self.root = state_root
        self.seen: dict[str, int] = {}
        self.cpu: dict[str, list[Any]] = {}
        self.dirty = False

    def load(self) -> _Index:
        from berth.spec.jsontext import loads  # not json: it imports re (the start path of berth run)

        try:
            with open(self.path, encoding="utf-8") as f:
                data = loads(f.read())
            self.seen = {str(k): int(v) for k, v in data["seen"].items()}
            self.cpu = {str(k): list(v) for k, v in data["cpu"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.seen, self.cpu, self.dirty = {}, {}, True
        now: dict[str, int] = {}
        stale = []
        try:
            with os.scandir(self.root) as it:
                for e in it:
                    if st.valid_id(e.name) and e.is_dir(follow_symlinks=False):
                        now[e.name] = e.inode()
                    elif e.name.startswith(INDEX) and _stale_tmp(e.name):
                        stale.append(e.path)
        except FileNotFoundError:
            pass
        for path in stale:  # a save killed before its rename: removed under the lock
            try:
                os.unlink(path)
            except OSError:
                pass
        for cid in [c for c in self.seen if now.get(c) != self.seen[c]]:
            self.forget(cid)
        for cid, ino in now.items():
            if cid in self.seen:
                continue
            try:
                data = st.read(self.root, cid)
            except BerthError:
                continue  # being reserved right now: its creator records it (place)
            berth = data.get("berth") or {}
            self.note(cid, ino, berth.get("cgroup") or "", berth.get("cpu"))
        return self

    def note(self, cid: str, ino: int, cgroup: str, rec: dict[str, Any] | None) -> None:
        self.seen[cid] = ino
        if _is_default(rec):
            self.cpu.pop(cid, None)
        else:
            self.cpu[cid] = [os.path.dirname(cgroup.strip("/")), rec]
        self.dirty = True

    def forget(self, cid: str) -> None:
        had = self.seen.pop(cid, None) is not None
        if self.cpu.pop(cid, None) is not None or had:
            self.dirty = True

    def others(self, parent: str, exclude: str) -> bool:
        """Is a container other than ``exclude`` under ``parent`` recorded with a CPU request?"""
        p = parent.strip("/")
        return any(c != exclude and v[0] == p for c, v in self.cpu.items())

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        # Ids need no escaping (letters, digits, _.+-): one join, not a walk of every entry.
        seen = ",".join(f'"{c}":{int(ino)}' for c, ino in self.seen.items())
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f'{{"seen":{{{seen}}},"cpu":{st.dumps(self.cpu)}}}')
        os.rename(tmp, self.path)  # no fsync: the state root does not outlive a reboot
        self.dirty = False


def _stale_tmp(name: str) -> bool:
    """Is ``name`` an ``INDEX.PID.tmp`` (:meth:`_Index.save`'s) whose writer, PID, is gone?"""
    pid = name[len(INDEX) + 1 : -4] if name.startswith(f"{INDEX}.") and name.endswith(".tmp") else ""
    return pid.isdigit() and int(pid) != os.getpid() and st.proc_start_time(int(pid)) is None


def _inode(state_root: str, cid: str) -> int:
    try:
        return os.stat(st.container_dir(state_root, cid), follow_symlinks=False).st_ino
    except OSError:
        return 0


def _resources_for(knobs: CpuKnobs, mode: str) -> dict[str, Any]:
    res: dict[str, Any] = {
        "cpu": {
            "shares": knobs.shares_v1,
            "quota": knobs.cfs_quota_us,
            "period": knobs.period_us,
            "burst": knobs.burst_us or 0,
        }
    }
    if mode == "v2":
        res["unified"] = {"cpu.weight": str(knobs.weight_v2)}
    return res


def _default_resources(mode: str) -> dict[str, Any]:
    res: dict[str, Any] = {"cpu": {"shares": 1024, "quota": -1, "period": 100_000, "burst": 0}}
    if mode == "v2":
        res["unified"] = {"cpu.weight": "100"}
    return res


def _write_all(guests: dict[str, dict[str, Any]], knobs: dict[str, CpuKnobs] | None) -> None:
    """Write the knobs (None: the kernel defaults) to every guest's cgroup; a guest that is gone
    meanwhile is skipped."""
    from berth import cgroups

    layout = cgroups.detect()
    for cid, data in guests.items():
        path = (data.get("berth") or {}).get("cgroup")
        if not path:
            continue
        cg = cgroups.open_cgroup(path, layout)
        res = _default_resources(layout.mode) if knobs is None else _resources_for(knobs[cid], layout.mode)
        try:
            cg.set(res)
        except BerthError:
            # A guest being deleted at this moment (its cgroup going away hierarchy by
            # hierarchy) is skipped; any other failure is real.
            where = cg.dir("cpu") or cg.unified_dir()
            if where is not None and os.path.isdir(where) and st.alive(data):
                raise


def _compute(records: dict[str, dict[str, Any] | None]) -> dict[str, CpuKnobs]:
    from berth.policy.cpu import compute

    return compute([_request(n, r) for n, r in records.items()], host_capacity())


# -- the three moments: create, delete, update ----------------------------------------------


def place(
    state_root: str, cid: str, cgpath: str, spec: dict[str, Any], linux: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """Admit the new guest ``cid`` and compute everyone's CPU knobs.

    The new guest's knobs go into ``linux["resources"]["cpu"]`` (applied with the rest of its
    resources); the running guests' are written live.  Returns the held lock (release it with
    :func:`unlock` once the guest's state.json carries the returned ``berth`` fields) and those
    fields: ``{"cpu": request, "limits": {...}}``.  Raises :class:`~berth.errors.AdmissionError`.
    """
    rec = record_from_spec(spec)
    extra: dict[str, Any] = {"cpu": rec}
    limits = limits_from_annotations(spec.get("annotations") or {})
    if limits:
        extra["limits"] = limits
    fd = _lock(state_root)
    try:
        parent = os.path.dirname(cgpath.strip("/"))
        index = _Index(state_root).load()
        if not _is_default(rec):
            index.note(cid, _inode(state_root, cid), cgpath, rec)  # counted from now (state: creating)
        # (a guest with the default share is left for a later load to note: nothing counts it,
        # and a short one, berth run's, is gone before: no write of the index for it)
        index.save()
        if _is_default(rec) and not index.others(parent, cid):
            return fd, extra  # nobody asks for more than the default share: nothing to write
        others = running(state_root, parent, exclude=cid)
        if _is_default(rec) and all(_is_default(d.get("berth", {}).get("cpu")) for d in others.values()):
            return fd, extra
        from berth.policy.admission import admit

        records = {n: d.get("berth", {}).get("cpu") for n, d in others.items()}
        admit(
            [_request(n, r) for n, r in records.items()], _request(cid, rec), host_capacity(), host_reserve()
        )
        records[cid] = rec
        knobs = _compute(records)
        from berth import cgroups

        mine = _resources_for(knobs[cid], cgroups.detect().mode)
        res = linux.setdefault("resources", {})
        res.setdefault("cpu", {}).update(mine["cpu"])
        if "unified" in mine:
            res.setdefault("unified", {}).update(mine["unified"])
        _write_all(others, knobs)
        return fd, extra
    except BaseException:
        unlock(fd)
        raise


def forget(state_root: str, cid: str, cgpath: str, rec: dict[str, Any] | None) -> None:
    """Guest ``cid`` (with CPU request ``rec``) is gone: recompute the others' knobs."""
    if not cgpath:
        return
    parent = os.path.dirname(cgpath.strip("/"))
    fd = _lock(state_root)
    try:
        index = _Index(state_root).load()
        index.forget(cid)
        index.save()
        if _is_default(rec) and not index.others(parent, cid):
            return  # every weight is the default already
        others = running(state_root, parent, exclude=cid)
        if not others:
            return
        records = {n: d.get("berth", {}).get("cpu") for n, d in others.items()}
        if all(_is_default(r) for r in records.values()):
            if not _is_default(rec):
                _write_all(others, None)
            return
        _write_all(others, _compute(records))
    finally:
        unlock(fd)


def update(
    state_root: str,
    cid: str,
    resources: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Change a running guest's resources without restarting it; returns its new state.

    ``resources`` is an OCI ``linux.resources`` object (memory, pids, blockIO, cpuset …) applied to
    its cgroup as is; ``annotations`` the ``berth.cpu.*`` / ``berth.memory.*`` ones (as
    :func:`berth.cli.resources.parse` makes them; an empty value resets to the default).  A new
    CPU request passes admission (its own old reservation is not counted), then every guest's
    weights are recomputed and written.  The supervisor picks up new ANON/MEMLOCK limits from
    state.json within one check.
    """
    from berth import cgroups
    from berth.errors import StateError

    fd = _lock(state_root)
    try:
        data = st.read(state_root, cid)
        if not st.alive(data):
            raise StateError(f"container {cid!r} is not running")
        berth = data.setdefault("berth", {})
        path = berth.get("cgroup")
        if not path:
            raise StateError(f"container {cid!r} has no cgroup")
        cg = cgroups.open_cgroup(path)
        ann = dict(annotations or {})
        if resources:
            cg.set(resources)
        old = berth.get("cpu")
        rec = _record_from_annotations(ann, old or DEFAULT)
        if any(k in ann for k in _CPU_KEYS) and rec != old:
            from berth.policy.admission import admit
            from berth.policy.cpu import check_request

            check_request(_request(cid, rec))
            parent = os.path.dirname(path.strip("/"))
            others = running(state_root, parent, exclude=cid)
            records = {n: d.get("berth", {}).get("cpu") for n, d in others.items()}
            admit(
                [_request(n, r) for n, r in records.items()],
                _request(cid, rec),
                host_capacity(),
                host_reserve(),
            )
            records[cid] = rec
            index = _Index(state_root).load()
            index.note(cid, _inode(state_root, cid), path, rec)
            index.save()
            everyone = {**others, cid: data}
            if all(_is_default(r) for r in records.values()):
                _write_all(everyone, None)
            else:
                _write_all(everyone, _compute(records))
            berth["cpu"] = rec
        limits = dict(berth.get("limits") or {})
        for key, dest in (("berth.memory.anon", "anon"), ("berth.memory.memlock", "memlock")):
            if key in ann:
                if ann[key]:
                    limits[dest] = int(ann[key])
                else:
                    limits.pop(dest, None)
        berth["limits"] = limits
        anns = data.setdefault("annotations", {})
        for k, v in ann.items():
            if v:
                anns[k] = v
            else:
                anns.pop(k, None)
        st.write(state_root, cid, data)
        return data
    finally:
        unlock(fd)
