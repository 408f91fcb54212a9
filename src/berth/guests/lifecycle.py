"""The guest lifecycle as library calls: create, start, stop, kill, destroy, clone, status, gc.

Every call that changes a guest holds its lock; every file is replaced atomically.  A guest's
state is reconciled on each look: a run record whose init is gone reads as stopped, and the
caller holding the lock cleans what it left.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

from berth.errors import BerthError, ExistsError, NotFoundError, StateError, UsageError
from berth.guests import client, config, disk, instance
from berth.guests.store import Store, check_name, fault, secure_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


# -- create / destroy / clone ---------------------------------------------------------------
def create(store: Store, name: str, cfg: dict[str, Any]) -> None:
    """Make guest ``name`` from ``cfg`` (validated; the template must exist or be buildable)."""
    from berth.rootfs import template

    check_name(name)
    cfg = {**cfg, "created": time.time()}
    config.validate(cfg, f"{name}: config")
    mode = config.userns_mode(cfg, f"{name}: config")
    net_opts = config.net_options(cfg)  # the address against the subnet, free address and ports
    if net_opts is not None:
        instance.net().check(store.root, name, net_opts)
    if cfg["template"] not in template.TEMPLATES and not os.path.isdir(
        template.template_rootfs(store.root, cfg["template"])
    ):
        raise NotFoundError(f"template {cfg['template']!r} does not exist")
    template.ensure(store.root, cfg["template"])  # (a build takes the template's lock: not under the hold)
    # The template's use lock, shared, until the guest's record names it: a replace (berth.rootfs.
    # template) either swapped before (the guest is made on the new one) or sees the guest.
    hold = template.starting(store.root, cfg["template"])
    try:
        _make(store, name, cfg, mode, net_opts)
    finally:
        if hold is not None:
            hold.release()


def _make(store: Store, name: str, cfg: dict[str, Any], mode: Any, net_opts: Any) -> None:
    """:func:`create`'s guest dir, layer, config and record, its template held."""
    os.makedirs(store.guests, 0o711, exist_ok=True)
    with store.lock(name):
        if os.path.lexists(store.dir(name)):
            raise ExistsError(f"guest {name!r} exists already")
        rng = _allocate_ids(store, name, mode)  # before anything is made: a bad range leaves nothing
        tmp = os.path.join(store.guests, f".new-{name}-{os.urandom(3).hex()}")
        try:
            os.mkdir(tmp, 0o700)
            secure_dir(tmp, rng[0] if rng is not None else None)  # (what the guest writes: nobody else's)
            if cfg.get("disk"):
                disk.make_image(os.path.join(tmp, f"{name}.disk.img"), config.parse_size(cfg["disk"]))
                os.chmod(os.path.join(tmp, f"{name}.disk.img"), 0o600)
                if rng is not None:
                    _on_disk(os.path.join(tmp, f"{name}.disk.img"), os.path.join(tmp, "disk"),
                             lambda mnt: _own_layer(mnt, rng))  # fmt: skip
            else:
                os.mkdir(os.path.join(tmp, "upper"), 0o755)
                os.mkdir(os.path.join(tmp, "work"), 0o700)
                if rng is not None:
                    _own_layer(tmp, rng)
            fault("create:layer")
            config.save(os.path.join(tmp, "config.toml"), cfg)
            _reserve_address(store, name, net_opts)
            os.rename(tmp, store.dir(name))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            _forget_address(store, name)
            _release_ids(store, name)
            raise
        store.write_run(name, {"status": "stopped", "desired": "stopped", "store": store.root})


# -- user namespaces: a guest's own host ids ---------------------------------------------------
def id_range(store: Store, name: str) -> tuple[int, int] | None:
    """The host ids (start, size) of guest ``name``'s user namespace; None: the host's own ids."""
    from berth.runtime import userns

    return userns.allocations(store.root).get(name)


def _allocate_ids(store: Store, name: str, mode: Any) -> tuple[int, int] | None:
    """Reserve ``name``'s range (keyed by the guest's name, persisted in the store's pool until
    destroy) for ``mode`` (auto, host or a (start, size) range); None for ``host``.  Under the
    guest's lock, the guest not existing: what a killed create left under its name is dropped."""
    if mode == "host":
        return None
    from berth.runtime import userns

    _check_reachable(store)
    userns.release(store.root, name)
    host = userns.HostIds.read(pool=userns.parse_pool(os.environ.get("BERTH_USERNS_POOL")))
    return userns.allocate(store.root, name, mode, host)


