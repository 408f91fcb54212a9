"""The restored processes of a checkpoint, checked against the spec built here before they run
(defence in depth for `berth receive`, and for `berth restore` of a local checkpoint, whose
directory is the caller's: there the spec is the guest's own, as its last start built it).

CRIU runs as this host's root and makes again what the images describe: namespaces, id maps,
credentials, seccomp filters.  The guest is restored stopped (``criu restore
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
  inherited and never dropped, so every task);
- with the program berth builds here for the spec's seccomp profile (:attr:`Expect.program`):
  the oldest filter of each thread's chain is that program, byte for byte (read with
  ``PTRACE_SECCOMP_GET_FILTER``, :func:`read_oldest_filter`).  Filters stacked on it later (the
  guest's own) can only restrict further: the kernel takes the most restrictive action of the
  chain.  Crafted images can otherwise carry an allow-all filter that passes a check of the mode.
  A spec without a seccomp profile (``seccomp=unconfined``, privileged: allowed by the
  receiver's policy, :mod:`berth.guests.hostpower`) expects no filter: the guest's own may be
  there.  The program is libseccomp's for the profile: a sender whose libseccomp builds other
  bytes for the same profile is refused (the migration stays on the sender).

The caller kills them on a mismatch.  Pure: :func:`expect` (from the spec) and :func:`mismatch`
(one task's facts); :func:`read_task` and :func:`verify` read /proc.

The seccomp filter flags, which CRIU gives back from the images (``seccomp.img``: each
filter's ``flags``), not from the spec: berth installs its filter with none, so the oldest
filter of a chain must carry no flag but ``TSYNC``.  ``SECCOMP_FILTER_FLAG_LOG`` (every action
but allow logged to the host's audit log) is read live, per thread, from what was restored
(``PTRACE_SECCOMP_GET_METADATA``: the only flag the kernel keeps with a filter);
``SPEC_ALLOW`` (the task's speculative store bypass mitigation not forced) leaves no trace in
the task, so the images are checked before the restore (:func:`image_flags_mismatch`): a chain's
oldest filter with any flag but ``TSYNC``, or any filter with a flag a dump never records
(``NEW_LISTENER``, ``TSYNC_ESRCH``, ``WAIT_KILLABLE_RECV``, unknown bits), is refused; filters
the guest stacked may carry ``LOG`` and ``SPEC_ALLOW`` (it could set them itself).

Not checked: what a task holds open, its memory, its mounts beyond its namespaces (see
:mod:`berth.guests.hostpower`: the images are not untrusted input to CRIU).

Then the tasks are continued, except the processes that were stopped (SIGSTOP, SIGTSTP …) when
dumped (:func:`stopped_at_dump`: the core images' ``task_state``; a correctness point, not a
security one, so the images are good enough): :func:`to_continue`.
"""

from __future__ import annotations

import errno
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
    # the spec's seccomp profile as berth builds it here: each thread's oldest filter (None: not
    # compared, only the mode)
    program: bytes | None = None


def expect(spec: dict[str, Any], program: bytes | None = None) -> Expect:
    """What the OCI ``spec`` (built here) gives each of the guest's tasks; ``program``: the BPF
    berth builds here for its ``linux.seccomp`` (:func:`berth.linux.seccomp.compiled`), ignored
    for a spec without one."""
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
    has = "seccomp" in linux
    return Expect(own, id_map, mask, has, bool(process.get("noNewPrivileges")), program if has else None)


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
        "filters": status_field(status, "Seccomp_filters"),
    }


def status_field(text: str, key: str) -> int | None:
    """An integer field of a /proc/PID/status (None: absent, as Seccomp_filters before Linux
    5.9, or not a number)."""
    for line in text.splitlines():
        k, _, val = line.partition(":")
        if k == key:
            try:
                return int(val.split()[0])
            except (ValueError, IndexError):
                return None
    return None


# -- the seccomp filter chain ------------------------------------------------------------------

#: The most filters a restored thread may have stacked (the kernel's own bound, 32768
#: instructions over the chain with 4 each of overhead, allows some 6500 one-instruction ones).
MAX_FILTERS = 256
#: How long a seized task may take to reach its ptrace-stop (it is stopped already: microseconds).
STOP_SECONDS = 5.0

