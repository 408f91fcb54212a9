"""berth-runtime delete [--force] ID: remove a stopped (or, forced, any) container.

A state directory without state.json is what a create killed in its first milliseconds left
(``state`` says the container does not exist, ``create`` that it exists already).  As runc's,
``delete`` removes it, forced or not, once no process that could be that create is alive (a
berth process naming the id: a create under way writes its state.json shortly); then it
succeeds with a warning.

Every ``delete`` also takes up to :data:`SWEEP_LIMIT` tombstones (``.gone-PID-…``:
:func:`berth.runtime.state.remove_tree`) that removers killed half-way left under ``--root``
(nobody runs ``berth gc`` on a client's root: podman's, containerd's): bounded work, done after
the delete itself, whose outcome it never changes.
"""

from __future__ import annotations

import os

from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime import state as st

    opts, rest = parse(argv, flags={"force": "force", "f": "force"})
    cid = need_id(rest, "delete")
    force = bool(opts.get("force"))
    try:
        _delete(ctx, cid, force)
    finally:
        try:
            st.sweep(ctx.root, limit=SWEEP_LIMIT)  # what killed removers left (the module's doc)
        except OSError:
            pass  # (the root unreadable: the delete's own outcome stands)
    return 0


#: Tombstones of killed removers one ``delete`` removes at most (each is what remained of one
#: container's state directory: small; every container's delete takes some).
SWEEP_LIMIT = 4


def _delete(ctx: Context, cid: str, force: bool) -> None:
    from berth.errors import NotFoundError
    from berth.runtime import state as st
    from berth.runtime.container import Container

    try:
        c = Container.load(ctx.root, cid)
    except NotFoundError:
        path = st.container_dir(ctx.root, cid)
        # As runc: a forced delete of a container that does not exist succeeds (containerd's
        # shim runs it when cleaning up after a task already deleted), removing what an
        # aborted create may have left of its state directory; unforced, only that.
        if not force and not _aborted_create(path, cid):
            raise
        if not force:
            ctx.log.warn(f"container {cid!r}: removed the state directory an aborted create left")
        st.remove_tree(path)
        return
    c.delete(force=force, warn=ctx.log.warn)


def _aborted_create(path: str, cid: str) -> bool:
    """Is ``path`` a state directory without state.json whose create is gone?  A create under way
    is refused (:class:`~berth.errors.StateError`) rather than taken for a gone one."""
    from berth.errors import StateError

    if not os.path.isdir(path) or os.path.lexists(os.path.join(path, "state.json")):
        return False  # none, or a damaged state.json (its error stands: delete --force removes it)
    pid = creating(cid)
    if pid:
        raise StateError(f"container {cid!r} is being created (process {pid}; no state yet): try again")
    return not os.path.lexists(os.path.join(path, "state.json"))  # (not written meanwhile)


_MAKERS = frozenset({b"create", b"run", b"restore"})


def creating(cid: str) -> int:
    """A live berth process (not this one) with ``cid`` and a verb that makes a container among
    its arguments: the one that may be creating ``cid`` (``berth-runtime create|run|restore …
    ID``; not a concurrent ``delete`` or ``state`` of it); 0 if none."""
    me = os.getpid()
    want = os.fsencode(cid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if want in args and any(b"berth" in a for a in args[:3]) and not _MAKERS.isdisjoint(args):
            return int(entry)
    return 0
