"""One run of a guest: build its spec from the config, set up its disk, create and start the
container, and clean up what a finished run leaves (container state, cgroup, disk mount).

Runs in a worker forked by the supervisor daemon, so the guest's init is the daemon's child.
"""

from __future__ import annotations

import os
import time

from berth.errors import BerthError, NotFoundError, StateError
from berth.guests import config, disk
from berth.guests.store import Store, fault

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def alive(rec: dict[str, Any]) -> bool:
    """Is the init recorded in the run record still the process berth started?"""
    from berth.runtime import state as st

    pid = rec.get("pid") or 0
    return bool(pid) and st.alive({"pid": pid, "berth": {"start_time": rec.get("start_time")}})


#: The marks a checkpoint and a migration of a guest leave in its directory while under way
#: (berth.guests.migrate.PENDING, MIGRATING): left by one cut short, for berth.guests.migrate.settle.
CHECKPOINT_MARK = ".checkpoint.pending"
MIGRATE_MARK = ".migrate.pending"
RECEIVE_MARK = ".receive.pending"  # a guest received here, not committed yet (berth.guests.migrate.RECEIVING)


def cut_short(store: Store, name: str) -> bool:
    """A checkpoint, a migration or a receive of ``name`` is under way or was cut short: there
    is something for berth.guests.migrate.settle to do."""
    gdir = store.dir(name)
    return any(os.path.lexists(os.path.join(gdir, m)) for m in (CHECKPOINT_MARK, MIGRATE_MARK, RECEIVE_MARK))


def running(rec: dict[str, Any]) -> bool:
    return rec.get("status") == "running" and alive(rec)


def dumping(store: Store, name: str, rec: dict[str, Any]) -> bool:
    """Guest ``name`` is being dumped (checkpoint, migrate): its record says "running" until the
    dump is whole, but an exec joining it or a signal sent now would go into (or fail) the dump.
    The mark counts only while the dumping command holds the guest's lock: one killed half-way
    leaves a stale mark on a guest that runs on."""
    if not rec.get("dumping"):
        return False
    lock = store.lock(name)
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def net() -> Any:
    """:mod:`berth.net`, importable also in guestd's workers: guestd runs ``python -I -S`` (no
    site-packages), and the network code needs pyroute2 from the environment berth is installed in."""
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        site_packages()
    import berth.net

    return berth.net


def site_packages() -> None:
    """In guestd's workers (``python -I -S``): the site-packages of the environment berth is
    installed in (guestd's python is the venv's: found from the executable) on the import path,
    for what needs a third-party package (pyroute2: the network; a ``berth run`` served there)."""
    import sys

    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    path = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    if path not in sys.path and os.path.isdir(os.path.join(path, "pyroute2")):
        sys.path.append(path)


def _unplug(store: Store, name: str, rec: dict[str, Any]) -> None:
    """Take the guest's network away (veth, address, nft rules, HTB classes; the bridge with the
    last guest).  Idempotent: a guest that has nothing on the host costs one look at the lease file."""
    opts = config.net_from_dict(rec.get("net"))
    if opts is None or opts.mode not in ("bridge", "ip"):
        return
    import json

    try:  # written by atomic rename: safe to read without the lock; the guest's lock is ours
        with open(os.path.join(store.root, "net", f"{opts.bridge}.json"), encoding="utf-8") as f:
            if name not in json.load(f).get("active", {}):
                return
    except FileNotFoundError:
        return
    except ValueError:
        pass
    cgroup_dir = None
    if rec.get("cgroup") and opts.mode == "ip":
        from berth.cgroups import open_cgroup

        try:
            cgroup_dir = open_cgroup(rec["cgroup"]).unified_dir()
        except (BerthError, OSError):
            pass
    try:
        net().teardown(name, opts, store.root, cgroup_dir=cgroup_dir)
    except (BerthError, OSError) as e:  # logged (guestd's log, or the command's stderr); gc retries
        import sys

        sys.stderr.write(f"berth: {name}: {e}\n")