_BPF_RET_K = 0x06
_RET_ACTIONS = {
    0x7FFF0000: "allow",
    0x7FFC0000: "log",
    0x7FF00000: "trace",
    0x7FC00000: "notify",
    0x00050000: "errno",
    0x00030000: "trap",
    0x00000000: "kill the thread",
    0x80000000: "kill the process",
}


def describe_program(program: bytes) -> str:
    """A seccomp program in a few words, for a refusal: its length, and what a program that
    only returns does (``1 instruction: return allow``: an allow-all filter)."""
    import struct

    n = len(program) // 8
    text = f"{n} instruction" + ("s" if n != 1 else "")
    if n == 1 and len(program) == 8:
        code, _jt, _jf, k = struct.unpack("=HBBI", program)
        if code == _BPF_RET_K:
            text += f": return {_RET_ACTIONS.get(k & 0xFFFF0000, hex(k))} for every call"
    return text


FILTER_FLAGS = {
    1: "SECCOMP_FILTER_FLAG_TSYNC",
    2: "SECCOMP_FILTER_FLAG_LOG",
    4: "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    8: "SECCOMP_FILTER_FLAG_NEW_LISTENER",
    16: "SECCOMP_FILTER_FLAG_TSYNC_ESRCH",
    32: "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
}
#: The flags berth's own filter (the oldest of a chain) may come back with, and those a filter
#: the guest stacked may (what a dump records: CRIU reads LOG back with the kernel's metadata).
OLDEST_FLAGS = 1
STACKED_FLAGS = 1 | 2 | 4


def flag_names(flags: int) -> str:
    """``flags`` as names joined by ``|`` (an unknown bit in hex)."""
    names = []
    for bit in range(64):
        if flags & (1 << bit):
            names.append(FILTER_FLAGS.get(1 << bit, hex(1 << bit)))
    return "|".join(names) or "0"


def filter_mismatch(count: int, oldest: bytes | None, want: bytes, flags: int | None = 0) -> str | None:
    """What of a thread's filter chain differs from ``want`` (berth's program for the spec):
    ``count`` filters, the oldest ``oldest`` (None: unreadable), restored with ``flags`` (as the
    kernel keeps them: None, unreadable).  Pure."""
    if count < 1:
        return "it has no seccomp filter"
    if count > MAX_FILTERS:
        return f"it has {count} seccomp filters (more than {MAX_FILTERS})"
    if oldest is None or flags is None:
        return "its seccomp filters cannot be read"
    if oldest != want:
        return (
            f"its first seccomp filter ({describe_program(oldest)}) is not the one this host "
            f"builds for its spec ({describe_program(want)})"
        )
    if flags & ~OLDEST_FLAGS:
        return f"its first seccomp filter has the flag {flag_names(flags & ~OLDEST_FLAGS)} (berth sets none)"
    return None


def read_oldest_filter(tid: int, count: int | None) -> tuple[int, bytes | None, int | None]:
    """(number of filters, the oldest one's program, its flags) of the stopped thread ``tid``,
    read with ptrace (seized, stopped, read, detached: a task in a group stop stays in it).
    ``count``: its status's Seccomp_filters (None: counted with ptrace, up to MAX_FILTERS + 1).
    The program and flags are None where they cannot be read; OSError if the thread cannot be
    seized or stopped (TimeoutError past :data:`STOP_SECONDS`)."""
    from berth.linux import ptrace

    ptrace.seize(tid)
    sig: int | None = 0
    try:
        ptrace.interrupt(tid)
        sig = ptrace.wait_stop(tid, STOP_SECONDS)
        if sig is None:
            return 0, b"", 0  # it ended (killed meanwhile): nothing runs
        if count is None:
            count = 0
            while count <= MAX_FILTERS and ptrace.seccomp_filter(tid, count, length_only=True) is not None:
                count += 1
        elif count > MAX_FILTERS or ptrace.seccomp_filter(tid, count, length_only=True) is not None:
            return max(count, MAX_FILTERS + 1), None, None  # (more than its status says: refused)
        if not 0 < count <= MAX_FILTERS:
            return count, None, None
        try:
            # Index 0 is the oldest filter (the kernel's get_nth_filter counts from the first
            # installed; ptrace(2) says otherwise): berth's, under those the guest stacked.
            got = ptrace.seccomp_filter(tid, 0)
            flags = ptrace.seccomp_filter_flags(tid, 0)
        except (OSError, ValueError):
            return count, None, None
        return count, got if isinstance(got, bytes) else None, flags
    finally:
        if sig is not None:
            try:
                ptrace.detach(tid, sig)
            except OSError as e:
                # Gone is fine; else it stays in a ptrace-stop no SIGCONT ends (killed when
                # berth exits, EXITKILL): refused rather than left half-held.
                if e.errno != errno.ESRCH:
                    raise


