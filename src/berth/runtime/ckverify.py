"""The restored processes of a checkpoint from elsewhere, checked against the spec built here
before they run (defence in depth for `berth receive`).

CRIU runs as this host's root and makes again what the images describe: namespaces, id maps,
credentials, seccomp filters.  A migrated guest is restored stopped (``criu restore
--leave-stopped``); then every task (each thread of each process in its cgroup, and their
descendants) is compared with what the spec built here from the guest's config gives it:

- a namespace the spec gives the guest its own (pid, network, mount, ipc, uts, user) is not
  this host's (the receiver's own or pid 1's).  Not the cgroup namespace: berth's restore
  (``--manage-cgroups=ignore``) does not make the guest's again, a restored guest is in the
  host's (a gap of the restore, not the images': its cgroup is still its own);
- with a user namespace: the guest's init's uid and gid maps are exactly its reserved range
  (``0 START SIZE``), and every other task's maps lie inside that range (a namespace the guest
  made below its own maps a part of it);
- each task in the guest's own user namespace (the host's, for a guest without one) has a
  bounding set inside the spec's (a task in a namespace the guest made below has the full set
  there, over nothing of the host's);
- seccomp mode 2 (a filter) when the spec has one, no_new_privs when the spec sets it (both
  inherited and never dropped, so every task).

The caller kills them on a mismatch.  Pure: :func:`expect` (from the spec) and :func:`mismatch`
(one task's facts); :func:`read_task` and :func:`verify` read /proc.

Not checked: what a task holds open, its memory, its mounts beyond its namespaces (see
:mod:`berth.guests.hostpower`: the images are not untrusted input to CRIU).  A guest process
that was stopped (SIGSTOP) when dumped is continued with the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from berth.errors import StateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

# OCI namespace type -> its name under /proc/PID/ns
NS_NAMES = {
    "pid": "pid",
    "network": "net",
    "mount": "mnt",
    "ipc": "ipc",
    "uts": "uts",
    "user": "user",
}


@dataclass(frozen=True)
class Expect:
    """What every restored task must show, from the spec built here."""

    own: frozenset[str]  # /proc/PID/ns names that must not be the host's
    id_map: tuple[int, int] | None  # the user namespace's host range (start, size); None: none
    bounding: int  # the bounding set's mask
    seccomp: bool  # a seccomp filter (mode 2)
    no_new_privs: bool


def expect(spec: dict[str, Any]) -> Expect:
    """What the OCI ``spec`` (built here) gives each of the guest's tasks."""
    from berth.linux.caps import CAP_NUMBERS

    linux = spec.get("linux") or {}
    process = spec.get("process") or {}
    own = frozenset(
        NS_NAMES[n["type"]]
        for n in linux.get("namespaces") or []
        if isinstance(n, dict) and n.get("type") in NS_NAMES and not n.get("path")
    )
    id_map = None
    if "user" in own:
        m = (linux.get("uidMappings") or [{}])[0]
        id_map = (int(m["hostID"]), int(m["size"]))
    mask = 0
    for name in (process.get("capabilities") or {}).get("bounding") or ():
        if name in CAP_NUMBERS:
            mask |= 1 << CAP_NUMBERS[name]
    return Expect(own, id_map, mask, "seccomp" in linux, bool(process.get("noNewPrivileges")))