def cleanup(store: Store, name: str, rec: dict[str, Any] | None = None) -> None:
    """Remove what a run of ``name`` left: container state, network, cgroup (and its processes),
    the cgroup parents that leaves empty, disk mount."""
    from berth.runtime import container

    rec = store.read_run(name) if rec is None else rec
    removed = False  # a cgroup (with the container's state, or alone): its parents may be empty now
    try:
        container.Container.load(store.state_root, name).delete(force=True)
        removed = True
    except NotFoundError:
        _remove_stateless(store, name)
    _unplug(store, name, rec)
    cg_path = rec.get("cgroup")
    if cg_path:
        from berth.cgroups import open_cgroup

        cg = open_cgroup(cg_path)
        if cg.exists():
            removed = True
            try:
                cg.destroy()
            except BerthError:
                pass
        if removed:
            remove_cgroup_parents(store, name, rec)
    image = store.image(name)
    if os.path.exists(image):
        disk.detach(image, store.disk_mnt(name))


def _remove_stateless(store: Store, name: str) -> None:
    """The guest's container state directory without its state.json: what a start, restore or
    remove killed half-way left (it would hold the name: "container exists already").  The
    guest's lock is held: no start or restore of it is under way."""
    from berth.runtime import state as st

    sdir = st.container_dir(store.state_root, name)
    if os.path.isdir(sdir) and not os.path.lexists(os.path.join(sdir, "state.json")):
        st.remove_tree(sdir)


def remove_cgroup_parents(store: Store, name: str, rec: dict[str, Any]) -> None:
    """Remove the cgroup parents (berth's own: up to and including the cgroup parent the guest
    was started under, nothing above) that ``name``'s gone cgroup leaves empty, as ``berth
    run``'s cleanup does.  One that holds other guests' cgroups stays (its rmdir fails: EBUSY),
    and a create racing with the rmdir makes it again (:meth:`berth.cgroups.Cgroup.create`
    retries).  A guest in a cgroupsPath of its own, outside the parent, is left alone."""
    from berth.cgroups import open_cgroup

    parent = str(rec.get("cgroup_parent") or store.cgroup_parent).strip("/")
    path = str(rec.get("cgroup") or f"{parent}/{name}").strip("/")
    if not parent or not path.startswith(parent + "/"):
        return
    try:
        open_cgroup(path).remove_empty_parents(parent)
    except (BerthError, OSError):
        pass


_LXCFS_SEEN: dict[str, float] = {}  # mount point -> when this process last found lxcfs serving it
_LXCFS_RECHECK = 1.0


def _lxcfs(spec: dict[str, Any], point: str) -> None:
    """lxcfs running at ``point`` (started again if it died: the supervision of
    :func:`berth.runtime.lxcfs.ensure`), or the guest starts without its views (a warning in
    its log).  A worker starting a batch of guests checks once a second, not for each (a look
    costs a pass over the host's mount table and a FUSE round trip)."""
    from berth.errors import UnsupportedError
    from berth.runtime import lxcfs

    if time.monotonic() - _LXCFS_SEEN.get(point, -_LXCFS_RECHECK) < _LXCFS_RECHECK:
        return
    try:
        lxcfs.ensure(point)
        _LXCFS_SEEN[point] = time.monotonic()
    except (UnsupportedError, OSError) as e:
        import sys

        sys.stderr.write(f"berth: warning: {e}\n")
        prefix = point.rstrip("/") + "/"
        spec["mounts"] = [
            m for m in spec.get("mounts", []) if not str(m.get("source", "")).startswith(prefix)
        ]


