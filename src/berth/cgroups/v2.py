"""OCI ``linux.resources`` → cgroup v2 file writes, as runc's ``libcontainer/cgroups/fs2`` does
(with runc's specconv conversions: shares → weight, memory+swap → swap.max, blkio weight → io.weight).

Pure.  Devices are not file writes on v2: see :mod:`berth.cgroups.devices`.
"""

from __future__ import annotations

from berth.cgroups.v1 import THROTTLES
from berth.cgroups.writes import FIELD, Write, device_number, integer, items, page_size, section
from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from typing import Any

_IO_MAX_KEYS = {
    "read_bps_device": "rbps",
    "write_bps_device": "wbps",
    "read_iops_device": "riops",
    "write_iops_device": "wiops",
}


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2-262144) → cpu.weight (1-10000), runc's formula; 0 stays 0 (unset)."""
    if shares == 0:
        return 0
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """blkio.weight (10-1000) → io.weight (1-10000), runc's formula; 0 stays 0 (unset)."""
    if weight == 0:
        return 0
    weight = min(max(weight, 10), 1000)
    return 1 + ((weight - 10) * 9999) // 990


def swap_max(swap: int, limit: int) -> int:
    """The v2 ``memory.swap.max`` for the OCI (v1 style) memory+swap ``swap`` and memory ``limit``.

    -1 is "max", 0 "leave alone"; otherwise swap - limit.
    """
    if limit == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if limit in (0, -1):
        raise UsageError(f"{FIELD}.memory.swap", "a swap limit needs a memory limit")
    if swap < limit:
        raise UsageError(
            f"{FIELD}.memory.swap", f"memory+swap limit {swap} is below the memory limit {limit}"
        )
    return swap - limit


def _num(v: int) -> str:
    return "max" if v == -1 else str(v)


def writes(
    resources: Mapping[str, Any],
    *,
    controllers: Collection[str] | None = None,
    bfq: bool = False,
) -> list[Write]:
    """The v2 writes for ``resources``, in order; the ``unified`` map comes last so it wins.

    ``controllers``: only emit (and check) sections of these v2 controllers (None: all); a
    ``unified`` key of a controller outside it is refused.  ``bfq``: ``io.bfq.weight`` exists.
    """

    def want(c: str) -> bool:
        return controllers is None or c in controllers

    out: list[Write] = []
    cpu = section(resources, "cpu")
    if want("cpu"):
        out += _cpu(cpu)
    if want("cpuset"):
        for key in ("cpus", "mems"):
            value = cpu.get(key)
            if value:
                if not isinstance(value, str):
                    raise UsageError(f"{FIELD}.cpu.{key}", f"must be a list like '0-3,5', not {value!r}")
                out.append(Write("cpuset", f"cpuset.{key}", value))
    if want("memory"):
        out += _memory(section(resources, "memory"))
    if want("pids"):
        limit = integer(section(resources, "pids"), "limit", f"{FIELD}.pids")
        if limit is not None:
            out.append(Write("pids", "pids.max", "max" if limit <= 0 else str(limit)))
    if want("io"):
        out += _io(section(resources, "blockIO"), bfq)
    if want("hugetlb"):
        for i, entry in enumerate(items(resources, "hugepageLimits", FIELD)):
            field = f"{FIELD}.hugepageLimits[{i}]"
            limit = integer(entry, "limit", field, minimum=0)
            if limit is not None:
                out.append(Write("hugetlb", f"hugetlb.{page_size(entry, field)}.max", str(limit)))
    # network (net_cls/net_prio) has no v2 controller: ignored, as runc does.
    out += unified_writes(section(resources, "unified"), controllers)
    return out


def unified_writes(unified: Mapping[str, Any], controllers: Collection[str] | None) -> list[Write]:
    """The OCI ``unified`` map: file name → value, written as is into the cgroup2 directory."""
    out = []
    for key, value in unified.items():
        field = f"{FIELD}.unified.{key}"
        if not isinstance(key, str) or "/" in key or "." not in key or key.startswith("."):
            raise UsageError(field, "must be a cgroup file name like 'memory.high'")
        if not isinstance(value, str):
            raise UsageError(field, f"value must be a string, not {value!r}")
        controller = key.split(".", 1)[0]
        if controller == "cgroup":
            controller = ""
        elif controllers is not None and controller not in controllers:
            raise UsageError(field, f"controller {controller!r} is not available on the cgroup2 hierarchy")
        out.append(Write(controller, key, value))
    return out


