"""The state directory of one container and its status state machine.

``<root>/<id>/`` holds ``state.json`` (the OCI state plus berth's own fields),
``exec.fifo`` (the init waits on it between create and start) and, for guests whose root
is an overlay, the overlay's ``upper`` and ``work`` directories.
"""

from __future__ import annotations

import os

from berth.errors import ExistsError, NotFoundError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CREATING = "creating"
CREATED = "created"
RUNNING = "running"
STOPPED = "stopped"
PAUSED = "paused"

_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ID_FIRST | frozenset("_.+-")


def valid_id(cid: str) -> bool:
    return 0 < len(cid) <= 128 and cid[0] in _ID_FIRST and all(c in _ID_CHARS for c in cid)


def check_id(cid: str, field: str = "id") -> str:
    """A container id/name: letters, digits, ``_.+-``, at most 128, not starting with a symbol."""
    if not valid_id(cid):
        raise UsageError(field, f"invalid name {cid!r}: use letters, digits and _.+- (at most 128)")
    return cid


def dumps(value: Any) -> str:
    """JSON text for plain data (dict, list, str, int, float, bool, None).

    Written here because importing :mod:`json` pulls in :mod:`re`; this is the start path.
    """
    from _json import encode_basestring_ascii as q

    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return q(value)  # type: ignore[no-any-return]
    if isinstance(value, (int, float)):
        return repr(value) if abs(value) < float("inf") else "null"  # NaN and inf are not JSON
    if isinstance(value, dict):
        return "{" + ", ".join(f"{q(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


# A directory being removed is first renamed to ``.gone-PID-RANDOM-NAME`` beside it: a remove
# killed half-way leaves a tombstone (no valid id: no container's), not a half state directory
# under the container's name, which would hold the name and look like a create under way.
TOMBSTONE = ".gone-"


def remove_tree(path: str) -> None:
    """rm -rf without following symlinks (shutil costs milliseconds to import here); the
    directory is renamed to a tombstone first (:data:`TOMBSTONE`), so ``path`` is gone at once
    and whole, even if this process is killed during the removal (:func:`sweep` takes what a
    killed one left)."""
    grave = bury(path)
    if grave is not None:
        _remove(grave)


def bury(path: str) -> str | None:
    """The first half of :func:`remove_tree`: ``path`` renamed to a tombstone, whose path is
    returned for :func:`remove_grave` (``path`` itself if it cannot be moved, a mount point
    say: it is still there then), or None if ``path`` is gone already."""
    top, base = os.path.split(path.rstrip("/"))
    grave = os.path.join(top, f"{TOMBSTONE}{os.getpid()}-{os.urandom(3).hex()}-{base}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return None
    except OSError:  # a mount point, say: removed in place
        return path
    return grave


def remove_grave(grave: str) -> None:
    """The second half of :func:`remove_tree`: remove what :func:`bury` returned."""
    _remove(grave)


def sweep(root: str, limit: int | None = None) -> list[str]:
    """Remove the tombstones under ``root`` whose remover (the pid in their name) is gone, at
    most ``limit`` of them (None: all); the paths removed.  One that cannot be removed (a mount
    point in it: EBUSY) is left, and the others are still taken."""
    done: list[str] = []
    try:
        entries = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if not entry.startswith(TOMBSTONE) or (limit is not None and len(done) >= limit):
            continue
        pid = entry[len(TOMBSTONE) :].split("-", 1)[0]
        if pid.isdigit() and proc_start_time(int(pid)) is not None:
            continue  # its remover is at it
        try:
            _remove(os.path.join(root, entry))
        except OSError:
            continue
        done.append(os.path.join(root, entry))
    return done


def _remove(path: str) -> None:
    try:
        for _top, dirs, files, dfd in os.fwalk(path, topdown=False):
            for name in files:
                os.unlink(name, dir_fd=dfd)
            for name in dirs:
                try:
                    os.rmdir(name, dir_fd=dfd)
                except NotADirectoryError:
                    os.unlink(name, dir_fd=dfd)
        os.rmdir(path)
    except FileNotFoundError:
        pass


def can_start(status: str) -> bool:
    return status == CREATED


def can_kill(status: str) -> bool:
    return status in (CREATED, RUNNING, PAUSED)


def can_delete(status: str) -> bool:
    return status in (STOPPED, CREATED)


def can_pause(status: str) -> bool:
    return status == RUNNING


def can_resume(status: str) -> bool:
    return status == PAUSED


def container_dir(root: str, cid: str) -> str:
    return os.path.join(root, cid)


def reserve(root: str, cid: str) -> str:
    """Create the container's state directory; an existing one means the name is taken."""
    os.makedirs(root, mode=0o711, exist_ok=True)
    path = container_dir(root, check_id(cid))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise ExistsError(f"container {cid!r} exists already (state in {path})") from None
    return path


def write(root: str, cid: str, state: dict[str, Any]) -> None:
    """Replace state.json atomically (write + rename)."""
    path = container_dir(root, cid)
    tmp = os.path.join(path, ".state.json.tmp")
    with open(tmp, "w") as f:
        f.write(dumps(state))
    os.rename(tmp, os.path.join(path, "state.json"))


def read(root: str, cid: str) -> dict[str, Any]:
    """The stored state of ``cid``."""
    from berth.spec.jsontext import loads

    path = os.path.join(container_dir(root, check_id(cid)), "state.json")
    try:
        with open(path) as f:
            return loads(f.read())  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise NotFoundError(f"container {cid!r} does not exist") from None
    except ValueError as e:
        raise NotFoundError(f"container {cid!r}: state.json is damaged ({e})") from None


def ids(root: str) -> list[str]:
    """Every container with a state directory under ``root``."""
    try:
        return sorted(d for d in os.listdir(root) if valid_id(d))
    except FileNotFoundError:
        return []


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


def owner_gone(state: dict[str, Any]) -> bool:
    """The process that made the container and must start it (``berth run``, recorded as
    ``berth.owner``: pid and start time) has ended; False when none is recorded (an OCI runtime's
    container waits for a ``start`` from any later command)."""
    owner = state.get("berth", {}).get("owner")
    if not owner:
        return False
    pid, start = owner
    return proc_start_time(pid) != start


def creator_gone(state: dict[str, Any]) -> bool:
    """Has the process making the container (``berth.creator``: pid and start time, recorded by
    every create) ended?  A state still "creating" is then what a crashed create left; while it
    lives the create is going on (its hooks may take a while).  True when none is recorded."""
    creator = state.get("berth", {}).get("creator")
    if not creator:
        return True
    pid, start = creator
    return start is None or proc_start_time(pid) != start


def alive(state: dict[str, Any]) -> bool:
    """Is the container's init still the process we started (not a reused pid)?"""
    pid = state.get("pid") or 0
    if pid <= 0:
        return False
    start = proc_start_time(pid)
    if start is None or start != state.get("berth", {}).get("start_time"):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 : data.rindex(b")") + 3] != b"Z"
    except OSError:
        return False