def _release_ids(store: Store, name: str) -> None:
    from berth.runtime import userns

    userns.release(store.root, name)


def _check_reachable(store: Store) -> None:
    """The guest's mapped root mounts its overlay from inside its user namespace: the path to
    its writable layer (the store's guests dir and every parent) must be searchable by others."""
    import stat

    from berth.errors import UnsupportedError

    path = os.path.realpath(store.guests)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            raise UnsupportedError(
                f"userns: {path} is not searchable by other users (mode {stat.S_IMODE(mode):04o}): the "
                "guest's mapped root could not reach its layer (chmod o+x it, or --userns host)"
            )
        if path == "/":
            return
        path = os.path.dirname(path)


def _own_layer(base: str, rng: tuple[int, int]) -> None:
    """``base``'s upper and work dirs owned by the guest's root (host id ``rng[0]``), once, at create."""
    for d in ("upper", "work"):
        os.chown(os.path.join(base, d), rng[0], rng[0])


def _on_disk(image: str, mnt: str, fn: Any) -> None:
    """``fn(mnt)`` with the guest's disk image mounted at ``mnt`` (upper and work made)."""
    disk.attach(image, mnt)
    try:
        fn(mnt)
    finally:
        disk.detach(image, mnt)
        try:
            os.rmdir(mnt)
        except OSError:
            pass


def _shift_tree(top: str, old: tuple[int, int] | None, new: tuple[int, int]) -> None:
    """Re-own a copied writable layer from one guest's ids to another's (a clone): ids in
    ``old`` (None: the host's, 0…) move to the same offset in ``new``; others (the overflow id)
    stay.  setuid/setgid bits, which chown clears, are put back.  (File capabilities in
    security.capability are dropped by the kernel on chown and not restored.)"""
    import stat

    base = old[0] if old is not None else 0
    size = old[1] if old is not None else new[1]

    def shift(i: int) -> int:
        return new[0] + i - base if base <= i < base + min(size, new[1]) else i

    def one(path: str) -> None:
        st = os.lstat(path)
        uid, gid = shift(st.st_uid), shift(st.st_gid)
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        os.lchown(path, uid, gid)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))

    one(top)
    for root, dirs, files in os.walk(top):
        for entry in dirs + files:
            one(os.path.join(root, entry))


def _reserve_address(store: Store, name: str, opts: Any) -> None:
    """A bridge guest's address is allocated once, at create, and kept for its life (the lease is
    persistent: every start gets it back); released by destroy."""
    if opts is None or opts.mode != "bridge":
        return
    from berth.net import addr as ipam

    with ipam.Leases(store.root, opts.bridge).locked() as db:
        db.lease(name, opts.subnet, opts.ip, persist=True, subnet6=opts.subnet6, want6=opts.ip6)
        db.save()


def _lease_files(store: Store) -> list[str]:
    d = os.path.join(store.root, "net")
    try:
        return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".json"))
    except FileNotFoundError:
        return []


def _forget_address(store: Store, name: str) -> None:
    """Drop ``name``'s persistent leases (on every bridge of the store) unless it runs there."""
    bridges = _lease_files(store)
    if not bridges:
        return
    from berth.net import addr as ipam

    for bridge in bridges:
        with ipam.Leases(store.root, bridge).locked() as db:
            if name in db.leases and name not in db.active:
                del db.leases[name]
                db.save()