def _cpu(cpu: dict[str, Any]) -> list[Write]:
    field = f"{FIELD}.cpu"
    for key in ("realtimeRuntime", "realtimePeriod"):
        if integer(cpu, key, field):
            raise UsageError(f"{field}.{key}", "realtime scheduling limits are not supported on cgroup v2")
    out = []
    idle = integer(cpu, "idle", field)
    if idle is not None:
        out.append(Write("cpu", "cpu.idle", str(idle)))
    weight = shares_to_weight(integer(cpu, "shares", field, minimum=0) or 0)
    if weight:
        out.append(Write("cpu", "cpu.weight", str(weight)))
    quota = integer(cpu, "quota", field, minimum=-1) or 0
    period = integer(cpu, "period", field, minimum=0) or 0
    burst = integer(cpu, "burst", field, minimum=0)
    if burst is not None:
        # cpu.max.burst may be refused until cpu.max allows it: retry after.
        out.append(Write("cpu", "cpu.max.burst", str(burst), retry=bool(quota or period)))
    if quota or period:
        value = str(quota) if quota > 0 else "max"
        if period:
            value += f" {period}"
        out.append(Write("cpu", "cpu.max", value))
    return out


def _memory(mem: dict[str, Any]) -> list[Write]:
    field = f"{FIELD}.memory"
    limit = integer(mem, "limit", field, minimum=-1) or 0
    swap = integer(mem, "swap", field, minimum=-1) or 0
    out = []
    if limit or swap:
        sw = swap_max(swap, limit)
        value = _num(sw) if sw else ("0" if swap > 0 else "")
        if value:
            # No swap accounting (no file): "max" and "0" are what we have anyway.
            out.append(Write("memory", "memory.swap.max", value, optional=value in ("max", "0")))
    if limit:
        out.append(Write("memory", "memory.max", _num(limit)))
    reservation = integer(mem, "reservation", field, minimum=-1)
    if reservation:
        # runc (and crun) map the v1 soft limit to memory.low, the v2 best-effort protection.
        out.append(Write("memory", "memory.low", _num(reservation)))
    swappiness = integer(mem, "swappiness", field, minimum=-1)
    if swappiness is not None and swappiness > 100:
        raise UsageError(f"{field}.swappiness", f"must be 0-100, not {swappiness}")
    # swappiness, disableOOMKiller, useHierarchy, kernel, kernelTCP: no v2 knob; ignored as runc does.
    return out


def _io(blk: dict[str, Any], bfq: bool) -> list[Write]:
    field = f"{FIELD}.blockIO"
    out = []
    weight = integer(blk, "weight", field, minimum=0)
    if weight:
        if not 10 <= weight <= 1000:
            raise UsageError(f"{field}.weight", f"must be 10-1000, not {weight}")
        if bfq:
            out.append(Write("io", "io.bfq.weight", str(weight)))
        else:
            out.append(Write("io", "io.weight", str(blkio_to_io_weight(weight))))
    for i, wd in enumerate(items(blk, "weightDevice", field)):
        f = f"{field}.weightDevice[{i}]"
        w = integer(wd, "weight", f, minimum=0)
        if w:
            out.append(Write("io", "io.bfq.weight", f"{device_number(wd, f)} {w}"))
    for key, v1_file in THROTTLES.items():
        for i, td in enumerate(items(blk, key, field)):
            f = f"{field}.{key}[{i}]"
            rate = integer(td, "rate", f, minimum=0)
            if rate is None:
                raise UsageError(f, "needs a rate")
            # rate 0 means "no limit" in v1; in io.max that is "max".
            out.append(
                Write("io", "io.max", f"{device_number(td, f)} {_IO_MAX_KEYS[v1_file]}={rate or 'max'}")
            )
    return out
