"""Checkpoint, restore and migration of long-lived guests (on top of berth.runtime.checkpoint).

**Checkpoint/restore** hold the guest's lock: the run record's pid is cleared before CRIU ends
the guest's processes, so guestd's exit worker leaves the guest alone; the restored init is
recorded and guestd is told to watch it (a no-op "exited" request: after any worker ends it
re-reads the record and follows the new init with a pidfd).

**Migration** is one TCP stream from ``berth migrate`` to ``berth receive``, framed as::

    NONCE  32 random bytes                      receiver -> sender, first (not hashed)
    HELLO  {"name", "config" (TOML text), "spec" (spec.json text), "live", "auth"}   sender -> receiver
    VERDICT {"ok"} or {"ok": false, "error"}   the receiver validated before creating anything
    [PRECOPY {"precopy": "upper"}, the upper layer as a tree]   live: while the guest still runs
    FINAL  {"final", "delta"}, a tree of the CRIU images (their page files sent while CRIU writes
           them), {"remove": what went from the upper layer}, a tree of the upper layer (live:
           only what changed since the pre-copy), then the digest
    RESULT {"ok": true, "times"} once the guest runs on the destination, or {"ok": false, "error"}
    COMMIT {"commit": true}                     sender -> receiver: keep the guest (a stream
                                                that ends before it: the receiver drops it)
    KEPT   {"kept": true}                       receiver -> sender: kept (or {"ok": false, "error"}:
                                                dropped); none: the sender keeps its images

Frames are an 8-byte big-endian length and a body; every body (but the digest) goes into one
SHA-256 checked by the receiver before it restores.  Trees go entry by entry
(:mod:`berth.guests.transfer`), written as they arrive.  The receiver works in a hidden staging
directory of its store (the CRIU images in a private tmpfs directory) and moves it in place only
when the restore succeeded; any failure or a broken connection removes it, also after the
restore, until the COMMIT.  The source keeps the images until the RESULT: if anything fails
before, it restores the guest from them in place (same processes, connections, counters).  A
``berth migrate`` killed at any point leaves a mark in the guest's directory
(:data:`MIGRATING`); the next command on the guest settles it (:func:`settle_migration`): the
guest runs on the source (resumed by CRIU, or restored from the images) unless the COMMIT was
being sent, and then on the destination only.

**Downtime** is freeze to RESULT: the CRIU dump (into /dev/shm), the images and the upper
layer's delta over the stream, the CRIU restore (from a tmpfs).  What need not be in it is kept
out: the guest's network namespace is not dumped (berth makes a fresh one on the destination,
with the guest's bridge address when it has one: CRIU puts the processes into it, their sockets
find their address), CRIU runs with berth's kerndat cache (and straight through its loader, not
the tools directory's shell wrapper), the guest's tmpfs mounts are copied by berth instead of
tarred by CRIU (:mod:`berth.runtime.checkpoint`), CRIU records the cgroups but not their
settings (the destination recreates the cgroup from the spec), the source's cleanup runs while
the destination restores, guestd hears of the guest after the RESULT.

What is left (idle busybox guest, bench/migration.py on this 2-CPU machine, about 160 ms seen by
the guest): CRIU's dump, some 60 ms by its log (it seizes the processes 3 ms in), of which some
20 ms are two conntrack dumps of the netns (two ~11 ms netlink requests; CRIU makes them even
for an external netns, and the kernel most likely walks the host's whole conntrack table for
each: ``nf_conntrack_buckets`` is 262144 here); berth's tmpfs copy some 2 ms and the stream some
5-10 ms; on the destination some 40 ms of restore setup (the cgroup and its limits, state files,
the restoring process's private mount namespace with the overlay and the tmpfs mounts, CRIU's
loader) and CRIU's restore itself, some 35-50 ms.  The receiver makes the guest's network
namespace before the final frame, not in the downtime.

**The network on restore**, by mode.  Bridge, ``--userns host``: the netns is not dumped; berth
makes one with the guest's address (above).  Bridge, in the guest's own user namespace (the
default guest): CRIU dumps the netns (berth's cannot be joined from the user namespace CRIU
makes again), and berth makes the veth pair on the bridge with its shaping, nft rules and lease
before the restore, and hands its guest end to CRIU (``--external netdev[eth0]:PEER``, moved in
by CRIU's helper in the host's user namespace, with the recorded name, MAC and addresses).
ip: mode: the guest's addresses (added to the host when it lacks them) and its address filter
go on the new cgroup before any process is restored into it.  A guest on the host's network
(ip: or host mode) in a user namespace of its own gets its established TCP connections back
closed (TCP repair on the host's network needs CAP_NET_ADMIN there), listening sockets and
everything else as they were.  A migrated guest in
its own user namespace keeps its id range (its files are owned by those ids): the receiver
reserves exactly that range in its pool, or refuses up front when another guest holds any of it.

**Authentication** (optional): with a shared token on both sides (``--token-file``), HELLO's
``auth`` is HMAC-SHA256(token, NONCE) and the final digest is HMAC-SHA256(token, NONCE + the
stream's SHA-256): the receiver refuses a sender without the token before it looks at anything
else, and a stream altered on the way.  Without a token the receiver accepts any connection: its
port must be reachable only from the trusted source host.

**A hostile peer.**  Before the token is checked every read is bounded: the HELLO frame to
``transfer.HELLO_MAX``, all of the nonce's answer and HELLO to :data:`PREAUTH_SECONDS`; each
connection has a worker of its own (up to :data:`MAX_WORKERS` at once), so a peer that
connects and stalls holds up no one, and only a sender that authenticated and sent a valid HELLO
counts for ``berth receive`` without ``--keep`` (which then waits, up to :data:`DRAIN_SECONDS`,
for the other authenticated migrations in flight: none is killed half-way).  The guest's name is
claimed for the whole receive (a second sender of the same name is refused at once, not let
undo the first's id range, veth and lease).  After it, HELLO's fields are checked by type, the config
as `berth create` checks it and against this host's policy (:mod:`berth.guests.hostpower`: no
privileged guest, host user namespace or network, extra capability or looser seccomp unless
`berth receive` allows it), and the guest's spec is built here from that config (the CLI's
``build``): the sender's spec.json (its mounts, lower layer, resources, network) is never used.
Each tree entry is checked (:func:`berth.guests.transfer.recv_tree`: path, type, devices,
owners of set-id files; each entry made relative to its directory's descriptor, opened from the
root down without following a symlink; a directory the stream sent never replaced by anything
else), and the checkpoint's berth.json before the restore
(:func:`berth.runtime.checkpoint.check_meta`: host paths bound in, files reopened, tmpfs
copies, pre-dump links, hooks dropped; the pages against their pagemaps); a file the guest had
open on the old host is reopened here only if it is one of :data:`REOPEN_DEVICES` (never a
terminal).  The policy also
refuses (unless allowed) ``publish`` (this host's ports) and a bridge that is neither this
host's default one nor one berth made here, or another subnet on it (a host's LAN bridge, a
route).  A refusal by the policy ends `berth receive` with its own status
(:data:`berth.errors.EXIT_REFUSED`).

What an authenticated sender can still do: use the store's and /dev/shm's space down to a
reserve (``transfer.RESERVE``: no quota per stream), and hand CRIU images it made.  CRIU runs
as root and treats images as trusted: it makes again the namespaces, id maps, credentials,
seccomp filters, mounts and files they describe, so **the token is root-equivalent on the
receiver**; the policy guards against a sender's config asking for more than the operator
allows, not against a hostile token holder.  As defence in depth the guest is restored stopped
(``--leave-stopped``) and each of its tasks checked against the spec built here before it runs
(:mod:`berth.runtime.ckverify`); on a mismatch they are killed, the receive undone and the
sender told what differed.  Only a connection lock table (``inet CRIU-<run id>``, the run id
the images name) that did not exist before the restore is dropped after it.

Memory pre-copy: not done.  CRIU's iterative ``pre-dump --track-mem`` needs soft-dirty page
tracking (``CONFIG_MEM_SOFT_DIRTY``), which this project's test machine lacks, so live migration
pre-copies the upper layer only and the memory goes in the final, frozen transfer (the PRECOPY
header says so: ``"memory": false`` and why).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time

from berth.errors import (
    BerthError,
    ExistsError,
    NotFoundError,
    PolicyError,
    StaleError,
    StateError,
    UsageError,
)
from berth.guests import client, config, hostpower, instance, transfer
from berth.guests.store import Store, atomic_write, check_name, fault, secure_dir
from berth.guests.transfer import Stream
from berth.runtime.checkpoint import REOPEN_DEVICES as ck_reopen_devices
from berth.runtime.checkpoint import refuse_scoped as ck_refuse_scoped

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"BERTHMIG2\n"
NONCE_BYTES = 32
PREAUTH_SECONDS = 10.0  # for the nonce's answer and HELLO, all told
MAX_WORKERS = 16  # connections served at once (more wait in the listen backlog)
DRAIN_SECONDS = 600.0  # once: how long authenticated migrations in flight are waited for at the end
# What a received tree may hold: the upper layer anything a guest makes, the images CRIU's
# files and berth's copies of tmpfs mounts (no block device; a character device only one of
# berth.runtime.checkpoint.SAFE_DEVICES).
UPPER_KINDS = "fdlhpc"
IMAGE_KINDS = "fdlhpca"


# -- checkpoint / restore ----------------------------------------------------------------------
def _spec(store: Store, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(store.dir(name), "spec.json")) as f:
            return json.load(f)  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        raise BerthError(f"guest {name!r}: no spec built (start it with berth start)") from None


def _running_container(store: Store, name: str) -> Any:
    from berth.runtime.container import Container

    rec = store.read_run(name)
    if not instance.running(rec):
        raise StateError(f"guest {name!r} is not running")
    return Container.load(store.state_root, name), rec


def checkpoint(
    store: Store, name: str, images: str, *, leave_running: bool = False, criu: str | None = None
) -> dict[str, Any]:
    """Dump the running guest ``name`` into ``images``; the metadata.  Its upper layer stays in
    place (not copied: restore mounts it again).

    Crash safety: the dump goes into a new directory beside ``images``, named with the guest's
    init in :data:`PENDING` (in the guest's directory) before CRIU runs; berth.json goes in at
    CRIU's post-dump step, before CRIU ends the processes (:func:`berth.runtime.checkpoint.dump`),
    and a berth killed before that step makes CRIU resume them.  Whatever point this command
    is killed at, the next command on the guest (:func:`settle`) finds the guest running (the
    new directory is dropped), or its processes ended with the new dump whole (committed as
    the checkpoint), or ended without it: its state is lost, and a restore of an earlier
    checkpoint (older than the guest's last state) is refused unless asked for."""
    store.require(name)
    with store.lock(name):
        settle(store, name, wait=True)
        c, rec = _running_container(store, name)
        ck_refuse_scoped(c.data, name)  # before anything is made
        spec = _spec(store, name)
        # Into a new directory beside ``images``, which replaces it only once the dump is whole:
        # an earlier checkpoint there is neither mixed into this one nor lost if this one fails.
        images = os.path.abspath(images)
        os.makedirs(os.path.dirname(images), 0o700, exist_ok=True)
        _drop_stale(images)
        fresh = tempfile.mkdtemp(prefix=f".{os.path.basename(images)}.new-", dir=os.path.dirname(images))
        pend = {
            "id": os.urandom(8).hex(),
            "new": fresh,
            "images": images,
            "pid": c.pid,
            "start_time": (c.data.get("berth") or {}).get("start_time"),
            "leave_running": leave_running,
            "paused": c.status() == "paused",
            # CRIU is told to freeze the cgroup (else it seizes the processes: a frozen cgroup
            # after a kill is not CRIU's to thaw; see _unstick).
            "criu_freezes": False,
            "time": time.time(),
        }
        atomic_write(_pending_path(store, name), json.dumps(pend), durable=False)

        def freezes() -> None:  # in the mark before CRIU runs
            pend.update(criu_freezes=True)
            atomic_write(_pending_path(store, name), json.dumps(pend), durable=False)

        def spawned(pid: int) -> None:  # CRIU's, in the mark: a berth killed leaves it at work
            pend.update(criu_pid=pid, criu_start=_proc_start(pid))
            atomic_write(_pending_path(store, name), json.dumps(pend), durable=False)
            fault("checkpoint:spawned")

        # The record says "running" until the dump is whole: if this command is killed half-way
        # the guest runs on and is seen to (a record marked before the dump made gc clean up the
        # live guest).  guestd's exit worker for the init CRIU ends waits for this lock and then
        # finds pid 0: not its exit to record.
        store.update_run(name, dumping=True)  # exec and kill wait (instance.dumping)
        try:
            meta = _dump(
                store,
                name,
                spec,
                c,
                fresh,
                criu,
                leave_running=leave_running,
                dump_id=pend["id"],
                on_post_dump=lambda: fault("checkpoint:post-dump"),
                on_spawn=spawned,
                on_written=lambda: fault("checkpoint:posted"),
                on_freeze=freezes,
            )
        except BaseException:
            store.update_run(name, dumping=False)
            settle(store, name)  # the guest runs on (CRIU resumed it), or it died meanwhile
            raise
        fault("checkpoint:dumped")
        _commit(store, name, pend, running=leave_running)
        return meta


# A checkpoint under way (or cut short) of a guest: {"id", "new", "images", "pid",
# "start_time", "leave_running", "paused", "criu_freezes", "time", "criu_pid", "criu_start"}
# (see checkpoint); after a settle that found the guest's processes ended without a whole dump,
# {"lost": true, "time", "images"}: restore refuses those images (another image directory, say
# of a migration, is not older than the lost state).
PENDING = instance.CHECKPOINT_MARK


def _pending_path(store: Store, name: str) -> str:
    return os.path.join(store.dir(name), PENDING)


def _read_mark(path: str, damaged: dict[str, Any]) -> dict[str, Any] | None:
    """A mark's object (:data:`PENDING`, :data:`MIGRATING`, :data:`RECEIVING`); None if there is
    none, ``damaged`` if it cannot be read as one."""
    try:
        with open(path) as f:
            m = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        m = None
    return m if isinstance(m, dict) else damaged


def _read_pending(store: Store, name: str) -> dict[str, Any] | None:
    return _read_mark(_pending_path(store, name), {"lost": True, "time": None})


def _criu_alive(pend: dict[str, Any]) -> bool:
    """The CRIU of the checkpoint ``pend`` still runs (its berth was killed)."""
    return _runs(pend.get("criu_pid"), pend.get("criu_start"))


def _runs(pid: Any, start_time: Any) -> bool:
    """The process ``pid`` started at ``start_time`` (:func:`_proc_start`) runs, not a zombie."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    start = _proc_start(pid)
    if start is None or start != start_time:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def under_way(store: Store, name: str) -> bool:
    """A CRIU dump of ``name`` runs (its berth was killed), or a ``berth migrate`` of it: nothing
    of the guest to be touched."""
    pend = _read_pending(store, name)
    if pend and not pend.get("lost") and _criu_alive(pend):
        return True
    mig = _read_migrating(store, name)
    return bool(mig and (_runs(mig.get("by"), mig.get("by_start")) or _criu_alive(mig)))


CRIU_WAIT = 120.0  # seconds a command waits for the CRIU of a killed checkpoint to end


def _wait_criu(name: str, pend: dict[str, Any]) -> None:
    deadline = time.monotonic() + CRIU_WAIT
    while _criu_alive(pend):
        if time.monotonic() > deadline:
            raise StateError(
                f"guest {name!r}: a checkpoint of it is under way (CRIU pid {pend.get('criu_pid')}): try again later"
            )
        time.sleep(0.05)


def _drop_dir(path: str) -> None:
    """Remove a dump directory: renamed first (gone at once and whole: a berth.json never stays
    beside a dump half removed), then removed (:func:`berth.runtime.state.sweep` takes what a
    killed remover left)."""
    from berth.runtime import state as st

    st.remove_tree(path)


def _posted(images: str, dump_id: str) -> bool:
    """CRIU's post-dump step of the dump ``dump_id`` went on (berth.json written): CRIU may
    have ended the processes."""
    try:
        with open(os.path.join(images, "berth.json")) as f:
            return bool(json.load(f).get("dump_id") == dump_id)
    except (OSError, ValueError, AttributeError):
        return False


def _whole(images: str, dump_id: str) -> bool:
    """``images`` holds the whole dump ``dump_id`` and CRIU ended its processes: its berth.json
    is written at CRIU's post-dump step, once the images are whole, and CRIU writes stats-dump
    after it ended the processes (not when it resumes them, nor when killed before)."""
    return _posted(images, dump_id) and os.path.exists(os.path.join(images, "stats-dump"))


def _commit(store: Store, name: str, pend: dict[str, Any], *, running: bool) -> None:
    """The dump of ``pend`` becomes the guest's checkpoint (its lock held); ``running``: its
    processes run on (--leave-running)."""
    new, images = str(pend["new"]), str(pend["images"])
    if os.path.isdir(new):  # (else a settle after a crash in here: moved already)
        _replace_dir(new, images)
    if running:
        store.update_run(name, dumping=False)
    else:
        fault("checkpoint:committed")
        rec = store.update_run(
            name, pid=0, status="checkpointed", desired="stopped", checkpoint=images, dumping=False
        )
        instance.cleanup(store, name, rec)
    os.unlink(_pending_path(store, name))


def settle(store: Store, name: str, *, wait: bool = False, refuse: bool | None = None) -> list[str]:
    """Finish what a checkpoint of ``name`` killed half-way left (its lock held by the caller);
    what was done, for gc.  Its CRIU still runs (the berth that ran it was killed): nothing is
    touched, or with ``wait`` (a command that goes on with the guest) it is waited for first
    (:data:`CRIU_WAIT`; then :class:`StateError`).  Its processes run (CRIU resumed them, or
    the guest was started again): the new dump is dropped.  They ended and the dump is whole:
    it is committed as the checkpoint.  They ended, CRIU's post-dump step had gone on (CRIU may
    have ended them) but the dump is not whole: the new directory goes and :data:`PENDING`
    says the guest's last state is lost (:func:`restore` refuses an older checkpoint).  They
    ended before that step: CRIU did not end them (it resumes them when the step fails), the
    guest ran on and ended on its own: the new dump is dropped.  Also removes the
    ``.checkpoint.new-*``/``.checkpoint.old-*`` directories a killed checkpoint left, and
    settles a migration cut short first (:func:`settle_migration`)."""
    from berth.runtime import state as st

    done = settle_receive(store, name, refuse=wait if refuse is None else refuse)
    if not os.path.isdir(store.dir(name)):
        return done  # a receive cut short before its commit: the guest went
    done += settle_migration(store, name, wait=wait, refuse=refuse)
    pend = _read_pending(store, name)
    if pend is not None and not pend.get("lost"):
        if _criu_alive(pend):
            if not wait:
                return []  # under way: its directories are CRIU's
            _wait_criu(name, pend)
        new, images, dump_id = str(pend.get("new") or ""), str(pend.get("images") or ""), str(pend.get("id"))
        alive = st.alive({"pid": pend.get("pid") or 0, "berth": {"start_time": pend.get("start_time")}})
        rec = store.read_run(name)
        if (
            alive
            or instance.running(rec)
            or not (_posted(new, dump_id) or (not os.path.lexists(new) and _posted(images, dump_id)))
        ):
            if alive:
                _unstick(store, name, rec, pend, new)
            if new:
                _drop_dir(new)
            store.update_run(name, dumping=False)
            os.unlink(_pending_path(store, name))
            why = "the guest runs" if alive or instance.running(rec) else "the guest ended on its own"
            done.append(f"dropped the checkpoint of {name} cut short ({why})")
        elif new and (_whole(new, dump_id) or (not os.path.lexists(new) and _whole(images, dump_id))):
            _commit(store, name, pend, running=False)
            done.append(f"committed the checkpoint of {name} cut short after its dump")
        else:
            if new:
                _drop_dir(new)
            store.update_run(name, dumping=False)
            atomic_write(
                _pending_path(store, name),
                json.dumps({"lost": True, "time": pend.get("time"), "images": images}),
                durable=False,
            )
            done.append(f"checkpoint of {name} cut short after the guest ended: its last state is lost")
    gdir = store.dir(name)
    for entry in os.listdir(gdir) if os.path.isdir(gdir) else []:
        if entry.startswith((".checkpoint.new-", ".checkpoint.old-")):
            _drop_dir(os.path.join(gdir, entry))
            done.append(f"removed {os.path.join(gdir, entry)}")
    if os.path.isdir(gdir):
        done += [f"removed {p}" for p in st.sweep(gdir)]
    return done


# A migration under way (or cut short) of a guest, in its directory: {"id" (the dump's, in its
# berth.json), "images", "to", "pid", "start_time" (the guest's init), "by", "by_start" (the
# berth migrate's process), "criu_pid", "criu_start", "committed", "time"} (see migrate).
MIGRATING = instance.MIGRATE_MARK


def _migrating_path(store: Store, name: str) -> str:
    return os.path.join(store.dir(name), MIGRATING)


def _read_migrating(store: Store, name: str) -> dict[str, Any] | None:
    return _read_mark(_migrating_path(store, name), {})


def _mark_migrating(store: Store, name: str, mig: dict[str, Any]) -> None:
    atomic_write(_migrating_path(store, name), json.dumps(mig))


def _unmark_migrating(store: Store, name: str) -> None:
    try:
        os.unlink(_migrating_path(store, name))
    except FileNotFoundError:
        pass


def settle_migration(store: Store, name: str, *, wait: bool = False, refuse: bool | None = None) -> list[str]:
    """Finish what a ``berth migrate`` of ``name`` killed half-way left (its lock held by the
    caller); what was done.  The migrate still runs: nothing is touched, or with ``refuse``
    (by default ``wait``: a command that goes on with the guest, start, stop) a
    :class:`StateError` says so.  Its CRIU still dumps: as :func:`settle`.  Then, by what the
    mark and the guest's processes say:

    - the destination was told to keep the guest (``committed``): it runs there; the copy here
      stays, stopped (``migrated_to`` in its record), for ``berth destroy``;
    - the guest's processes run (the dump failed or was cut short: CRIU resumed them): the guest
      runs on here;
    - they ended with the dump whole: nothing was committed, so the destination dropped (or
      drops, when its stream ends) what it received, and the guest is restored here from the
      images, its processes as they were;
    - they ended without a whole dump: its last state is lost; it is stopped.

    The images go (kept, and named in the error, only when the restore here fails)."""
    from berth.runtime import state as st

    mig = _read_migrating(store, name)
    if mig is None:
        return []
    to = mig.get("to") or "?"
    if _runs(mig.get("by"), mig.get("by_start")):
        if wait if refuse is None else refuse:
            raise StateError(f"guest {name!r} is being migrated to {to} (berth migrate, pid {mig['by']})")
        return []
    if _criu_alive(mig):
        if not wait:
            return []
        _wait_criu(name, mig)
    images, dump_id = str(mig.get("images") or ""), str(mig.get("id") or "")
    rec = store.read_run(name)
    # (its record too: a damaged mark names no init, and a guest that runs is never taken down)
    alive = st.alive({"pid": mig.get("pid") or 0, "berth": {"start_time": mig.get("start_time")}})
    alive = alive or instance.running(rec)
    keep = False
    try:
        if mig.get("committed") and not alive:
            rec = store.update_run(
                name, pid=0, status="stopped", desired="stopped", migrated_to=to, dumping=False
            )
            instance.cleanup(store, name, rec)
            if mig.get("acked"):
                return [f"{name} runs at {to}: its migration there was cut short after {to} kept it; "
                        f"the copy here is stopped (berth destroy {name} removes it)"]  # fmt: skip
            keep = True  # told to keep it, but it did not say it did: it may run there, or nowhere
            return [unconfirmed(name, to, images)]
        if alive:
            _unstick(store, name, rec, mig, images)  # CRIU's lock table, its freeze
            store.update_run(name, dumping=False)
            return [f"dropped the migration of {name} to {to} cut short (the guest runs on here)"]
        instance.cleanup(store, name, rec)  # the dumped guest's container, cgroup and network
        store.update_run(name, pid=0, status="stopped", dumping=False)
        if not (images and dump_id and _whole(images, dump_id)):
            store.update_run(name, desired="stopped")
            return [f"migration of {name} to {to} cut short after the guest ended: its last state is lost"]
        try:
            _restore_locked(store, name, images, criu=_criu(store))
        except BaseException as e:
            keep = True
            store.update_run(name, desired="stopped")
            raise StateError(
                f"guest {name!r}: its migration to {to} was cut short and restoring it here failed: "
                f"{e or type(e).__name__}; its images are in {images}"
            ) from e
        _nudge_guestd(store, name)
        return [f"restored {name} here: its migration to {to} was cut short before it was committed"]
    finally:
        if not keep and images and os.path.basename(images).startswith(f".migrate-{name}-"):
            shutil.rmtree(images, ignore_errors=True)
        _unmark_migrating(store, name)


# A guest received here whose sender has not committed it yet, in its directory (placed with
# it): {"by", "by_start" (the receive's worker), "committed", "time"} (see _receive_one).
RECEIVING = instance.RECEIVE_MARK


def _receiving_path(store: Store, name: str) -> str:
    return os.path.join(store.dir(name), RECEIVING)


def _mark_receiving(path: str, committed: bool) -> None:
    me = {
        "by": os.getpid(),
        "by_start": _proc_start(os.getpid()),
        "committed": committed,
        "time": time.time(),
    }
    atomic_write(path, json.dumps(me), durable=False)


def settle_receive(store: Store, name: str, *, refuse: bool = False) -> list[str]:
    """What a receive of ``name`` killed with its ``berth receive`` left (its lock held by the
    caller): the guest, restored, goes unless its sender had committed it (the sender resumes
    it there: it runs on one host); what was done.  The receive still runs: nothing is touched,
    or with ``refuse`` a :class:`StateError` says so."""
    mark = _read_mark(_receiving_path(store, name), {})
    if mark is None:
        return []
    if _runs(mark.get("by"), mark.get("by_start")):
        if refuse:
            raise StateError(f"guest {name!r} is being received (berth receive, pid {mark['by']})")
        return []
    if mark.get("committed"):
        os.unlink(_receiving_path(store, name))
        return []
    _undo(store, name)
    return [f"dropped {name}: its receive here was cut short before its sender committed it"]


def drop_migration(store: Store, name: str) -> None:
    """The mark and images a ``berth migrate`` of ``name`` cut short left, dropped (its lock
    held by the caller: the guest is being destroyed); refused while that migrate runs."""
    mig = _read_migrating(store, name)
    if mig is None:
        return
    if _runs(mig.get("by"), mig.get("by_start")) or _criu_alive(mig):
        raise StateError(
            f"guest {name!r} is being migrated to {mig.get('to') or '?'} (berth migrate, pid {mig.get('by')})"
        )
    images = str(mig.get("images") or "")
    if images and os.path.basename(images).startswith(f".migrate-{name}-"):
        shutil.rmtree(images, ignore_errors=True)
    _unmark_migrating(store, name)


def _settle_own(store: Store, name: str, mig: dict[str, Any]) -> list[str]:
    """:func:`settle_migration` by the berth migrate that made the mark ``mig`` (ending it)."""
    mig.update(by=0)
    _mark_migrating(store, name, mig)
    return settle_migration(store, name)


def unconfirmed(name: str, to: str, images: str) -> str:
    """What a migration whose destination was told to keep the guest but did not confirm it
    leaves: the copy here stopped, the images kept."""
    return (
        f"{to} was told to keep {name} but did not confirm it: check whether it runs there; the "
        f"copy here is stopped, its images are in {images} (berth restore {name} --image {images})"
    )


def _unstick(store: Store, name: str, rec: dict[str, Any], pend: dict[str, Any], new: str) -> None:
    """What a CRIU killed while the guest's processes were stopped left on a guest that runs
    on: its connection lock table, its cgroup frozen.  Thawed only if :func:`thaws_criu_freeze`."""
    from berth.runtime import checkpoint as ck

    if new and os.path.isdir(new):
        ck.drop_lock_table(new)
    if rec.get("cgroup") and thaws_criu_freeze(pend, _recorded_status(store, name)):
        from berth.cgroups import open_cgroup

        try:
            cg = open_cgroup(str(rec["cgroup"]))
            if cg.frozen():
                cg.thaw()
        except (BerthError, OSError):
            pass


def thaws_criu_freeze(pend: dict[str, Any], recorded: str | None) -> bool:
    """Is a frozen cgroup of a guest whose checkpoint ``pend`` was cut short CRIU's freeze, to
    be thawed?  Only if CRIU was told to freeze it (``criu_freezes``; a mark of an older berth
    has no such key: it may have), the guest was not paused before the checkpoint
    (``paused``), and its runtime state does not say an operator paused it since
    (``recorded``: ``berth-runtime pause`` writes "paused"; CRIU's freeze leaves "running").
    A hand-written ``cgroup.freeze`` of a guest whose CRIU froze it cannot be told apart."""
    from berth.runtime import state as st

    return bool(pend.get("criu_freezes", True)) and not pend.get("paused") and recorded != st.PAUSED


def _recorded_status(store: Store, name: str) -> str | None:
    """The status the guest's runtime state records (not the one its cgroup shows)."""
    from berth.runtime import state as st

    try:
        return str(st.read(store.state_root, name).get("status"))
    except (BerthError, OSError):
        return None


def _drop_stale(images: str) -> None:
    """The new and old directories a killed checkpoint into ``images`` left beside it (the
    guest's lock held: no dump of it is under way; a pending one was settled)."""
    from berth.runtime import state as st

    top, base = os.path.split(images)
    for entry in os.listdir(top):
        if entry.startswith((f".{base}.new-", f".{base}.old-")):
            _drop_dir(os.path.join(top, entry))
    st.sweep(top)


def lost(store: Store, name: str, images: str | None = None) -> bool:
    """A checkpoint of ``name`` (into ``images``; None: any) was cut short after its processes
    ended (:func:`settle`)."""
    pend = _read_pending(store, name)
    if not (pend and pend.get("lost")):
        return False
    at = pend.get("images")
    return images is None or not at or os.path.abspath(images) == os.path.abspath(str(at))


def _replace_dir(new: str, path: str) -> None:
    """``new`` (a directory beside ``path``) becomes ``path``; what was there goes."""
    old = None
    if os.path.lexists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
        os.rename(path, os.path.join(old, "x"))
    os.rename(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _dump(
    store: Store,
    name: str,
    spec: dict[str, Any],
    c: Any,
    images: str,
    criu: str | None,
    dump_id: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """CRIU dump of a guest as berth restores it: its netns, tmpfs and cgroup rebuilt by berth, its
    address recorded (and ``dump_id`` in berth.json: :func:`settle` knows its own dump)."""
    from berth.runtime import checkpoint as ck

    return ck.dump(  # type: ignore[no-any-return]
        c,
        images,
        resources=(spec["spec"].get("linux") or {}).get("resources"),
        criu=criu,
        external_netns=True,
        own_tmpfs=True,
        cgroup_props=False,
        extra={"net": _address(store, name, spec, c.pid), **({"dump_id": dump_id} if dump_id else {})},
        **kw,
    )


def restore(store: Store, name: str, images: str, *, criu: str | None = None, stale: bool = False) -> int:
    """Restore guest ``name`` from ``images``; its init's pid.  A checkpoint cut short first
    settled (:func:`settle`); if it left the guest's last state lost, refused unless ``stale``
    (any earlier checkpoint is older than that state)."""
    store.require(name)
    with store.lock(name):
        settle(store, name, wait=True)
        rec = store.read_run(name)
        if instance.running(rec):
            raise StateError(f"guest {name!r} is running: stop it before restoring a checkpoint")
        if lost(store, name, images) and not stale:
            raise StaleError(
                f"guest {name!r}: its last checkpoint was cut short after its processes ended: "
                "an earlier checkpoint is older than its last state (berth restore --stale to restore it anyway)"
            )
        instance.cleanup(store, name, rec)
        pid = _restore_locked(store, name, images, criu=criu)
        if lost(store, name):
            os.unlink(_pending_path(store, name))
    _tell_guestd(store, name)
    return pid


def _restore_locked(
    store: Store,
    name: str,
    images: str,
    *,
    criu: str | None = None,
    netns: Any = None,
    plugged_peer: dict[str, Any] | None = None,
    foreign: bool = False,
    timings: dict[str, float] | None = None,
) -> int:
    """Restore ``name`` from ``images`` (its lock held); its init's pid.  ``netns``: a
    :class:`berth.runtime.checkpoint.NetnsHolder` made ahead for it (the receiver makes one
    while the images arrive: not in the downtime), closed by the caller.  ``plugged_peer``: the
    veth the receiver made ahead for a handed-off network ({"ip", "peer"}: :func:`_preplug`),
    used when the checkpoint's address is that one (torn down with the guest on failure).
    The restored processes are checked against the guest's spec before they run
    (:mod:`berth.runtime.ckverify`; ``timings["verify"]``: the check's seconds).  ``foreign``:
    the images come from another host (a receive): only a connection lock table this restore
    made is dropped."""
    from berth.runtime import checkpoint as ck

    spec = _spec(store, name)
    if os.path.exists(store.image(name)):
        raise StateError(f"guest {name!r}: restoring a guest with a --disk image is not supported yet")
    upper, work = store.layer(name, False)
    overlay = {"lower": spec["lower"], "upper": upper, "work": work}
    log = store.log(name)

    def reopen(f: dict[str, Any]) -> str:
        path = str(f["path"])
        if path.endswith("/console.log"):
            return log
        # A harmless device (not any path under /dev: /dev/sda, /dev/../etc/shadow, /dev/tty).
        if safe_reopen_path(path):
            return path
        raise StateError(f"guest {name!r}: its checkpoint holds the host file {path!r} open")

    net_opts = config.net_from_dict(spec.get("net"))
    program = _seccomp_program(spec["spec"], os.path.join(store.root, "cache", "seccomp"))
    meta = ck.read_meta(images)
    _check_delegation(name, spec, meta)
    _check_userns(name, spec, meta)
    _check_scope(name, spec, meta)
    _check_filter_flags(name, images, program)
    bridged = net_opts is not None and net_opts.mode == "bridge"
    # A guest in its own user namespace: CRIU dumped its network namespace and makes it again
    # inside the guest's new user namespace; berth makes the veth and hands its guest end over.
    handoff = bridged and not meta.get("netns_external")
    had = meta.get("net") if isinstance(meta.get("net"), dict) else {}
    holder = None
    netns_fd = None
    plugged = False
    criu_args: list[str] = []
    cgroup_dir: list[str | None] = [None]
    on_cgroup = None
    if net_opts is not None and net_opts.mode == "ip":
        ip_opts = net_opts

        def on_cgroup(cg: Any) -> None:
            # The guest's addresses (added here if the host lacks them: its restored sockets
            # bind them) and its filter on the new cgroup, before any of its processes exist.
            nonlocal plugged
            plugged = True
            cgroup_dir[0] = cg.unified_dir()
            instance.net().setup(_Plug(name, os.getpid(), cg), ip_opts, store.root)

    try:
        if bridged:
            # Its network first, with the address it had (same subnet here), in a namespace
            # CRIU then puts the processes into: their sockets find their address in place.
            from dataclasses import replace

            assert net_opts is not None
            net_opts = replace(net_opts, ip=had.get("ip") or net_opts.ip, ip6=had.get("ip6") or net_opts.ip6)
            plugged = True
            if handoff:
                if not had.get("ifname"):
                    raise StateError(f"guest {name!r}: its checkpoint names no veth of its network namespace")
                import re

                if not isinstance(had["ifname"], str) or not re.fullmatch(
                    r"[\w.-]{1,15}", had["ifname"], re.ASCII
                ):
                    raise StateError(
                        f"guest {name!r}: its checkpoint's net.ifname {had['ifname']!r} is not an interface name"
                    )
                if plugged_peer is not None and plugged_peer.get("ip") == had.get("ip"):
                    got = plugged_peer
                else:
                    if plugged_peer is not None:  # made for another address: made again
                        instance.net().teardown(name, net_opts, store.root)
                    got = instance.net().setup(_Plug(name, os.getpid()), net_opts, store.root, handoff=True)
                criu_args = ["--external", f"netdev[{had['ifname']}]:{got['peer']}"]
            else:
                holder = ck.NetnsHolder() if netns is None else None
                instance.net().setup(_Plug(name, (holder or netns).pid), net_opts, store.root)
                netns_fd = (holder or netns).fd()
        elif netns is not None and meta.get("netns_external"):
            netns_fd = netns.fd()
        c = ck.restore(
            store.state_root,
            name,
            images,
            cgroup_path=f"{store.cgroup_parent}/{name}",
            overlay=overlay,
            resources=(spec["spec"].get("linux") or {}).get("resources"),
            reopen=reopen,
            bundle=store.dir(name),
            criu=criu,
            netns_fd=netns_fd,
            criu_args=criu_args,
            on_cgroup=on_cgroup,
            binds=[m["source"] for m in _bind_mounts(spec["spec"])],
            spec=spec["spec"],  # its CPU request admitted on this host, as at a start
            # Checked before they run, a local checkpoint too (its directory is the caller's).
            # (A local restore by a berth itself under seccomp, in a container, cannot read the
            # filters, EACCES: its contents go unchecked there; a receive is refused instead.)
            verify=_verifier(spec["spec"], timings, program if foreign or not _own_seccomp() else None),
            own_lock_only=foreign,
            seccomp_program=program,
        )
        if plugged:
            instance.net().adopt(store.root, name, net_opts, c.pid)
    except BaseException:
        if plugged and net_opts is not None:
            try:
                instance.net().teardown(name, net_opts, store.root, cgroup_dir=cgroup_dir[0])
            except (BerthError, OSError):
                pass
        raise
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
        if holder is not None:
            holder.close()
    rec = store.read_run(name)
    rec.update(
        status="running",
        desired="running",
        pid=c.pid,
        start_time=c.data["berth"]["start_time"],
        started_at=time.time(),
        cgroup=c.data["berth"]["cgroup"],
        store=store.root,
        cgroup_parent=store.cgroup_parent,
        loop="",
        restored_from=images,
        net=config.net_to_dict(net_opts),
    )
    rec.pop("checkpoint", None)
    store.write_run(name, rec)
    return c.pid


def _seccomp_program(spec: dict[str, Any], cache: str) -> bytes | None:
    """The seccomp program berth builds here for ``spec``'s profile (None: it has none), from
    the store's cache as a start takes it: a local restore compares with the very bytes the
    guest's start loaded."""
    profile = (spec.get("linux") or {}).get("seccomp")
    if not profile:
        return None
    from berth.linux.seccomp import compiled

    return compiled(profile, cache)


def _check_filter_flags(name: str, images: str, program: bytes | None) -> None:
    """The seccomp filters' flags in the images (CRIU restores them as they are): berth's own
    filter (``program``: the spec has one) with none but TSYNC, the guest's with no flag a dump
    never records (:func:`berth.runtime.ckverify.image_flags_mismatch`)."""
    from berth.runtime import ckverify

    why = ckverify.image_flags_mismatch(images, program is not None)
    if why:
        raise StateError(f"guest {name!r}: the checkpoint is not what its spec here gives it: {why}")


def _own_seccomp() -> bool:
    """Whether this process runs under seccomp (the kernel refuses it PTRACE_SECCOMP_GET_FILTER)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            return any(line.split()[1:2] not in (["0"], []) for line in f if line.startswith("Seccomp:"))
    except OSError:
        return False


def _verifier(
    spec: dict[str, Any], timings: dict[str, float] | None = None, program: bytes | None = None
) -> Any:
    """The check of a restored guest's tasks against ``spec`` (built here; for a local restore
    the guest's own spec.json, as its last start built it), each thread's oldest seccomp
    filter against ``program`` (:func:`_seccomp_program`); its time goes into
    ``timings["verify"]``."""
    from berth.runtime import ckverify

    want = ckverify.expect(spec, program)

    def verify(init: int, pids: list[int]) -> None:
        t0 = time.monotonic()
        try:
            ckverify.verify(init, pids, want)
        except StateError as e:
            raise StateError(f"the restored guest is not what its spec here gives it: {e}") from None
        finally:
            if timings is not None:
                timings["verify"] = time.monotonic() - t0

    return verify


# What a restored guest may get back reopened from this host: berth.runtime.checkpoint's list,
# by exact name (never a terminal: /dev/tty, /dev/ptmx are the receiving admin's).
REOPEN_DEVICES = ck_reopen_devices


def safe_reopen_path(path: str) -> bool:
    """Whether a checkpoint's open file ``path`` may be reopened on this host for the restored
    guest: exactly one of :data:`REOPEN_DEVICES`, a character device of its usual number (lstat:
    not a symlink); the opener adds ``O_NOCTTY`` all the same."""
    from berth.runtime.checkpoint import safe_reopen

    if not isinstance(path, str):
        return False
    try:
        safe_reopen({"path": path})
    except StateError:
        return False
    return True


def _bind_mounts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        m
        for m in spec.get("mounts") or []
        if isinstance(m, dict)
        and isinstance(m.get("source"), str)
        and (m.get("type") == "bind" or {"bind", "rbind"} & set(m.get("options") or []))
    ]


def _check_userns(name: str, spec: dict[str, Any], meta: dict[str, Any]) -> None:
    """A checkpoint's user namespace (whose root gets the image files, and maps the restored
    processes) must be the guest's own: the images may come from another host, or have been
    altered."""
    from berth.runtime import ckuserns

    rng = incoming_ids(spec)
    userns = meta.get("userns")
    if userns:
        try:
            roots = {ckuserns._host_id(userns["uid_map"]), ckuserns._host_id(userns["gid_map"])}
        except (KeyError, TypeError, ValueError, AttributeError):
            roots = set()
        if rng is None or roots != {rng[0]}:
            raise StateError(f"guest {name!r}: its checkpoint's user namespace is not the guest's own")
    elif rng is not None:
        raise StateError(f"guest {name!r}: its checkpoint has no user namespace; the guest has one")


def _check_delegation(name: str, spec: dict[str, Any], meta: dict[str, Any]) -> None:
    """A checkpoint's cgroup delegation must name the guest's own mapped root (the images may
    come from another host: they hand cgroups to no one else)."""
    deleg = meta.get("delegated")
    if not deleg:
        return
    rng = incoming_ids(spec)
    if rng is None or not isinstance(deleg, dict) or (deleg.get("uid"), deleg.get("gid")) != (rng[0], rng[0]):
        raise StateError(f"guest {name!r}: its checkpoint delegates the cgroup to ids not the guest's own")


def _check_scope(name: str, spec: dict[str, Any], meta: dict[str, Any]) -> None:
    """A guest whose spec asks for a Landlock scope this kernel has (berth.runtime.scope) is not
    restored from a checkpoint made without one (by an older berth, or another host's without
    Landlock): CRIU would give its processes back unscoped, and nothing can scope them later."""
    from berth.runtime import scope

    asked = scope.wanted((spec.get("spec") or {}).get("annotations"))
    if not asked:
        return
    from berth.linux.landlock import abi_version

    scopes, _why = scope.decide(asked, abi_version())
    state = meta.get("state") if isinstance(meta.get("state"), dict) else {}
    if scopes and scope.applied(state) != scopes:
        raise StateError(
            f"guest {name!r}: its checkpoint was made without the Landlock scope its spec gives it "
            f"({scope.names(scopes)}: a checkpoint of an older berth's); CRIU would restore it unscoped and "
            "nothing can scope it later: start the guest afresh instead"
        )


class _Plug:
    """What berth.net's setup needs of a container: its id, a pid in its network namespace (the
    holder's or the restoring process's, until the restored init takes over) and its cgroup
    (ip: mode's filter goes there)."""

    def __init__(self, name: str, pid: int, cg: Any = None) -> None:
        self.id, self.pid, self.cg = name, pid, cg

    def cgroup(self) -> Any:
        return self.cg


def _address(store: Store, name: str, spec: dict[str, Any], pid: int) -> dict[str, Any]:
    """The running guest's bridge address ({"ip", "ip6", "ifname"}), kept with its checkpoint;
    ``ifname``: what its veth end is called inside (eth0 unless the guest renamed it)."""
    opts = config.net_from_dict(spec.get("net"))
    if opts is None or opts.mode != "bridge":
        return {}
    try:
        with open(os.path.join(store.root, "net", f"{opts.bridge}.json"), encoding="utf-8") as f:
            rec = json.load(f).get("active", {}).get(name) or {}
    except (OSError, ValueError):
        return {}
    out = {"ip": rec.get("ip"), "ip6": rec.get("ip6")}
    if rec.get("veth"):
        from berth.net import veth

        out["ifname"] = veth.peer_name(pid, rec["veth"])
    return out


def _tell_guestd(store: Store, name: str) -> None:
    """guestd re-reads the record when a worker for ``name`` ends: ask for a no-op one."""
    try:
        client.receive(
            client.send(store, {"op": "exited", "name": name, "pid": -1, "code": None}), timeout=30
        )
    except (BerthError, OSError):
        pass  # guestd adopts every running guest when it starts


def _nudge_guestd(store: Store, name: str, *, start: bool = True) -> None:
    """:func:`_tell_guestd` without waiting for its answer: for a caller holding the guest's
    lock, which guestd's worker for the request waits for (guestd's own exit worker, too).
    ``start=False``: only if guestd runs (nothing is started or waited for)."""
    try:
        client.send(store, {"op": "exited", "name": name, "pid": -1, "code": None}, start=start).close()
    except (BerthError, OSError):
        pass  # guestd adopts every running guest when it starts


# -- the stream (berth.guests.transfer) ----------------------------------------------------------
def _scratch(store: Store, prefix: str) -> str:
    """A private directory for CRIU images: in /dev/shm when it is a tmpfs (memory: the images
    are written and read back during the downtime), else in the store."""
    try:
        with open("/proc/self/mounts") as f:
            shm = any(ln.split()[1:3] == ["/dev/shm", "tmpfs"] for ln in f)
    except OSError:
        shm = False
    if shm and os.access("/dev/shm", os.W_OK):
        return tempfile.mkdtemp(prefix=prefix, dir="/dev/shm")
    os.makedirs(store.guests, 0o711, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=store.guests)


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError("ADDR:PORT", f"{text!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - receive --listen :PORT means all


def read_token(path: str) -> bytes:
    """The shared token in ``path`` (surrounding whitespace removed); it must not be empty."""
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise UsageError("--token-file", f"{path}: {e.strerror}") from None
    if not token:
        raise UsageError("--token-file", f"{path}: empty")
    return token


def _mac(token: bytes, *parts: bytes) -> str:
    return hmac.new(token, b"".join(parts), hashlib.sha256).hexdigest()


def _final_digest(s: Stream, token: bytes | None, nonce: bytes) -> str:
    digest = s.sha.hexdigest()
    return _mac(token, nonce, digest.encode()) if token else digest


# -- sender ------------------------------------------------------------------------------------
def migrate(
    store: Store,
    name: str,
    to: str,
    *,
    live: bool = True,
    criu: str | None = None,
    timeout: float = 120.0,
    token: bytes | None = None,
) -> dict[str, float]:
    """Move the running guest ``name`` to the receiver at ``to``; timings in seconds.

    The guest is destroyed here only after the receiver reported it running; on any failure
    before that, it runs here again (restored from the local images if it had been dumped).
    ``token``: the receiver's shared token (see the module's notes)."""
    from berth.runtime import checkpoint as ck

    store.require(name)
    # Found (and checked with 'criu check') now, not after the freeze below.
    criu = criu or _criu(store)
    t0 = time.monotonic()
    times: dict[str, float] = {}
    with open(store.config(name)) as f:
        cfg_text = f.read()
    with open(os.path.join(store.dir(name), "spec.json")) as f:
        spec_text = f.read()
    # Its address now, for the destination to plug its veth in before the freeze.
    pid = int(store.read_run(name).get("pid") or 0)
    if pid:
        try:
            running = _running_container(store, name)[0]
        except (StateError, OSError):
            running = None  # refused with its reason below
        if running is not None:
            ck.refuse_scoped(running.data, name)  # before the receiver is bothered
    net_now = _address(store, name, json.loads(spec_text), pid) if pid else {}
    sock = socket.create_connection(parse_addr(to), timeout=timeout)
    sock.settimeout(timeout)
    s = Stream(sock)
    images = _scratch(store, f".migrate-{name}-")
    dumped = False
    mig: dict[str, Any] = {}  # the mark (settle_migration), once the dump is about to start
    try:
        if struct.unpack(">Q", s._exact(8))[0] != NONCE_BYTES:
            raise BerthError(f"migrate {name}: {to} is not a berth receiver (or an older one)")
        nonce = s._exact(NONCE_BYTES)
        sock.sendall(MAGIC)
        auth = _mac(token, nonce) if token else None
        s.send_json(
            {"name": name, "config": cfg_text, "spec": spec_text, "live": live, "auth": auth, "net": net_now}
        )
        verdict = s.recv_json()
        if not verdict.get("ok"):
            raise BerthError(f"migrate {name}: the destination refused: {verdict.get('error')}")
        upper, _work = store.layer(name, False)
        before = None
        if live:
            why = ck.can_pre_dump(criu)
            s.send_json({"precopy": "upper", "memory": why is None, "why": why})
            # What was sent, each entry's stat as read: what changed since, or was skipped, goes again.
            before = transfer.send_tree(s, {"upper": upper})["upper"]
            times["precopy"] = time.monotonic() - t0
        t_freeze = time.monotonic()
        with store.lock(name):
            c, _rec = _running_container(store, name)
            spec = json.loads(spec_text)
            # The page files go while CRIU writes them: the dump and the transfer overlap.
            s.send_json({"final": True, "delta": before is not None})
            tail = transfer.Tail(s, images, "images")
            pump = threading.Thread(target=tail.run, daemon=True)
            pump.start()
            # Marked before CRIU runs: whatever point this command is killed at from here, the
            # next command on the guest finds it running on one host (settle_migration).
            mig.update(
                {
                    "id": os.urandom(8).hex(),
                    "images": images,
                    "to": to,
                    "pid": c.pid,
                    "start_time": (c.data.get("berth") or {}).get("start_time"),
                    "by": os.getpid(),
                    "by_start": _proc_start(os.getpid()),
                    "paused": c.status() == "paused",
                    "criu_freezes": False,
                    "committed": False,
                    "time": time.time(),
                }
            )
            _mark_migrating(store, name, mig)

            def spawned(pid: int) -> None:  # a migrate killed from here on leaves CRIU at work
                mig.update(criu_pid=pid, criu_start=_proc_start(pid))
                _mark_migrating(store, name, mig)
                fault("migrate:spawned")

            def freezes() -> None:
                mig.update(criu_freezes=True)
                _mark_migrating(store, name, mig)

            # The record says "running" until the dump is whole (as checkpoint's): a migrate
            # killed during it leaves a guest that runs on and is seen to, not one gc cleans up.
            store.update_run(name, dumping=True)  # exec and kill wait (instance.dumping)
            try:
                meta = _dump(
                    store, name, spec, c, images, criu, dump_id=mig["id"], on_spawn=spawned, on_freeze=freezes
                )
            except BaseException:
                tail.stop()
                pump.join()
                store.update_run(name, dumping=False)
                # The guest runs on (CRIU resumed it), or its processes ended without a whole dump.
                _settle_own(store, name, mig)
                raise
            finally:
                tail.stop()
            dumped = True
            store.update_run(name, pid=0, status="migrating", dumping=False)  # guestd's exit worker: not ours
            fault("migrate:dumped")
            times["dump"] = time.monotonic() - t_freeze
            # Of which CRIU by its own log, and berth's copy of the tmpfs mounts.
            times["dump_criu"] = _criu_seconds(os.path.join(images, "dump.log"))
            times["dump_tmpfs"] = float(meta.get("tmpfs_seconds") or 0.0)
            # The guest is gone: its upper layer no longer changes.  Its cgroup, network and
            # state go once the images are on their way (not part of the downtime).
            try:
                pump.join()
                if tail.error is not None:
                    raise tail.error
                tail.pump()
                transfer.send_tree(s, {"images": images}, skip=tail.sent)
                only, remove = transfer.delta(upper, before) if before is not None else (None, [])
                s.send_json({"remove": remove})
                transfer.send_tree(s, {"upper": upper}, only=only)
                s.send(_final_digest(s, token, nonce).encode(), hashed=False)
                times["sent"] = time.monotonic() - t_freeze
                fault("migrate:sent")
            finally:
                ck.forget(c)
                store.update_run(name, status="migrating", desired="stopped")
                instance.cleanup(store, name, store.read_run(name))
        result = s.recv_json()
        if not result.get("ok"):
            raise BerthError(f"migrate {name}: the destination failed: {result.get('error')}")
        times["downtime"] = time.monotonic() - t_freeze
        for k, v in (result.get("times") or {}).items():
            times[f"dest_{k}"] = float(v)
        # The guest runs on the destination, which keeps it once told to (the COMMIT) and says
        # so: marked first, so a migrate killed from here on does not restore it here too (the
        # copy here stays stopped: settle_migration).
        mig.update(committed=True)
        _mark_migrating(store, name, mig)
        dumped = False
        try:
            s.send_json({"commit": True})
            answer: dict[str, Any] | None = s.recv_json()
        except (BerthError, OSError, ValueError):
            answer = None
        if answer is not None and answer.get("kept") is not True:
            # It dropped the guest (its answer to a failure after the RESULT): resumed here.
            mig.update(committed=False)
            _mark_migrating(store, name, mig)
            dumped = True
            raise BerthError(f"migrate {name}: the destination failed: {answer.get('error')}")
        if answer is None:
            with store.lock(name):
                why = _settle_own(store, name, mig)  # (committed, not acknowledged)
            raise BerthError(f"migrate {name}: {why[0] if why else 'its destination did not answer'}")
        # Kept there: what is left here is this migrate's to remove (and, if it is killed now,
        # the next command's: the mark says so, and no longer names a migrate at work).
        mig.update(acked=True, by=0)
        _mark_migrating(store, name, mig)
        fault("migrate:committed")
        from berth.guests import lifecycle
        from berth.runtime import checkpoint as ck

        ck.drop_lock_table(images)  # CRIU's lock of its connections here: the restore there cannot lift it
        lifecycle.destroy(store, name, force=True)  # (its mark, and the images, go with it)
        times["total"] = time.monotonic() - t0
        times["bytes"] = float(s.sent)
        return times
    except BaseException as e:
        if dumped:
            # Resume here from our own images: the destination has nothing (or drops it when
            # the stream ends: it was not told to keep it).
            try:
                with store.lock(name):
                    _unmark_migrating(store, name)
                    _restore_locked(store, name, images, criu=criu)
                _tell_guestd(store, name)
            except BaseException as e2:
                raise BerthError(f"migrate {name}: {e}; and resuming it here failed: {e2}") from e
        if isinstance(e, (OSError, ConnectionError)) and not isinstance(e, BerthError):
            raise BerthError(f"migrate {name}: connection to {to} failed: {e}; the guest runs here") from e
        raise
    finally:
        sock.close()
        if not (mig.get("committed") and not mig.get("acked")):  # (else they stay: unconfirmed)
            shutil.rmtree(images, ignore_errors=True)


def _criu_seconds(log: str) -> float:
    from berth.runtime import criu as criu_mod

    return criu_mod.log_seconds(log) or 0.0


def _criu(store: Store) -> str:
    from berth.runtime import criu as criu_mod

    return criu_mod.find(store.root)


# -- receiver ----------------------------------------------------------------------------------
_HELLO_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "config": (str,),
    "spec": (str,),
    "live": (bool, type(None)),
    "auth": (str, type(None)),
    "net": (dict, type(None)),
}


def check_hello(hello: dict[str, Any]) -> None:
    """Each HELLO field of the type it must have (UsageError naming the field)."""
    for key, types in _HELLO_TYPES.items():
        if key not in hello and type(None) in types:
            continue
        if key not in hello:
            raise UsageError(key, "missing from the sender's HELLO")
        if not isinstance(hello[key], types):
            raise UsageError(key, f"the sender's HELLO gives a {type(hello[key]).__name__}")
    if len(hello["name"]) > 255:
        raise UsageError("name", f"the sender's guest name is {len(hello['name'])} characters long")


def validate_incoming(store: Store, hello: dict[str, Any], *, allow: frozenset[str] = frozenset()) -> str:
    """Check a migration request before anything is created; the guest's name.  ``allow``: the
    config keys (:data:`berth.guests.hostpower.FLAGS`) that may give the guest power over this
    host; any other such key is refused (:func:`berth.guests.hostpower.check`)."""
    from berth.rootfs import template

    name = check_name(str(hello.get("name", "")))
    if store.exists(name) or os.path.lexists(store.dir(name)):
        raise ExistsError(f"guest {name!r} exists already on this host")
    if _claim_holder(store, name) not in (None, os.getpid()):
        raise ExistsError(f"guest {name!r} is being received already")
    try:  # bounded (config.parse): a deep dotted key would take tomllib gigabytes
        cfg = config.parse(hello["config"], "config")
    except KeyError:
        raise UsageError("config", "the guest's config is missing") from None
    except config.ConfigError as e:
        raise UsageError("config", f"the guest's config is {e.reason}") from None
    config.validate(cfg, f"{name}: config")
    hostpower.check(cfg, allow)
    if "bridge" not in allow and str(cfg.get("net", "none")) == "bridge":
        hostpower.check_bridge(cfg, _default_bridge(), _bridges_made(store), allow)
    if cfg.get("disk"):
        raise UsageError("disk", "migrating a guest with a --disk image is not supported yet")
    try:
        spec = json.loads(hello["spec"])
    except ValueError as e:
        raise UsageError("spec", f"the guest's spec is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("spec"), dict):
        raise UsageError("spec", "missing")
    try:
        template.check_template_name(cfg["template"])  # a name, not a path out of the store
    except UsageError as e:
        raise UsageError("template", e.reason) from None
    if cfg["template"] not in template.TEMPLATES and not os.path.isdir(
        template.template_rootfs(store.root, cfg["template"])
    ):
        raise NotFoundError(f"template {cfg['template']!r} does not exist here")
    _criu(store)
    return name


def _default_bridge() -> tuple[str, str]:
    """This host's default bridge and its subnet (BERTH_BRIDGE, BERTH_SUBNET: what `berth
    create` gives a guest here)."""
    from berth.net import options

    opts = options.parse("none")
    return opts.bridge, opts.subnet


def _bridges_made(store: Store) -> dict[str, set[str]]:
    """The bridges berth made on this host (their file in the store's net/ says so: not a host
    bridge it only joined), each with the subnets its guests and gateways use."""
    import glob
    import ipaddress

    out: dict[str, set[str]] = {}
    for path in glob.glob(os.path.join(glob.escape(store.root), "net", "*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("bridge_made") is not True:
                continue
            nets = {str(r["subnet"]) for r in (data.get("leases") or {}).values() if r.get("subnet")}
            nets |= {str(ipaddress.ip_interface(a).network) for a in data.get("bridge_addrs") or []}
        except (OSError, ValueError, AttributeError, TypeError, KeyError):
            continue
        out[os.path.basename(path)[: -len(".json")]] = nets
    return out


def incoming_ids(spec: dict[str, Any]) -> tuple[int, int] | None:
    """The host id range (start, size) of an incoming guest's own user namespace (its spec's
    uid map, which must equal its gid map: the shape berth gives it); None: the host's ids."""
    linux = (spec.get("spec") or {}).get("linux") or {}
    namespaces = linux.get("namespaces") or [] if isinstance(linux, dict) else None
    if not isinstance(namespaces, list):
        raise UsageError("spec", "linux.namespaces is not a list")
    if not any(isinstance(n, dict) and n.get("type") == "user" for n in namespaces):
        return None
    uids, gids = linux.get("uidMappings") or [], linux.get("gidMappings") or []
    if not isinstance(uids, list) or len(uids) != 1 or uids != gids or not isinstance(uids[0], dict):
        raise UsageError("spec", "a user namespace's id map is not one range for uids and gids alike")
    if uids[0].get("containerID") != 0:
        raise UsageError(
            "spec", "a user namespace's id map is not one range from id 0 for uids and gids alike"
        )
    try:
        start, size = int(uids[0]["hostID"]), int(uids[0]["size"])
    except (KeyError, TypeError, ValueError):
        raise UsageError("spec", "a user namespace's id map has no valid hostID and size") from None
    if start <= 0 or size <= 0:
        raise UsageError("spec", f"the id map {start}:{size} is not a guest's range")
    return start, size


def _reserve_ids(store: Store, name: str, spec: dict[str, Any]) -> bool:
    """Reserve the incoming guest's id range in this store's pool, exactly as it had it (its
    upper layer's files are owned by those ids); UsageError if another guest here holds any of
    them.  Whether a range was reserved."""
    rng = incoming_ids(spec)
    if rng is None:
        return False
    from berth.guests import lifecycle
    from berth.runtime import userns

    lifecycle._check_reachable(store)
    userns.release(store.root, name)  # what a killed create or receive left under the name
    host = userns.HostIds.read(pool=userns.parse_pool(os.environ.get("BERTH_USERNS_POOL")))
    userns.allocate(store.root, name, rng, host)
    return True


def _release_ids(store: Store, name: str) -> None:
    from berth.runtime import userns

    userns.release(store.root, name)


def receive(
    store: Store,
    listen: str,
    *,
    build: Any,
    once: bool = True,
    ready: Any = None,
    token: bytes | None = None,
    allow: frozenset[str] = frozenset(),
) -> list[str]:
    """Accept migrations on ``listen`` (ADDR:PORT); the names of the guests received.  With
    ``token``, only from a sender that has it (HMAC of the stream's nonce).  ``build(store,
    name, config)``: the guest's spec (spec.json's object) built here from its validated config,
    as `berth start` builds it (the CLI's; the sender's own spec is not trusted: its mounts,
    lower layer, resources and network would be taken as they come).  ``allow``: the config
    keys that may give a guest power over this host (:mod:`berth.guests.hostpower`: a config
    asking for any other is refused before anything is made).

    Each connection is served by a forked worker; if the worker dies (killed, crashed), this
    process removes what it staged or placed, so the destination keeps nothing.  Once
    (``once``): the first sender that authenticated and sent a valid HELLO decides when its
    worker ends; workers of other authenticated senders then in flight are waited for (up to
    :data:`DRAIN_SECONDS`), those of peers that have not authenticated are ended.  A stray
    connection (a scan, a stalled, garbled or unauthenticated peer) does not end it."""
    import select
    import signal

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # through the cleanup below: no worker outlives us

    signal.signal(signal.SIGTERM, stop)
    # A signal that comes just before the select below would wait for the next connection to be
    # handled (Python runs handlers between bytecodes): its wakeup byte ends the select instead.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        old_wakeup = signal.set_wakeup_fd(wake_w)
    except ValueError:  # not the main thread (a caller's own thread): no signals to wait for
        old_wakeup = None
    try:
        srv = socket.create_server(parse_addr(listen))
    except BaseException:
        _close_wakeup(wake_r, wake_w, old_wakeup)
        raise
    got: list[str] = []
    # Each worker: its progress pipe and the words it sent.  Served at once (up to MAX_WORKERS):
    # a peer that connects and stalls holds its own worker (until PREAUTH_SECONDS), no one else.
    workers: dict[int, tuple[int, bytearray]] = {}
    ending: float | None = None  # once: when the receiver stops waiting for the others
    refused = False  # a sender's guest refused by the policy (hostpower): a status of its own
    try:
        if ready is not None:
            ready(srv.getsockname())
        while True:
            if ending is not None:
                for pid, (_rfd, words) in workers.items():
                    if "hello" not in words.decode(errors="replace").split():
                        _kill(pid)  # not authenticated: nothing of it to wait for
                if not workers:
                    if not got and refused:
                        raise PolicyError(
                            "receive", "the guest was refused by this host's policy (see the message above)"
                        )
                    if not got:
                        raise BerthError("the migration was not received (see the messages above)")
                    return got
                if time.monotonic() > ending:
                    raise BerthError(
                        f"receive: {len(workers)} migration(s) still in flight after {DRAIN_SECONDS:.0f} s: ended"
                    )
            fds = {rfd: pid for pid, (rfd, _w) in workers.items()}
            accept = ending is None and len(workers) < MAX_WORKERS
            wanted = [wake_r, *fds] + ([srv.fileno()] if accept else [])
            timeout = None if ending is None else max(ending - time.monotonic(), 0.0)
            readable, _, _ = select.select(wanted, [], [], timeout)
            for fd in readable:
                if fd == wake_r:
                    _drain(wake_r)  # (the handler ran, or runs now: SIGTERM ends us)
                    continue
                if fd == srv.fileno():
                    pid, rfd = _serve(store, srv, token, build, allow)
                    workers[pid] = (rfd, bytearray())
                    continue
                pid = fds[fd]
                rfd, words = workers[pid]
                chunk = os.read(rfd, 4096)
                if chunk:
                    words += chunk
                    continue
                del workers[pid]
                lines = _reap(store, pid, rfd, words)
                if lines[-2:-1] == ["done"]:
                    got.append(lines[-1])
                refused = refused or ("refused" in lines and "hello" in lines)
                # Once: the first sender that authenticated (and sent a valid HELLO) decides.
                if once and ending is None and "hello" in lines:
                    ending = time.monotonic() + DRAIN_SECONDS
    finally:
        srv.close()
        for pid, (rfd, words) in workers.items():
            _kill(pid)
            _reap(store, pid, rfd, words)
        _close_wakeup(wake_r, wake_w, old_wakeup)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _close_wakeup(wake_r: int, wake_w: int, old: int | None) -> None:
    import signal

    if old is not None:
        signal.set_wakeup_fd(old)
    os.close(wake_r)
    os.close(wake_w)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _reap(store: Store, pid: int, rfd: int, words: bytearray) -> list[str]:
    """A worker that ended (or is being killed): the rest of its words read, what it left
    cleaned up if it died by a signal, then it is reaped (only then: until it is, its pid still
    holds its claim of the guest's name); its words."""
    left = bytes(words)
    while chunk := os.read(rfd, 4096):
        left += chunk
    os.close(rfd)
    lines = left.decode(errors="replace").split()
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    if info is not None and info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        _clean_after_worker(store, lines)
    _release_claims(store, lines, pid)
    os.waitpid(pid, 0)
    return lines


def _serve(
    store: Store, srv: socket.socket, token: bytes | None, build: Any, allow: frozenset[str] = frozenset()
) -> tuple[int, int]:
    """Accept one connection and fork its worker; (its pid, the read end of its progress pipe)."""
    conn, _peer = srv.accept()
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)  # (berth receive's: this worker's signals are its own)
        os.close(rfd)
        srv.close()
        code = 1
        try:
            name = _receive_one(store, conn, build, progress=wfd, token=token, allow=allow)
            os.write(wfd, f"done {name}\n".encode())
            code = 0
        except BaseException as e:
            import sys

            if isinstance(e, PolicyError):
                os.write(wfd, b"refused -\n")  # receive's exit status says so (EXIT_REFUSED)
            sys.stderr.write(f"berth receive: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        finally:
            os._exit(code)
    conn.close()
    os.close(wfd)
    return pid, rfd


def _clean_after_worker(store: Store, words: list[str]) -> None:
    """A receive worker died: remove its staging dir and any guest it had placed but not
    reported running."""
    for kind, value in zip(words[::2], words[1::2], strict=False):
        if kind == "staging":
            shutil.rmtree(value, ignore_errors=True)
        elif kind == "plugged" and "placed" not in words:
            try:  # the veth and lease it made ahead (a no-op when it made none)
                what = json.loads(bytes.fromhex(value))
                _unplug_early(store, str(what["name"]), {"net": what["net"]})
            except (ValueError, KeyError, TypeError):
                pass
        elif kind == "ids" and "placed" not in words:
            with store.lock(value):
                if not store.exists(value):
                    _release_ids(store, value)
        elif kind == "placed" and "running" not in words:
            with store.lock(value):
                if os.path.lexists(_receiving_path(store, value)):
                    settle_receive(store, value)  # undone, unless its sender had committed it
                else:
                    _undo(store, value)  # (killed before it moved the guest in place)


def _release_claims(store: Store, words: list[str], pid: int) -> None:
    """The claims of guest names the worker ``pid`` made and left (it was killed)."""
    for kind, value in zip(words[::2], words[1::2], strict=False):
        if kind == "claim":
            _release_claim(store, value, pid)


# A guest name being received here is claimed for the whole receive (a file under the store's
# lock directory naming the worker: pid and start time): a second sender of the same name is
# refused at once instead of undoing the first one's id range, veth and lease.
def _claim_path(store: Store, name: str) -> str:
    return os.path.join(store.guests, ".locks", f".receiving-{name}")  # a guest name has no leading dot


def _proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]  # field 22, starttime
    except (OSError, IndexError):
        return None


def _claim_holder(store: Store, name: str) -> int | None:
    """The live process (a zombie still counts) receiving ``name`` here; None if none."""
    try:
        with open(_claim_path(store, name)) as f:
            pid_text, start = f.read().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if _proc_start(pid) == start else None


def _claim(store: Store, name: str) -> str:
    """Claim ``name`` for this process's receive (ExistsError if another process holds it)."""
    me = os.getpid()
    with store.lock(name):
        holder = _claim_holder(store, name)
        if holder is not None and holder != me:
            raise ExistsError(f"guest {name!r} is being received already")
        path = _claim_path(store, name)
        with open(f"{path}.{me}", "w") as f:
            f.write(f"{me} {_proc_start(me)}\n")
        os.replace(f"{path}.{me}", path)  # over a stale one (its process is gone)
    return name


def _release_claim(store: Store, name: str, pid: int | None = None) -> None:
    """Drop the claim of ``name`` if it is ``pid``'s (this process's by default)."""
    path = _claim_path(store, name)
    with store.lock(name):
        try:
            with open(path) as f:
                if int(f.read().split()[0]) != (pid or os.getpid()):
                    return
            os.unlink(path)
        except (OSError, ValueError, IndexError):
            pass


def _receive_one(
    store: Store,
    conn: socket.socket,
    build: Any,
    *,
    progress: int = -1,
    token: bytes | None = None,
    allow: frozenset[str] = frozenset(),
) -> str:
    from berth.rootfs import template

    conn.settimeout(PREAUTH_SECONDS)
    s = Stream(conn)
    # Until the sender has authenticated, every read is bounded in size and all of them
    # together in time: a peer that sends nothing, or claims a huge frame, costs nothing.
    s.deadline = time.monotonic() + PREAUTH_SECONDS
    nonce = os.urandom(NONCE_BYTES)
    s.send(nonce, hashed=False)
    if s._exact(len(MAGIC)) != MAGIC:
        raise BerthError("not a berth migration stream")
    hello = s.recv_json(limit=transfer.HELLO_MAX)
    ids = False
    claimed = ""
    hold: template.Starting | None = None  # its use lock, from ensure() until the record names it
    try:
        if token and not hmac.compare_digest(str(hello.get("auth") or ""), _mac(token, nonce)):
            raise BerthError("the sender did not authenticate (wrong or missing --token-file)")
        check_hello(hello)
        _tell(progress, "hello", "-")  # a sender that spoke the protocol (see receive's once)
        s.deadline = None
        conn.settimeout(300)
        claimed = _claim(store, check_name(hello["name"]))
        _tell(progress, "claim", claimed)
        name = validate_incoming(store, hello, allow=allow)
        cfg = tomllib_loads(hello["config"])
        template.ensure(store.root, cfg["template"])
        hold = template.starting(store.root, cfg["template"])  # a replace waits, then sees the guest
        rng = incoming_ids(json.loads(hello["spec"]))
        with store.lock(name):
            _tell(progress, "ids", name)
            ids = _reserve_ids(store, name, json.loads(hello["spec"]))
        # The spec this host runs the guest with: built here from the validated config (with
        # the id range just reserved), as `berth start` would; the sender's is not used.
        saved = build(store, name, cfg)
        hostpower.check_spec(saved["spec"], allow)  # what it would get, whatever key led to it
        if incoming_ids(saved) != rng:
            raise UsageError(
                "userns", "the guest's config and the sender's spec disagree on its user namespace"
            )
        spec_text = json.dumps(saved)
    except Exception as e:
        if hold is not None:
            hold.release()
        if ids:
            _release_ids(store, name)
        if claimed:
            _release_claim(store, claimed)
        err = e if isinstance(e, BerthError) else BerthError(f"the migration was refused: {e}")
        try:
            s.send_json({"ok": False, "error": str(err)})
        except OSError:
            pass
        if err is e:
            raise
        raise err from e
    os.makedirs(store.guests, 0o711, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".incoming-{name}-", dir=store.guests)
    _tell(progress, "staging", staging)
    secure_dir(staging, rng[0] if rng is not None else None)  # as create makes guests/<name>
    scratch = _scratch(store, f".incoming-{name}-")
    _tell(progress, "staging", scratch)
    placed = False
    kept = False
    netns = None
    plugged = None
    try:
        s.send_json({"ok": True})
        _preload(json.loads(spec_text))
        from berth.runtime import checkpoint as ck

        netns = ck.NetnsHolder()  # the guest's network namespace, made now, not in the downtime
        net_spec = json.loads(spec_text).get("net")
        _tell(progress, "plugged", json.dumps({"name": name, "net": net_spec}).encode().hex())
        plugged = _preplug(store, name, json.loads(spec_text), hello.get("net"))
        while True:
            head = s.recv_json()
            if head.get("final"):
                break
            fault("receive:precopy")
            shutil.rmtree(os.path.join(staging, "upper"), ignore_errors=True)
            transfer.recv_tree(s, {"upper": staging}, kinds=UPPER_KINDS, ids=rng)
        fault("receive:transfer")
        t_final = time.monotonic()
        phases: dict[str, float] = {}
        transfer.recv_tree(s, {"images": scratch}, kinds=IMAGE_KINDS)
        remove = s.recv_json().get("remove") or []
        if not isinstance(remove, list) or not all(isinstance(r, str) for r in remove):
            raise UsageError("remove", "the sender's removal list is not a list of paths")
        if head.get("delta") and os.path.isdir(os.path.join(staging, "upper")):
            transfer.remove_paths(os.path.join(staging, "upper"), remove)
        else:
            shutil.rmtree(os.path.join(staging, "upper"), ignore_errors=True)
        transfer.recv_tree(s, {"upper": staging}, kinds=UPPER_KINDS, ids=rng)
        phases["received"] = time.monotonic() - t_final
        digest = _final_digest(s, token, nonce)
        if not hmac.compare_digest(s.recv(hashed=False).decode(errors="replace"), digest):
            raise BerthError(f"migration of {name}: checksum mismatch: the stream was damaged")
        fault("receive:restore")
        atomic_write(os.path.join(staging, "config.toml"), hello["config"])  # 0600: its env's secrets
        atomic_write(os.path.join(staging, "spec.json"), spec_text, durable=False)
        os.mkdir(os.path.join(staging, "work"), 0o700)
        _mark_receiving(os.path.join(staging, RECEIVING), committed=False)  # placed with it
        with store.lock(name):
            if os.path.lexists(store.dir(name)):
                raise ExistsError(f"guest {name!r} appeared here during the migration")
            if _claim_holder(store, name) != os.getpid():
                raise StateError(f"guest {name!r}: its claim as being received here was lost")
            _tell(progress, "placed", name)
            os.rename(staging, store.dir(name))
            placed = True
            # "net": what cleanup (here or by the parent, if this worker dies) unplugs.
            net = json.loads(spec_text).get("net")
            store.write_run(
                name, {"status": "stopped", "desired": "stopped", "store": store.root, "net": net}
            )
            if hold is not None:
                hold.release()
            _restore_locked(
                store,
                name,
                os.path.join(scratch, "images"),
                netns=netns,
                plugged_peer=plugged,
                foreign=True,
                timings=phases,
            )
        phases["restored"] = time.monotonic() - t_final
        phases["restore_criu"] = _criu_seconds(os.path.join(store.state_root, name, "criu", "restore.log"))
        # guestd, if it runs here (once a guest was started or received here), follows this
        # worker from now on: killed before the commit (berth receive with it), the guest is
        # dropped at once (Daemon.watch_receive), not at the next command about it here, while
        # its sender resumes it.  (Not started for this: no wait, nothing added to the downtime.)
        _nudge_guestd(store, name, start=False)
        fault("receive:restored")
        try:
            s.send_json({"ok": True, "times": phases})
            # Kept only once the source says so: a source cut off (killed, its host gone, the
            # stream broken) before it did resumes the guest there from its own images
            # (settle_migration), so the guest runs on one host, not two.
            commit = s.recv_json()
        except (OSError, ValueError) as e:
            raise StateError(
                f"the source went before it committed the migration ({e or type(e).__name__})"
            ) from None
        if not isinstance(commit, dict) or commit.get("commit") is not True:
            raise StateError("the source did not commit the migration")
        # Kept from now on, whatever happens to this worker (and to berth receive: the mark).
        _mark_receiving(_receiving_path(store, name), committed=True)
        _tell(progress, "running", name)
        fault("receive:committed")
        try:
            s.send_json({"kept": True})
        except OSError:
            pass  # the source leaves its copy stopped, its images kept (migrate.unconfirmed)
        kept = True  # the source may have removed its copy: nothing from here undoes this one
        try:
            with store.lock(name):
                os.unlink(_receiving_path(store, name))
        except (BerthError, OSError):
            pass  # (settle_receive drops a committed mark)
        _tell_guestd(store, name)
        return name
    except BaseException as e:
        if kept:
            raise
        if placed:
            _undo(store, name)
        else:
            if plugged is not None:
                _unplug_early(store, name, json.loads(spec_text))
            if ids:
                _release_ids(store, name)
        try:
            s.send_json({"ok": False, "error": str(e) or type(e).__name__})
        except OSError:
            pass
        if isinstance(e, (OSError, ValueError)) and not isinstance(e, BerthError):
            raise BerthError(f"migration of {name}: {e}") from e
        raise
    finally:
        if hold is not None:
            hold.release()
        if netns is not None:
            netns.close()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
        _release_claim(store, name)


def _preplug(
    store: Store, name: str, spec: dict[str, Any], net_now: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Before the final frame: the veth, lease, shaping and nft rules of an incoming bridged
    guest in its own user namespace, with the address the sender had (its guest end handed to
    CRIU at the restore); None when it has none to plug in so (made in the downtime then)."""
    from dataclasses import replace

    opts = config.net_from_dict(spec.get("net"))
    linux = (spec.get("spec") or {}).get("linux") or {}
    own_userns = any(n.get("type") == "user" for n in linux.get("namespaces") or [] if isinstance(n, dict))
    if opts is None or opts.mode != "bridge" or not own_userns or not isinstance(net_now, dict):
        return None
    if not net_now.get("ip"):
        return None
    opts = replace(opts, ip=str(net_now["ip"]), ip6=net_now.get("ip6") or opts.ip6)
    got = instance.net().setup(_Plug(name, os.getpid()), opts, store.root, handoff=True)
    return {"ip": got.get("ip"), "peer": got["peer"]}


def _unplug_early(store: Store, name: str, spec: dict[str, Any]) -> None:
    """The veth, rules and lease :func:`_preplug` made for a guest that was never placed here:
    its lease too (a persistent one, which teardown keeps for a guest's next start, would stay
    in the bridge's file for good: gc keeps what a guest of the store may want back)."""
    opts = config.net_from_dict(spec.get("net"))
    if opts is not None:
        try:
            instance.net().teardown(name, opts, store.root)
        except (BerthError, OSError):
            pass
        _forget_lease(store, name)


def _forget_lease(store: Store, name: str) -> None:
    """Drop ``name``'s leases (persistent ones too) unless a guest of that name exists here."""
    from berth.guests import lifecycle

    with store.lock(name):
        if store.exists(name) or os.path.lexists(store.dir(name)):
            return
        try:
            lifecycle._forget_address(store, name)
        except (BerthError, OSError, ValueError):
            pass


def _preload(spec: dict[str, Any] | None = None) -> None:
    """Import what the restore needs now, not while the guest is frozen (pyroute2, for a guest
    with a network to plug in, takes some 0.3 s)."""
    opts = config.net_from_dict((spec or {}).get("net"))
    if opts is not None and opts.mode in ("bridge", "ip"):
        instance.net()
        from pyroute2 import IPRoute  # noqa: F401

    import berth.cgroups
    import berth.linux.mount
    import berth.runtime.checkpoint
    import berth.runtime.container
    import berth.runtime.init
    import berth.runtime.mounts  # noqa: F401


def _tell(fd: int, kind: str, value: str) -> None:
    if fd >= 0:
        os.write(fd, f"{kind} {value}\n".encode())


def tomllib_loads(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def _undo(store: Store, name: str) -> None:
    """Remove a guest received here (after a failed restore): nothing of it stays."""
    rec = store.read_run(name)
    try:
        instance.cleanup(store, name, rec)
    except BerthError:
        pass
    _release_ids(store, name)
    shutil.rmtree(store.dir(name), ignore_errors=True)
    try:
        os.unlink(store.run_file(name))
    except FileNotFoundError:
        pass
    from berth.guests import lifecycle

    try:  # its lease (a persistent one stays after the teardown above): it was never a guest here
        lifecycle._forget_address(store, name)
    except (BerthError, OSError, ValueError):
        pass