def destroy(store: Store, name: str, *, force: bool = False) -> None:
    store.require(name)
    with store.lock(name):
        rec = store.read_run(name)
        if instance.cut_short(store, name):
            from berth.guests import migrate

            # Refused while a receive of it waits for its sender's commit (the receive would
            # keep a guest that is gone); one cut short before it: the guest went with it.
            migrate.settle_receive(store, name, refuse=True)
            if not os.path.isdir(store.dir(name)):
                return
            migrate.drop_migration(store, name)  # the images a migrate cut short kept (refused while at work)
        if instance.running(rec):
            if not force:
                raise StateError(f"guest {name!r} is running: stop it first or use --force")
            _stop_locked(store, name, rec, timeout=0)
        instance.cleanup(store, name, rec)
        instance.remove_cgroup_parents(store, name, rec)  # (stopped earlier: its cgroup went then)
        _forget_address(store, name)
        if rec.get("status") == "checkpointed" and rec.get("checkpoint"):
            from berth.runtime import checkpoint as ck

            ck.drop_lock_table(rec["checkpoint"])  # CRIU's lock of its connections: no restore will lift it
        trash = os.path.join(store.guests, f".destroy-{name}-{os.urandom(3).hex()}")
        os.rename(store.dir(name), trash)
        try:
            os.unlink(store.run_file(name))
        except FileNotFoundError:
            pass
        _release_ids(store, name)
    shutil.rmtree(trash, ignore_errors=True)


def clone(store: Store, name: str, new: str) -> None:
    """A new guest with a copy of ``name``'s config and writable layer (the template is shared)."""
    store.require(name)
    check_name(new)
    import subprocess

    with store.lock(name):
        if instance.running(store.read_run(name)):
            raise StateError(f"guest {name!r} is running: stop it before cloning")
        with store.lock(new):
            if os.path.lexists(store.dir(new)):
                raise ExistsError(f"guest {new!r} exists already")
            cfg = config.load(store.config(name))
            cfg["created"] = time.time()
            cfg.pop("ip", None)  # the copy gets its own address (at its first start)
            mode = config.userns_mode(cfg, store.config(name))
            if isinstance(mode, tuple):  # the source's own range is taken: the copy gets one from the pool
                cfg["userns"] = mode = "auto"
            old = id_range(store, name)
            rng = _allocate_ids(store, new, mode)  # its own range: the copied layer is shifted to it
            tmp = os.path.join(store.guests, f".new-{new}-{os.urandom(3).hex()}")
            try:
                os.mkdir(tmp, 0o700)
                secure_dir(tmp, rng[0] if rng is not None else None)
                if os.path.exists(store.image(name)):
                    image = os.path.join(tmp, f"{new}.disk.img")
                    subprocess.run(["cp", "--sparse=always", store.image(name), image], check=True)
                    if rng is not None and rng != old:
                        _on_disk(image, os.path.join(tmp, "disk"),
                                 lambda mnt: [_shift_tree(os.path.join(mnt, d), old, rng) for d in ("upper", "work")])  # fmt: skip
                else:
                    subprocess.run(["cp", "-a", store.layer(name, False)[0], tmp], check=True)
                    os.mkdir(os.path.join(tmp, "work"), 0o700)
                    if rng is not None and rng != old:
                        _shift_tree(os.path.join(tmp, "upper"), old, rng)
                        _own_layer(tmp, rng)
                config.save(os.path.join(tmp, "config.toml"), cfg)
                os.rename(tmp, store.dir(new))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                _release_ids(store, new)
                raise
            store.write_run(new, {"status": "stopped", "desired": "stopped", "store": store.root})


# -- start / stop / kill ----------------------------------------------------------------------
def reconcile(store: Store, name: str) -> dict[str, Any]:
    """The guest's run record, with a dead init, or a start that died half-way, shown (and,
    when nobody holds the guest's lock, cleaned) as stopped; a checkpoint of it cut short
    settled (berth.guests.migrate.settle)."""
    rec = store.read_run(name)
    pending = instance.cut_short(store, name)
    live = instance.running(rec)
    if not pending and (rec.get("status") not in ("running", "starting") or live):
        return rec
    if pending:
        from berth.guests import migrate

        if migrate.under_way(store, name):  # a killed checkpoint's CRIU, a migrate, at work: untouched
            return rec
    lock = store.lock(name)
    if not lock.acquire(blocking=False):  # a command or worker is at it: show, do not touch
        starting = rec.get("status") == "starting" and instance.alive(rec)
        if rec.get("status") not in ("running", "starting") or live:
            return rec
        return {**rec, "status": "starting" if starting else "stopped"}
    try:
        if pending:
            from berth.guests import migrate

            migrate.settle(store, name)  # a checkpoint cut short: committed or dropped; a migration
        rec = store.read_run(name)
        if rec.get("status") in ("running", "starting") and not instance.running(rec):
            rec.update(status="stopped", finished_at=rec.get("finished_at") or time.time())
            store.write_run(name, rec)
            instance.cleanup(store, name, rec)
        return rec
    finally:
        lock.release()


