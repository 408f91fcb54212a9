"""One run of a guest: build its spec from the config, set up its disk, create and start the
container, and clean up what a finished run leaves (container state, cgroup, disk mount).

Runs in a worker forked by the supervisor daemon, so the guest's init is the daemon's child.
"""

from __future__ import annotations

import os
import time

from berth.errors import BerthError, NotFoundError
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


def running(rec: dict[str, Any]) -> bool:
    return rec.get("status") == "running" and alive(rec)


def cleanup(store: Store, name: str, rec: dict[str, Any] | None = None) -> None:
    """Remove what a run of ``name`` left: container state, cgroup (and its processes), disk mount."""
    from berth.runtime import container

    rec = store.read_run(name) if rec is None else rec
    try:
        container.Container.load(store.state_root, name).delete(force=True)
    except NotFoundError:
        pass
    cg_path = rec.get("cgroup")
    if cg_path:
        from berth.cgroups import open_cgroup

        cg = open_cgroup(cg_path)
        if cg.exists():
            try:
                cg.destroy()
            except BerthError:
                pass
    image = store.image(name)
    if os.path.exists(image):
        disk.detach(image, store.disk_mnt(name))


def start(store: Store, name: str, *, restarts: int = 0) -> int:
    """Start ``name`` (stopped, cleaned); returns its init's pid.  Our stdio becomes the guest's."""
    import json

    from berth.runtime import container

    config.load(store.config(name))  # still there and valid
    try:
        with open(os.path.join(store.dir(name), "spec.json")) as f:
            saved = json.load(f)
    except (FileNotFoundError, ValueError):
        raise BerthError(f"guest {name!r}: no spec built (start it with berth start)") from None
    spec, use_init = saved["spec"], saved["use_init"]
    overlay: dict[str, Any] = {"lower": saved["lower"]}
    rec = store.read_run(name)
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
        )
    except BaseException:
        if has_disk:
            disk.detach(store.image(name), store.disk_mnt(name))
        raise
    fault("start:created")
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
    )
    store.write_run(name, rec)
    fault("start:recorded")
    try:
        c.start()
    except BaseException:
        store.update_run(name, status="stopped", pid=0)
        cleanup(store, name, rec)
        raise
    store.update_run(name, status="running")
    return c.pid