# -- the filters' flags in the images ----------------------------------------------------------


def image_filters(data: bytes) -> list[tuple[int | None, int]]:
    """(prev, flags) of each filter of a CRIU ``seccomp.img`` (two magics, then one entry: a
    32-bit size and a seccomp_entry: repeated seccomp_filter {bytes filter = 1; uint32 prev = 2;
    uint32 flags = 3}); prev None for the oldest of a chain.  ValueError if damaged."""
    from berth.runtime.checkpoint import _pb_fields, _pb_varints

    if len(data) < 12:
        raise ValueError("shorter than its header")
    size = int.from_bytes(data[8:12], "little")
    entry = data[12 : 12 + size]
    if len(entry) != size:
        raise ValueError("truncated entry")
    out = []
    for num, wire, value in _pb_fields(entry):
        if num == 1 and wire == 2 and isinstance(value, bytes):
            fields = _pb_varints(value)
            out.append((fields.get(2), fields.get(3, 0)))
    return out


def thread_filters(images: str) -> dict[int, int]:
    """{tid: the index of its most recent filter in seccomp.img} from the images' thread cores
    (``core-TID.img``: core_entry.thread_core = 5, its seccomp_filter = 12); threads without
    a filter are left out."""
    from berth.runtime.checkpoint import _pb_fields, _pb_varints

    out = {}
    for name in os.listdir(images):
        if not (name.startswith("core-") and name.endswith(".img") and name[5:-4].isdigit()):
            continue
        try:
            with open(os.path.join(images, name), "rb") as f:
                data = f.read(1 << 20)
            size = int.from_bytes(data[8:12], "little")
            for num, wire, value in _pb_fields(data[12 : 12 + size]):
                if num == 5 and wire == 2 and isinstance(value, bytes):
                    last = _pb_varints(value).get(12)
                    if last is not None:
                        out[int(name[5:-4])] = last
        except (OSError, ValueError):
            continue
    return out


_SECCOMP_IMG_MAX = 64 << 20  # bytes of seccomp.img read (~6,800 chains of berth's filter)


def chain_fault(filters: list[tuple[int | None, int]]) -> str | None:
    """What is wrong with the images' filter chains (each filter's ``prev``, the one stacked
    before it), or None: a ``prev`` outside the images' filters, or a chain that loops (CRIU
    walks a chain until a filter without ``prev``: a loop would keep it spinning, holding the
    guest's lock).  Linear in the number of filters."""
    n = len(filters)
    state = [0] * n  # 0: not seen, 1: on the chain being walked, 2: ends well
    for i in range(n):
        path = []
        j: int | None = i
        while j is not None:
            if not 0 <= j < n:
                return f"filter {path[-1]}: the seccomp filter before it in the images, {j}, does not exist"
            if state[j] == 2:
                break
            if state[j] == 1:
                return f"filter {j}: its seccomp filter chain in the images loops"
            state[j] = 1
            path.append(j)
            j = filters[j][0]
        for k in path:
            state[k] = 2
    return None


