"""Per-guest id ranges for user namespaces: a pool, allocations persisted and locked in the store.

A guest with ``--userns auto`` gets its own block of 65536 host uids and gids (the same
numbers for both), mapped to 0…65535 inside.  Allocations live in
``STORE/userns/allocations.json`` under an ``flock`` on ``STORE/userns/lock``; a range is
freed when its guest is destroyed (``berth run``: when it ends).

The pool: the ranges of the user ``berth`` in /etc/subuid and /etc/subgid (both must
list it: the intersection is used), as LXC uses root's; otherwise ``DEFAULT_POOL``.  No
range, allocated or asked for, may hold a host user's uid or a host group's gid
(/etc/passwd, /etc/group), another user's subordinate ids (rootless podman's, say), or
another guest's ids.  The pure part (parsing, overlap, first fit) is separate from the
file I/O and unit-tested.
"""

from __future__ import annotations

import errno
import os

from berth.errors import AdmissionError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

BLOCK = 65536
DEFAULT_POOL = (1_000_000, BLOCK * 4096)  # 1000000 … ~269 million: above any distro's users
POOL_USER = "berth"
MAX_ID = 2**32 - 2  # (uid_t)-1 is "no id"

Range = tuple[int, int]  # (start, size)


# -- pure part ---------------------------------------------------------------------------
def parse_mode(text: str) -> str | Range:
    """``auto``, ``host`` or ``START:SIZE`` (``--userns``)."""
    if text in ("auto", "host"):
        return text
    start, sep, size = text.partition(":")
    try:
        if not sep:
            raise ValueError
        rng = (int(start), int(size))
    except ValueError:
        raise UsageError(
            "userns", f"{text!r}: expected auto, host or START:SIZE (e.g. 1000000:65536)"
        ) from None
    if rng[0] <= 0:
        raise UsageError("userns", f"{text!r}: the range must start above 0 (0 is the host's root)")
    if rng[1] < 1 or rng[0] + rng[1] - 1 > MAX_ID:
        raise UsageError("userns", f"{text!r}: SIZE must be at least 1 and the range end below {MAX_ID + 1}")
    return rng


def parse_pool(text: str | None) -> Range | None:
    """``START:SIZE`` of a pool ($BERTH_USERNS_POOL), or None for the configured one."""
    if not text:
        return None
    start, sep, size = text.partition(":")
    if not (sep and start.isdigit() and size.isdigit() and int(start) > 0):
        raise UsageError("BERTH_USERNS_POOL", f"{text!r}: expected START:SIZE")
    return (int(start), int(size))


def overlaps(a: Range, b: Range) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def parse_subid(text: str) -> list[tuple[str, int, int]]:
    """/etc/subuid or /etc/subgid lines: (user, start, count)."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or line.lstrip().startswith("#"):
            continue
        try:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        except ValueError:
            continue
    return out


def parse_ids(text: str) -> list[tuple[str, int]]:
    """/etc/passwd or /etc/group: (name, id)."""
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.append((parts[0], int(parts[2])))
    return out


class HostIds:
    """What a guest's range must not touch on this host, and the pool berth draws from."""

    def __init__(
        self,
        users: list[tuple[str, int]],
        groups: list[tuple[str, int]],
        subuid: list[tuple[str, int, int]],
        subgid: list[tuple[str, int, int]],
        pool: Range | None = None,
    ) -> None:
        self.users = users
        self.groups = groups
        self.subuid = subuid
        self.subgid = subgid
        if pool is None:
            own_u = [(s, n) for u, s, n in subuid if u == POOL_USER]
            own_g = [(s, n) for u, s, n in subgid if u == POOL_USER]
            pool = own_u[0] if own_u and own_u[0] in own_g else DEFAULT_POOL
        self.pool = pool

    @classmethod
    def read(cls, etc: str = "/etc", pool: Range | None = None) -> HostIds:
        def text(name: str) -> str:
            try:
                with open(os.path.join(etc, name)) as f:
                    return f.read()
            except FileNotFoundError:
                return ""

        return cls(
            parse_ids(text("passwd")),
            parse_ids(text("group")),
            parse_subid(text("subuid")),
            parse_subid(text("subgid")),
            pool,
        )

    def conflict(self, rng: Range) -> str | None:
        """Why ``rng`` may not be given to a guest (a host user or group, others' subids), or None."""
        for kind, ids in (("user", self.users), ("group", self.groups)):
            for name, i in ids:
                if i in (65534, 4294967294):
                    continue  # nobody/nogroup: the overflow id, never owns files a guest could reach
                if rng[0] <= i < rng[0] + rng[1]:
                    return f"holds the host {kind} {name!r} ({'g' if kind == 'group' else 'u'}id {i})"
        for kind, subs in (("subuid", self.subuid), ("subgid", self.subgid)):
            for user, s, n in subs:
                if user != POOL_USER and overlaps(rng, (s, n)):
                    return f"overlaps {user!r}'s subordinate ids in /etc/{kind} ({s}:{n})"
        return None


