"""Memory limits: docker's rules for memory, swap and reservation, and the ANON and MEMLOCK
limits Linux-VServer had and the kernel's memory cgroup lacks.

Memory, swap, reservation (:func:`validate_memory`), as docker checks them:

* ``memory`` (``memory.max`` / ``memory.limit_in_bytes``) is at least 6 MiB.
* ``memory_swap`` is docker's ``--memory-swap``: memory *plus* swap, ``-1`` for unlimited swap.
  It needs a memory limit and may not be below it; equal means no swap.  Unset with a memory
  limit it is twice the memory (as much swap as memory), as docker does.
* ``reservation`` (``memory.low`` / ``memory.soft_limit_in_bytes``) is at least 6 MiB and at most
  the memory limit.  Reservations are admitted against host RAM by
  :func:`berth.policy.admission.admit_memory`.

ANON and MEMLOCK, enforced by the guest's supervisor from what the kernel reports:

* **ANON** limits the guest's anonymous resident memory (heap, stacks, private mappings), not
  its page cache.  :func:`anon_bytes` reads it from ``memory.stat``: ``anon`` on v2,
  ``total_rss`` (hierarchical, or ``rss``) on v1; swapped-out anonymous memory does not count, as
  it is no longer resident.  :func:`anon_overrun` says whether the limit is exceeded; the
  supervisor then acts (lowers ``memory.high`` to reclaim, or stops the guest, by its policy).
* **MEMLOCK** limits the memory the guest's processes hold locked (``mlock``), the sum of their
  ``VmLck`` in ``/proc/PID/status`` (:func:`parse_proc_status`).  ``RLIMIT_MEMLOCK`` bounds each
  process alone; the guest-wide sum needs the supervisor.  On overrun it kills *one* process,
  :func:`memlock_victim`: the largest ``VmLck`` holder (killing it frees the most), the youngest on
  ties (``start_time`` largest: the newcomer broke the limit, long-running services are spared),
  then the largest RSS, then the highest pid.  It checks again after the kill and repeats while
  the guest is over, so one check never kills more than needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from berth.errors import UsageError
from berth.policy.units import format_size

#: docker's minimum for ``--memory`` and ``--memory-reservation``.
MIN_MEMORY = 6 * 1024 * 1024
UNLIMITED = -1
_HEX_PREFIXES = ("Cap", "Sig", "Shd", "Cpus_allowed", "Mems_allowed")


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """Validated memory settings in bytes; None means no limit (or no reservation)."""

    memory: int | None
    memory_swap: int | None
    reservation: int | None

    @property
    def swap_max(self) -> int | None:
        """cgroup v2 ``memory.swap.max`` (swap alone): None for ``max``."""
        if self.memory is None or self.memory_swap is None:
            return None
        return self.memory_swap - self.memory

    @property
    def memsw_limit(self) -> int:
        """cgroup v1 ``memory.memsw.limit_in_bytes``: -1 for unlimited."""
        return UNLIMITED if self.memory_swap is None else self.memory_swap


def _bytes(field: str, value: int | None, allow_unlimited: bool = False) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(field, f"{value!r} is not a whole number of bytes")
    if allow_unlimited and value == UNLIMITED:
        return value
    if value < 0:
        raise UsageError(field, f"{value} bytes is negative")
    return value or None


def validate_memory(
    memory: int | None = None, memory_swap: int | None = None, reservation: int | None = None
) -> MemoryLimits:
    """Check docker's rules and fill in the default swap; 0 means unset, like docker."""
    mem = _bytes("memory", memory)
    swap = _bytes("memory-swap", memory_swap, allow_unlimited=True)
    res = _bytes("memory-reservation", reservation)
    if mem is not None and mem < MIN_MEMORY:
        raise UsageError("memory", f"{format_size(mem)} is below the minimum of {format_size(MIN_MEMORY)}")
    if res is not None and res < MIN_MEMORY:
        raise UsageError(
            "memory-reservation", f"{format_size(res)} is below the minimum of {format_size(MIN_MEMORY)}"
        )
    if swap is not None and swap != UNLIMITED and mem is None:
        raise UsageError("memory-swap", "needs a memory limit (it is memory plus swap)")
    if mem is not None and swap is not None and swap != UNLIMITED and swap < mem:
        raise UsageError(
            "memory-swap",
            f"{format_size(swap)} is below the memory limit {format_size(mem)} (it is memory plus swap)",
        )
    if mem is not None and res is not None and res > mem:
        raise UsageError(
            "memory-reservation", f"{format_size(res)} is above the memory limit {format_size(mem)}"
        )
    if swap == UNLIMITED:
        total = None
    elif swap is None:
        total = None if mem is None else 2 * mem
    else:
        total = swap
    return MemoryLimits(memory=mem, memory_swap=total, reservation=res)


def anon_bytes(memory_stat: Mapping[str, int]) -> int:
    """The guest's anonymous resident memory from a parsed ``memory.stat`` (v2 or v1)."""
    for key in ("anon", "total_rss", "rss"):
        if key in memory_stat:
            return memory_stat[key]
    raise ValueError("memory.stat has no anon (v2), total_rss or rss (v1) entry")


def anon_overrun(limit: int | None, memory_stat: Mapping[str, int]) -> bool:
    """True if the guest's anonymous memory is above its ANON *limit* (None: no limit)."""
    return limit is not None and anon_bytes(memory_stat) > limit


class LockedProcess(NamedTuple):
    """One process of a guest as the MEMLOCK check sees it (any 4-tuple in this order will do)."""

    pid: int
    vmlck: int
    rss: int
    start_time: int


def memlock_victim(
    limit: int | None, processes: Iterable[tuple[int, int, int, int] | LockedProcess]
) -> int | None:
    """The pid to kill when the guest's locked memory ``Σ VmLck`` exceeds *limit*, else None.

    *processes* are ``(pid, vmlck_bytes, rss_bytes, start_time)`` (start_time in any increasing
    unit, e.g. field 22 of ``/proc/PID/stat``).  The victim is the largest VmLck holder, then the
    youngest, the largest RSS, the highest pid.
    """
    procs = [LockedProcess(*p) for p in processes]
    if limit is None or sum(p.vmlck for p in procs) <= limit:
        return None
    return max(procs, key=lambda p: (p.vmlck, p.start_time, p.rss, p.pid)).pid


def parse_proc_status(text: str) -> dict[str, int]:
    """The numeric fields of ``/proc/PID/status``: sizes (``N kB``) in bytes, counts as ints.

    ``VmLck: 4096 kB`` becomes ``{"VmLck": 4194304}``, ``Threads: 3`` ``{"Threads": 3}``,
    ``Umask: 0022`` is read as octal (18).  Fields with several or non-numeric values (``Uid``,
    ``State``) and hexadecimal masks (``Cap*``, ``Sig*``, ``Cpus_allowed``) are left out.
    Kernel threads have no ``Vm*`` lines: read with ``.get("VmLck", 0)``.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon or key.startswith(_HEX_PREFIXES):
            continue
        parts = value.split()
        if key == "Umask" and len(parts) == 1:
            out[key] = int(parts[0], 8)
        elif len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
        elif len(parts) == 1 and parts[0].isdigit():
            out[key] = int(parts[0])
    return out