def parse_status(text: str) -> dict[str, int]:
    """The capability sets (hex), Seccomp, NoNewPrivs and State (its letter as ``ord``) of a
    /proc/PID/status (what is missing: absent)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key in CAP_SETS:
            out[key] = int(val.strip(), 16)
        elif key in ("Seccomp", "NoNewPrivs"):
            out[key] = int(val.strip())
        elif key == "State" and val.strip():
            out[key] = ord(val.strip()[0])
    return out


#: The capability sets a task's status shows; none may hold what the spec's bounding set lacks
#: (R15: CRIU restores the effective and permitted sets the images hold).
CAP_SETS = ("CapBnd", "CapPrm", "CapEff", "CapInh", "CapAmb")


def parse_map(text: str) -> list[tuple[int, int, int]]:
    """A /proc/PID/uid_map or gid_map: (inside, outside, count) lines."""
    out = []
    for line in text.splitlines():
        if line.strip():
            a, b, c = (int(x) for x in line.split())
            out.append((a, b, c))
    return out


def mismatch(
    task: dict[str, Any], want: Expect, host: dict[str, set[str]], guest_userns: str, *, init: bool
) -> str | None:
    """What of ``task`` (:func:`read_task`'s) differs from ``want``; None if nothing.  ``host``:
    the host's namespaces by /proc name (links); ``guest_userns``: the guest init's user
    namespace link (the host's for a guest without one); ``init``: the guest's init."""
    ns = task.get("ns") or {}
    if (task.get("status") or {}).get("State") == ord("Z"):
        return None  # a zombie: no namespaces, nothing it can run (its parent reaps it)
    for kind in sorted(want.own):
        link = ns.get(kind)
        if link is None:
            return f"its {kind} namespace cannot be read"
        if link in host.get(kind, set()):
            return f"it is in this host's {kind} namespace"
    if want.id_map is not None:
        start, size = want.id_map
        for which in ("uid_map", "gid_map"):
            m = task.get(which)
            if m is None:
                return f"its {which} cannot be read"
            if init and m != [(0, start, size)]:
                return f"its {which} is {_show(m)}, not the guest's range 0 {start} {size}"
            if not all(start <= out and out + n <= start + size for _in, out, n in m):
                return f"its {which} {_show(m)} maps ids outside the guest's range {start}+{size}"
    st = task.get("status") or {}
    if ns.get("user") == guest_userns:
        for key in CAP_SETS:
            have = st.get(key, -1 if key == "CapBnd" else 0)  # (CapAmb: not before Linux 4.3)
            if have & ~want.bounding:
                return f"its {key} {have:#x} is beyond the spec's bounding set {want.bounding:#x}"
    if want.seccomp and st.get("Seccomp") != 2:
        return f"it has no seccomp filter (mode {st.get('Seccomp')})"
    if want.no_new_privs and st.get("NoNewPrivs") != 1:
        return "it has no_new_privs off"
    return None


def _show(m: list[tuple[int, int, int]]) -> str:
    return "; ".join(" ".join(map(str, line)) for line in m) or "empty"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_task(pid: int, tid: int) -> dict[str, Any] | None:
    """A task's namespaces, id maps and status (None: it is gone)."""
    base = f"/proc/{pid}/task/{tid}"
    status = _read(f"{base}/status")
    if status is None:
        return None
    ns = {}
    for kind in NS_NAMES.values():
        try:
            ns[kind] = os.readlink(f"{base}/ns/{kind}")
        except OSError:
            pass
    uid, gid = _read(f"{base}/uid_map"), _read(f"{base}/gid_map")
    return {
        "ns": ns,
        "uid_map": parse_map(uid) if uid is not None else None,
        "gid_map": parse_map(gid) if gid is not None else None,
        "status": parse_status(status),
    }


def host_namespaces() -> dict[str, set[str]]:
    """This host's namespaces: the calling process's and pid 1's, by /proc name."""
    out: dict[str, set[str]] = {}
    for pid in ("self", "1"):
        for kind in NS_NAMES.values():
            try:
                out.setdefault(kind, set()).add(os.readlink(f"/proc/{pid}/ns/{kind}"))
            except OSError:
                pass
    return out


def tasks_of(pids: Iterable[int]) -> list[int]:
    """``pids`` and their descendants (by /proc/PID/task/TID/children), each once."""
    seen: list[int] = []
    stack = list(pids)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            text = _read(f"/proc/{pid}/task/{tid}/children") or ""
            stack += [int(c) for c in text.split()]
    return seen


def verify(init: int, pids: Sequence[int], want: Expect) -> None:
    """Check every thread of ``init`` and of ``pids`` (the guest's cgroup's) and of their
    descendants against ``want``; StateError naming the first task and what differed."""
    host = host_namespaces()
    try:  # the user namespace whose tasks' bounding sets count: the guest's own, or the host's
        guest_userns = os.readlink(f"/proc/{init if 'user' in want.own else 'self'}/ns/user")
    except OSError:
        raise StateError(f"restored init {init}: gone before it was checked") from None
    for pid in tasks_of([init, *pids]):
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue  # gone (a restored process that exited at once)
        for tid in tids:
            task = read_task(pid, tid)
            if task is None:
                continue
            why = mismatch(task, want, host, guest_userns, init=pid == init and tid == init)
            if why:
                raise StateError(
                    f"restored task {pid}" + (f" (thread {tid})" if tid != pid else "") + f": {why}"
                )