def first_fit(pool: Range, taken: Iterable[Range], host: HostIds, size: int = BLOCK) -> Range | None:
    """The lowest block of ``size`` in ``pool`` (aligned to ``size``) free of ``taken`` and host ids."""
    used = sorted(taken)
    start = pool[0]
    end = pool[0] + pool[1]
    while start + size <= end:
        cand = (start, size)
        hit = next((t for t in used if overlaps(cand, t)), None)
        if hit is not None:
            start = hit[0] + hit[1]
            start = pool[0] + -(-(start - pool[0]) // size) * size  # next aligned block
            continue
        if host.conflict(cand) is None:
            return cand
        start += size
    return None


def mappings(rng: Range) -> list[dict[str, int]]:
    """The OCI ``uidMappings``/``gidMappings`` for a range: 0… inside to ``rng`` outside."""
    return [{"containerID": 0, "hostID": rng[0], "size": rng[1]}]


def apply(spec: dict, rng: Range) -> None:
    """Give ``spec`` a new user namespace mapped to ``rng``."""
    linux = spec.setdefault("linux", {})
    nss = [n for n in linux.get("namespaces") or [] if n["type"] != "user"]
    linux["namespaces"] = [{"type": "user"}, *nss]
    linux["uidMappings"] = mappings(rng)
    linux["gidMappings"] = mappings(rng)


# -- the allocation file ----------------------------------------------------------------
def _dir(store: str) -> str:
    return os.path.join(store, "userns")


def _load(path: str) -> dict[str, list[int]]:
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    return {k: [int(v[0]), int(v[1])] for k, v in (data.get("allocations") or {}).items()}


def _save(path: str, allocations: dict[str, list[int]]) -> None:
    import json

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"allocations": allocations}, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class _Locked:
    def __init__(self, store: str) -> None:
        self.dir = _dir(store)
        self.path = os.path.join(self.dir, "allocations.json")

    def __enter__(self) -> dict[str, list[int]]:
        import fcntl

        os.makedirs(self.dir, 0o700, exist_ok=True)
        self.fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.data = _load(self.path)
        return self.data

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def run_owner(name: str) -> str:
    """The allocation key of a ``berth run`` guest: freed by that run, or reclaimed once its pid is gone."""
    return f"run:{name}:{os.getpid()}"


def _stale(owner: str) -> bool:
    """A ``berth run`` allocation whose process is gone (killed before it could free it)."""
    if not owner.startswith("run:"):
        return False
    pid = owner.rsplit(":", 1)[1]
    return pid.isdigit() and not os.path.exists(f"/proc/{pid}")


def allocate(store: str, owner: str, mode: str | Range, host: HostIds | None = None) -> Range | None:
    """Reserve a range for guest ``owner`` (None for ``host``); the same range if it has one.

    Raises :class:`UsageError` for a range that overlaps another guest or the host's ids and
    :class:`AdmissionError` when the pool is exhausted; nothing is written then.
    """
    if mode == "host":
        return None
    host = host or HostIds.read()
    lock = _Locked(store)
    with lock as alloc:
        if owner in alloc:
            return (alloc[owner][0], alloc[owner][1])
        for stale in [k for k in alloc if _stale(k)]:
            del alloc[stale]
        if mode == "auto":
            rng = first_fit(host.pool, [(v[0], v[1]) for v in alloc.values()], host)
            if rng is None:
                raise AdmissionError(
                    f"userns: the id pool {host.pool[0]}:{host.pool[1]} is exhausted "
                    f"({len(alloc)} guests hold ranges)"
                )
        else:
            assert not isinstance(mode, str)
            rng = mode
            for other, (s, n) in sorted(alloc.items()):
                if overlaps(rng, (s, n)):
                    raise UsageError("userns", f"{rng[0]}:{rng[1]} overlaps guest {other!r}'s ids ({s}:{n})")
            why = host.conflict(rng)
            if why:
                raise UsageError("userns", f"{rng[0]}:{rng[1]} {why}")
        alloc[owner] = [rng[0], rng[1]]
        _save(lock.path, alloc)
    return rng


def release(store: str, owner: str) -> None:
    """Free ``owner``'s range (no error if it has none)."""
    lock = _Locked(store)
    try:
        with lock as alloc:
            if alloc.pop(owner, None) is not None:
                _save(lock.path, alloc)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


def allocations(store: str) -> dict[str, Range]:
    """Every guest's range (for ``berth info`` and tests)."""
    return {k: (v[0], v[1]) for k, v in _load(os.path.join(_dir(store), "allocations.json")).items()}