def start(store: Store, name: str, *, restarts: int = 0, saved: dict[str, Any] | None = None) -> int:
    """Start ``name`` (stopped, cleaned); returns its init's pid.  Our stdio becomes the guest's.

    ``saved``: its spec.json's object, read and checked against a valid config just now
    (:func:`berth.guests.specinputs.fresh_spec`); else both are read here."""
    import json

    from berth.runtime import container, zygote

    if saved is None:
        config.load(store.config(name))  # still there and valid
        try:
            with open(os.path.join(store.dir(name), "spec.json")) as f:
                saved = json.load(f)
        except (FileNotFoundError, ValueError):
            raise BerthError(f"guest {name!r}: no spec built (start it with berth start)") from None
    spec, use_init = saved["spec"], saved["use_init"]
    net_opts = config.net_from_dict(saved.get("net"))
    overlay: dict[str, Any] = {"lower": saved["lower"]}
    if cut_short(store, name):
        from berth.guests import migrate

        # A checkpoint cut short: committed or dropped first; a migration: refused while under
        # way, else settled (the guest may run again here, restored from its images).
        migrate.settle(store, name, wait=True)
        now = store.read_run(name)
        if running(now):
            return int(now["pid"])  # restored here from its images: it runs
        store.require(name)  # (a receive cut short before its commit: the guest went)
    rec = store.read_run(name)
    moved = rec.get("migrated_to")
    if moved:
        raise StateError(
            f"guest {name!r} was migrated to {moved}: the copy here is stale (its address and "
            f"state are the migrated guest's); berth destroy {name} removes it"
        )
    cleanup(store, name, rec)
    loop = ""
    has_disk = os.path.exists(store.image(name))
    if has_disk:
        loop = disk.attach(store.image(name), store.disk_mnt(name))
    upper, work = store.layer(name, has_disk)
    overlay["upper"], overlay["work"] = upper, work
    null = os.open("/dev/null", os.O_RDONLY)
    log = os.open(store.log(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    if saved.get("lxcfs"):
        _lxcfs(spec, saved["lxcfs"])
    before = dict(rec) if os.path.exists(store.run_file(name)) else None  # the record as it was
    recorded = False
    fifo_fd: int | None = None

    def record(c: container.Container) -> None:
        """The run record, with the init's pid: written while the init still builds its root."""
        nonlocal recorded, fifo_fd
        rec.update(
            status="starting",
            desired="running",
            pid=c.pid,
            start_time=c.data["berth"]["start_time"],
            started_at=time.time(),
            cgroup=c.data["berth"]["cgroup"],
            store=store.root,
            cgroup_parent=store.cgroup_parent,
            loop=loop,
            restarts=restarts,
            net=config.net_to_dict(net_opts),
        )
        store.write_run(name, rec)
        recorded = True
        if net_opts is None:
            # Nothing is left to do before the guest's start (no network to plug in): the fifo's
            # reader, opened now, lets its init go as soon as it is ready (c.start below takes
            # it over), not after a round trip through us once it is ready.
            fifo_fd = os.open(os.path.join(c.dir, "exec.fifo"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    try:
        c = container.create(
            name,
            spec,
            state_root=store.state_root,
            bundle=store.dir(name),
            cgroup_parent=store.cgroup_parent,
            overlay=overlay,
            use_init=use_init,
            seccomp_cache=os.path.join(store.root, "cache", "seccomp"),
            on_pid=record,
            zygote=zygote.take(),  # guestd's spare forked the init ahead (berth.runtime.zygote)
        )
    except BaseException:
        if fifo_fd is not None:
            os.close(fifo_fd)
        if recorded:  # the init is gone again (create removed it): the record as it was before
            try:
                if before is None:
                    os.unlink(store.run_file(name))
                else:
                    store.write_run(name, before)
            except OSError:
                pass
        if has_disk:
            disk.detach(store.image(name), store.disk_mnt(name))
        raise
    fault("start:created")
    fault("start:recorded")
    try:
        if net_opts is not None:
            # Plugged in between create and start (as `berth run`'s on_created): the guest's
            # command starts with its address, routes and /etc/hosts in place.
            net().setup(c, net_opts, store.root)
            fault("start:net")
        c.start(fifo_fd=fifo_fd)
    except BaseException:
        store.update_run(name, status="stopped", pid=0)
        cleanup(store, name, rec)
        raise
    store.update_run(name, status="running")
    return c.pid