def start(store: Store, names: list[str], *, prepare: Callable[[str], None] | None = None) -> dict[str, int]:
    """Start the guests (concurrently, through guestd); their init pids.

    Under each guest's lock: check it is not running and record that it should run; then the
    lock goes to guestd's worker (which checks again), so a start whose command is killed
    still completes, and a concurrent start of the same guest is a no-op.

    The guests go to guestd in a few batches (:func:`_workers`), each started by one worker
    in turn: a worker costs a fork of guestd and its copied pages once per batch, not per
    guest.  ``prepare(name)`` (the CLI's spec build) runs just before a guest's batch is
    sent, so guestd starts the first batch while the next ones are prepared; a guest it fails
    for is reported and not started, the others are."""
    for n in names:
        store.require(n)
        config.load(store.config(n))
    todo = list(dict.fromkeys(names))
    size = -(-len(todo) // min(len(todo), _workers())) if todo else 1
    pids: dict[str, int] = {}
    errors: list[str] = []
    sent = []
    for b in range(0, len(todo), size):
        ready = []
        for n in todo[b : b + size]:
            try:
                if prepare is not None:
                    prepare(n)
                with store.lock(n):
                    rec = store.read_run(n)
                    if instance.running(rec):
                        pids[n] = rec["pid"]  # already running: nothing to do (as docker start)
                        continue
                    store.update_run(n, desired="running", store=store.root)
            except BerthError as e:
                if len(todo) == 1:
                    raise
                errors.append(f"start {n}: {e}")
                continue
            ready.append(n)
        fault("start:locked")
        if ready:
            sent.append((ready, client.send(store, {"op": "start", "names": ready})))
    fault("start:sent")
    for batch, s in sent:
        replies = client.receive_all(s, batch)
        for n in batch:
            reply = replies[n]
            if reply.get("ok"):
                pids[n] = reply["pid"]
            else:
                errors.append(
                    f"start {n}: {reply.get('error')}" if len(todo) > 1 else str(reply.get("error"))
                )
    if errors:
        raise BerthError("; ".join(errors))
    return pids


WORKERS_PER_CPU = 4


def _workers() -> int:
    """How many of guestd's workers start guests at once: a few per CPU berth may use, as a
    start waits more than it computes (on the guest's init setting up, and on v1 cgroup
    attaches, each an RCU grace period) and the waits of several starts overlap.
    ``BERTH_START_WORKERS`` sets it."""
    raw = os.environ.get("BERTH_START_WORKERS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise UsageError("BERTH_START_WORKERS", f"{raw!r} is not a positive whole number")
        return int(raw)
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return max(1, cpus) * WORKERS_PER_CPU


def _wait_dead(rec: dict[str, Any], timeout: float) -> bool:
    pid = rec.get("pid") or 0
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return True
    try:
        import select

        deadline = time.monotonic() + timeout
        while instance.alive(rec):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([fd], [], [], min(left, 0.2))
        return True
    finally:
        os.close(fd)


def _stop_locked(store: Store, name: str, rec: dict[str, Any], timeout: float, *, term: bool = True) -> None:
    rec = store.update_run(name, desired="stopped")
    if instance.alive(rec):
        if term:
            try:
                os.kill(rec["pid"], _stop_signal(store, name))
            except ProcessLookupError:
                pass
        if not _wait_dead(rec, timeout):
            from berth.cgroups import open_cgroup

            try:
                open_cgroup(rec["cgroup"]).kill(signal.SIGKILL)
            except (BerthError, OSError):
                os.kill(rec["pid"], signal.SIGKILL)
            _wait_dead(rec, 10)
    rec = store.read_run(name)
    rec.update(status="stopped", finished_at=rec.get("finished_at") or time.time())
    store.write_run(name, rec)
    instance.cleanup(store, name, rec)


def _stop_signal(store: Store, name: str) -> int:
    from berth.rootfs import template

    try:
        cfg = effective_config(store, config.load(store.config(name)))
    except BerthError:
        return int(signal.SIGTERM)
    return config.stop_signal(cfg, template.template_rootfs(store.root, cfg["template"]))


def effective_config(store: Store, cfg: dict[str, Any]) -> dict[str, Any]:
    """The guest's config with its template's image defaults (command, env, workdir, user of
    an imported OCI image) filled in: what its spec is built from (:func:`config.with_image`)."""
    from berth.rootfs import template

    return config.with_image(cfg, template.image_defaults(store.root, cfg["template"]))


def stop(store: Store, names: list[str], *, timeout: float = 10.0) -> None:
    """Stop guests together: SIGTERM to each init, SIGKILL to all that remain after ``timeout``."""
    for n in names:
        store.require(n)
    locks = [store.lock(n) for n in names]
    try:
        for lock in locks:
            lock.acquire()
        for n in names:  # a checkpoint cut short while the guest runs on: dropped before it ends
            if instance.cut_short(store, n):
                from berth.guests import migrate

                migrate.settle(store, n, wait=True)  # (refused while a migrate of it runs)
        recs = {n: store.update_run(n, desired="stopped") for n in names}
        for n, rec in recs.items():
            if instance.alive(rec):
                try:
                    os.kill(rec["pid"], _stop_signal(store, n))
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for n, rec in recs.items():
            _stop_locked(store, n, rec, max(0.0, deadline - time.monotonic()), term=False)
    finally:
        for lock in locks:
            lock.release()


def kill(store: Store, name: str, sig: int) -> None:
    store.require(name)
    rec = store.read_run(name)
    if not instance.running(rec):
        raise StateError(f"guest {name!r} is not running")
    if instance.dumping(store, name, rec):
        raise StateError(f"guest {name!r} is being checkpointed (try again once that is done)")
    os.kill(rec["pid"], sig)


def status(store: Store, name: str) -> dict[str, Any]:
    """What `berth list` and `berth info` show for one guest."""
    cfg = effective_config(store, config.load(store.config(name)))
    rec = reconcile(store, name)
    up = instance.running(rec)
    info: dict[str, Any] = {
        "name": name,
        "state": "running" if up else ("starting" if rec.get("status") == "starting" else "stopped"),
        "pid": rec.get("pid") if up else None,
        "template": cfg["template"],
        "kind": "system" if config.is_system(cfg) else "application",
        "cmd": cfg.get("cmd") or config.SYSTEM_INIT,
        "restart": cfg.get("restart", "no"),
        "restarts": rec.get("restarts", 0),
        "exit_code": rec.get("exit_code"),
        "uptime": round(time.time() - rec["started_at"], 1) if up and rec.get("started_at") else None,
        "memory": None,
        "disk": cfg.get("disk"),
        **net_view(store, name, cfg),
    }
    if up and rec.get("cgroup"):
        from berth.cgroups import open_cgroup

        try:
            mem = open_cgroup(rec["cgroup"]).stats().get("memory", {})
            info["memory"] = mem.get("usage") or mem.get("current")
        except (BerthError, OSError):
            pass
    return info


def disk_use(store: Store, name: str) -> int:
    """Bytes the guest's own writable layer uses (the template is shared and not counted)."""
    has_disk = os.path.exists(store.image(name))
    if has_disk:
        return os.stat(store.image(name)).st_blocks * 512
    total = 0
    for top, _dirs, files in os.walk(store.layer(name, False)[0]):
        for f in files:
            try:
                total += os.lstat(os.path.join(top, f)).st_blocks * 512
            except OSError:
                pass
    return total


def net_view(store: Store, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """``net`` (the mode) and ``ips`` (a bridge guest's address is shown stopped or running)."""
    try:
        opts = config.net_options(cfg)
    except UsageError:
        opts = None
    if opts is None:
        return {"net": cfg.get("net", "none"), "ips": []}
    if opts.mode == "host":
        return {"net": "host", "ips": []}
    if opts.mode == "ip":
        return {"net": "ip", "ips": list(opts.addrs)}
    import json

    try:
        with open(os.path.join(store.root, "net", f"{opts.bridge}.json"), encoding="utf-8") as f:
            lease = json.load(f).get("leases", {}).get(name) or {}
    except (OSError, ValueError):
        lease = {}
    ips = [lease["ip"]] if lease.get("ip") else []
    return {"net": "bridge", "ips": ips, "ip6": lease.get("ip6"), "bridge": opts.bridge}


def net_info(store: Store, name: str) -> dict[str, Any] | None:
    """A running guest's network record and HTB class tree (``berth info``); None if it has none."""
    rec = store.read_run(name)
    opts = config.net_from_dict(rec.get("net"))
    if opts is None or opts.mode not in ("bridge", "ip") or not instance.running(rec):
        return None
    return instance.net().info(store.root, name, opts)


# -- set ----------------------------------------------------------------------------------------
NET_SET_KEYS = ("net_rate", "net_ceil", "net_share")


def set_net(store: Store, name: str, values: dict[str, Any]) -> bool:
    """Persist bandwidth settings (``values``: net_rate / net_ceil / net_share) and apply them
    live to the guest's HTB class if it runs (its rate, ceil and share are replaced)."""
    store.require(name)
    with store.lock(name):
        cfg = config.load(store.config(name))
        new = {**cfg, **values}
        if new.get("net", "none") != "bridge":
            raise UsageError(
                "net-rate", f"bandwidth settings need a bridge guest (the mode is {new.get('net', 'none')!r})"
            )
        opts = config.net_options(new)  # rate/ceil/share checked together
        config.validate(new, store.config(name))
        rec = store.read_run(name)
        live = instance.running(rec) and rec.get("net") is not None
        if live:
            ropts = config.net_from_dict(rec["net"])
            instance.net().set_rate(
                store.root, name, ropts, rate_bps=opts.rate_bps, ceil_bps=opts.ceil_bps, share=opts.share
            )
            rec["net"].update(rate_bps=opts.rate_bps, ceil_bps=opts.ceil_bps, share=opts.share)
            store.write_run(name, rec)
        config.save(store.config(name), new)
        return live


def set_resources(store: Store, name: str, items: list[tuple[str, str]], parsed: dict[str, Any]) -> bool:
    """Persist resource flags (``items``: (flag, value)) to the config and apply them live
    (``parsed``: OCI resources and annotations from berth.cli.resources.parse) if the guest runs.

    rlimits (--nofile, --ulimit) are saved but take effect at the next start."""
    store.require(name)
    with store.lock(name):
        cfg = config.load(store.config(name))
        res = dict(cfg.get("resources", {}))
        for flag, value in items:
            res[config.flag_key(flag)] = value
        cfg["resources"] = res
        rec = store.read_run(name)
        live = instance.running(rec)
        if live:
            from berth.runtime import resources as rtres

            rtres.update(store.state_root, name, parsed["resources"], parsed["annotations"])
        config.save(store.config(name), cfg)
        return live


# -- gc -----------------------------------------------------------------------------------------
def gc(store: Store) -> list[str]:
    """Remove what crashes left: half-made guests, stale run state, container state dirs,
    empty cgroups under the parent, disk mounts and loop devices of guests not running, the
    template use entries of berth runs gone."""
    from berth.runtime import state as st

    done: list[str] = []
    names = set(store.names())
    for entry in os.listdir(store.guests) if os.path.isdir(store.guests) else []:
        if entry.startswith((".new-", ".destroy-")):
            path = os.path.join(store.guests, entry)
            guest = entry.split("-", 1)[1].rsplit("-", 1)[0]
            image = os.path.join(path, f"{guest}.disk.img")
            if os.path.exists(image):
                disk.detach(image, os.path.join(path, "disk"))
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path}")
    for name in sorted(names):
        lock = store.lock(name)
        if not lock.acquire(blocking=False):
            continue
        try:
            from berth.guests import migrate

            if migrate.under_way(store, name):  # a killed checkpoint's CRIU still at work
                continue
            done += migrate.settle(store, name)  # checkpoints cut short, their directories
            rec = store.read_run(name)
            if instance.running(rec):
                continue
            had = os.path.isdir(st.container_dir(store.state_root, name)) or (
                os.path.exists(store.image(name)) and disk.loops_of(store.image(name))
            )
            if rec.get("status") == "running":
                rec.update(status="stopped")
                store.write_run(name, rec)
            try:
                instance.cleanup(store, name, rec)
            except OSError as e:  # its state unreadable (a directory where state.json was, say)
                done.append(f"could not clean {name}: {e}")
                continue
            if had:
                done.append(f"cleaned {name}")
        finally:
            lock.release()
    # Runtime state dirs and run records of guests that no longer exist.
    for cid in st.ids(store.state_root):
        if cid == "guests" or cid in names:
            continue
        if os.path.exists(os.path.join(store.state_root, cid, "state.json")) or os.path.isdir(
            os.path.join(store.state_root, cid)
        ):
            from berth.runtime import container

            try:
                c = container.Container.load(store.state_root, cid)
                status = c.status()
                owned = bool(c.data.get("berth", {}).get("owner"))
                if (
                    # (a berth run's whose berth run lives: that run is finishing it, state and all)
                    (status == st.STOPPED and not owned)
                    # berth run's, its berth run gone: killed between create and start its init
                    # waits for good; after the start it dies by pdeathsig (maybe not yet)
                    or st.owner_gone(c.data)
                    # half made by a runtime's command that crashed (not a berth run's going on)
                    or (c.data.get("status") == st.CREATING and not owned and st.creator_gone(c.data))
                ):
                    c.delete(force=True)
                    done.append(f"removed state {cid}")
            except (NotFoundError, BerthError):
                if _being_made(os.path.join(store.state_root, cid)):
                    continue
                st.remove_tree(os.path.join(store.state_root, cid))
                done.append(f"removed state {cid}")
            except OSError as e:  # unreadable, not damaged (EIO, a directory): left for a look
                done.append(f"could not read state {cid}: {e}")
    done += [f"removed {p}" for p in st.sweep(store.state_root)]  # what killed removes left
    if os.path.isdir(store.run_dir()):
        for f in os.listdir(store.run_dir()):
            if f.endswith(".json") and f[:-5] not in names:
                try:
                    os.unlink(os.path.join(store.run_dir(), f))
                except FileNotFoundError:
                    continue  # another gc, or its guest's destroy, took it
                done.append(f"removed record {f[:-5]}")
    from berth.rootfs import template

    # Use entries of berth runs killed -9 (a replace ignores them too: berth.rootfs.template).
    done += [f"removed stale template use entry {p}" for p in template.prune_runs(store.root)]
    done += _gc_loops(store, names)
    done += _gc_ids(store, names)
    done += _gc_cgroups(store, names)
    done += _gc_net(store)
    return done


def _gc_ids(store: Store, names: set[str]) -> list[str]:
    """Id ranges held under the name of a guest that does not exist (a create or clone killed
    half-way); ``berth run``'s are reclaimed by the pool itself once their process is gone."""
    from berth.runtime import userns

    done = []
    for owner in sorted(userns.allocations(store.root)):
        if owner.startswith("run:") or owner in names:
            continue
        lock = store.lock(owner)
        if not lock.acquire(blocking=False):
            continue  # being created right now
        try:
            if not store.exists(owner):
                userns.release(store.root, owner)
                done.append(f"freed the id range of {owner}")
        finally:
            lock.release()
    return done


def _gc_net(store: Store) -> list[str]:
    """Network objects (veth, addresses, nft rules, HTB; the bridge with its last guest) of every
    guest in the store's lease files whose init is gone (``berth run`` guests included)."""
    bridges = _lease_files(store)
    if not bridges:
        return []
    from dataclasses import replace

    from berth.net import options

    net = instance.net()
    done = []
    base = options.parse("bridge", env={})
    for bridge in bridges:
        try:
            for n in net.gc(store.root, replace(base, bridge=bridge)):
                done.append(f"removed network of {n} (bridge {bridge})")
        except (BerthError, OSError) as e:
            done.append(f"network of bridge {bridge}: {e}")
    return done


def _gc_loops(store: Store, names: set[str]) -> list[str]:
    """Loop devices backed by an image in this store whose guest is not running (or gone)."""
    import subprocess

    done = []
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    prefix = os.path.realpath(store.guests) + "/"
    for line in out.splitlines():
        dev, _, rest = line.partition(":")
        backing = rest[rest.find("(") + 1 : rest.rfind(")")].removesuffix(" (deleted)")
        if not backing.startswith(prefix):
            continue
        owner = backing[len(prefix) :].split("/", 1)[0]
        # A guest being started (its lock held) has its disk attached before it runs.
        lock = store.lock(owner) if owner in names else None
        if lock is not None and not lock.acquire(blocking=False):
            continue
        try:
            if owner in names and instance.running(store.read_run(owner)):
                continue
            mnt = os.path.join(os.path.dirname(backing), "disk")
            if disk.is_mounted(mnt):
                subprocess.run(["umount", mnt], capture_output=True, check=False)
            subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
            done.append(f"detached {dev} ({backing})")
        finally:
            if lock is not None:
                lock.release()
    return done


# A state directory without its state.json is one being made (st.reserve, then st.write: the
# runtime's create writes it before it makes the cgroup) or a claim of _gc_cgroups: left alone
# while younger than this many seconds, then taken for what a crash left.
STATE_GRACE = 30.0


def _being_made(sdir: str) -> bool:
    """``sdir`` has no state.json yet and was made less than STATE_GRACE seconds ago."""
    try:
        if os.path.exists(os.path.join(sdir, "state.json")):
            return False
        return time.time() - os.lstat(sdir).st_mtime < STATE_GRACE
    except OSError:
        return False


def _claim(state_root: str, cid: str) -> str | None:
    """Hold the name ``cid`` as a container's create does (its state directory, made first:
    berth.runtime.state.reserve): while held, no container ``cid`` is made, so its cgroup is
    nobody's.  None if a container (alive, dead or being made) has it."""
    from berth.runtime import state as st

    if not st.valid_id(cid):
        return ""  # no container can be named so
    try:
        return st.reserve(state_root, cid)
    except (ExistsError, OSError):
        return None


def _gc_cgroups(store: Store, names: set[str]) -> list[str]:
    """Empty cgroups under the parent that no guest and no container holds.  A container's
    cgroup is made after its state (berth run's, with its owner): one whose state is there is
    left (the state pass above removed the dead ones with their cgroups); one whose state is not
    is removed under a claim of its name, so a create starting meanwhile (a ``berth run --name``
    reusing a crashed one's) cannot have it pulled away before its init joins."""
    from berth.cgroups import detect, open_cgroup

    done = []
    running = {n for n in names if instance.running(store.read_run(n))}
    seen: set[str] = set()
    # Every hierarchy's root: /sys/fs/cgroup itself on a cgroup-v2-only host.
    for top in detect().mountpoints():
        base = os.path.join(top, store.cgroup_parent)
        try:
            children = os.listdir(base)
        except (FileNotFoundError, NotADirectoryError):
            continue  # none, or the last guest's cleanup removed the parent just now
        for child in children:
            if os.path.isdir(os.path.join(base, child)) and child not in running:
                seen.add(child)
    for child in sorted(seen):
        # A guest's cgroup is made empty before its init joins it: one that is being started
        # (its lock held) is not a leftover.
        lock = store.lock(child) if child in names else None
        if lock is not None and not lock.acquire(blocking=False):
            continue
        claim = _claim(store.state_root, child) if lock is None else ""
        if claim is None:
            continue  # a container's: alive, being made, or its state left for a look
        cg = open_cgroup(f"{store.cgroup_parent}/{child}")
        try:
            if cg.pids():
                continue
            cg.destroy()
            done.append(f"removed cgroup {cg.path}")
        except (BerthError, OSError):
            pass
        finally:
            if claim:
                try:
                    os.rmdir(claim)
                except OSError:
                    pass  # (a later gc takes it, past STATE_GRACE)
            if lock is not None:
                lock.release()
    # The parent itself, once nothing is under it (as a guest's cleanup leaves it).
    try:
        parent = open_cgroup(store.cgroup_parent)
        if parent.exists():
            open_cgroup(f"{parent.path}/-").remove_empty_parents(parent.path)  # (the child: a name only)
            if not parent.exists():
                done.append(f"removed cgroup {parent.path}")
    except (BerthError, OSError):
        pass
    return done


def parse_signal(text: str) -> int:
    t = text.upper()
    if t.isdigit():
        return int(t)
    t = t if t.startswith("SIG") else f"SIG{t}"
    try:
        return int(signal.Signals[t])
    except KeyError:
        raise UsageError("signal", f"unknown signal {text!r}") from None