def image_flags_mismatch(images: str, berth_filter: bool) -> str | None:
    """What of the filters' flags in the images CRIU would restore that berth refuses (see the
    module's doc), naming the task (its id in the images) and the flag; None if nothing.
    ``berth_filter``: the spec gives the guest berth's filter (the oldest of each chain); else
    every filter is the guest's own.  Pure but for reading the images."""
    try:
        with open(os.path.join(images, "seccomp.img"), "rb") as f:
            data = f.read(_SECCOMP_IMG_MAX)
    except FileNotFoundError:
        return None  # no task with a filter
    if len(data) == _SECCOMP_IMG_MAX:
        return f"its seccomp.img is {_SECCOMP_IMG_MAX >> 20} MiB or more: too large to check"
    try:
        filters = image_filters(data)
    except ValueError as e:
        return f"its seccomp.img is damaged ({e})"
    broken = chain_fault(filters)
    if broken:
        return broken
    oldest_ok = OLDEST_FLAGS if berth_filter else STACKED_FLAGS
    owners: dict[int, int] = {}
    for tid, last in sorted(thread_filters(images).items()):
        i: int | None = last
        for _ in range(len(filters)):
            if i is None or not 0 <= i < len(filters) or i in owners:
                break
            owners[i] = tid
            i = filters[i][0]
    for i, (prev, flags) in enumerate(filters):
        bad = flags & ~(oldest_ok if prev is None else STACKED_FLAGS)
        if bad:
            who = f"task {owners[i]}" if i in owners else f"filter {i}"
            which = "first" if prev is None else "stacked"
            return f"{who}: its {which} seccomp filter in the images has the flag {flag_names(bad)}"
    return None


# -- the processes stopped at dump time --------------------------------------------------------

TASK_STOPPED = 3  # CRIU's task_core_entry.task_state (images/core.proto's "gen" dict)


def core_task_state(data: bytes) -> int | None:
    """``tc.task_state`` of a CRIU core image (``core-PID.img``: two magics, then one entry:
    a 32-bit size and a core_entry); None for a thread's core (no ``tc``) or a damaged one."""
    from berth.runtime.checkpoint import _pb_fields, _pb_varints

    if len(data) < 12:
        return None
    size = int.from_bytes(data[8:12], "little")
    entry = data[12 : 12 + size]
    if len(entry) != size:
        return None
    try:
        tc = None
        for num, wire, value in _pb_fields(entry):
            if num == 3 and wire == 2 and isinstance(value, bytes):  # core_entry.tc
                tc = value
        return None if tc is None else _pb_varints(tc).get(1)  # task_core_entry.task_state
    except ValueError:
        return None


def stopped_at_dump(images: str) -> set[int]:
    """The pids (in the guest's pid namespace, as the images name them) of the processes that
    were stopped when dumped.  What cannot be read counts as running (as before)."""
    import re

    out: set[int] = set()
    try:
        names = os.listdir(images)
    except OSError:
        return out
    for name in names:
        m = re.fullmatch(r"core-([0-9]{1,9})\.img", name)
        if not m:
            continue
        try:
            with open(os.path.join(images, name), "rb") as f:
                data = f.read(1 << 20)
        except OSError:
            continue
        if core_task_state(data) == TASK_STOPPED:
            out.add(int(m[1]))
    return out


def ns_pids(pid: int) -> list[int]:
    """A process's pids in each pid namespace it is in, from the host's down (status's NSpid;
    empty if it is gone)."""
    text = _read(f"/proc/{pid}/status") or ""
    for line in text.splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def to_continue(init: int, pids: Sequence[int], stopped: set[int]) -> list[int]:
    """The restored processes to SIGCONT: ``init`` and ``pids`` and their descendants, but for
    those whose pid in the guest init's pid namespace is in ``stopped``
    (:func:`stopped_at_dump`)."""
    tasks = tasks_of([init, *pids])
    if not stopped:
        return tasks
    level = len(ns_pids(init)) - 1  # the guest's pid namespace's depth
    out = []
    for p in tasks:
        mine = ns_pids(p)
        if level >= 0 and len(mine) > level and mine[level] in stopped:
            continue
        out.append(p)
    return out


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
            if (
                why is None
                and want.program is not None
                and (task.get("status") or {}).get("State") != ord("Z")
            ):
                flags: int | None = 0
                try:
                    count, oldest, flags = read_oldest_filter(tid, task.get("filters"))
                except OSError as e:
                    count, oldest = 1, None
                    why = f"its seccomp filters cannot be read ({e})"
                if count or oldest != b"":  # (b"" with 0: it ended meanwhile)
                    why = why or filter_mismatch(count, oldest, want.program, flags)
            if why:
                raise StateError(
                    f"restored task {pid}" + (f" (thread {tid})" if tid != pid else "") + f": {why}"
                )
