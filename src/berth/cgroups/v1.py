"""OCI ``linux.resources`` → cgroup v1 file writes, as runc's ``libcontainer/cgroups/fs`` does.

Pure: what the executor must know about the cgroup now (current memory limit, swap accounting,
BFQ) comes in as arguments.
"""

from __future__ import annotations

from berth.cgroups import devices
from berth.cgroups.writes import FIELD, Write, device_number, integer, items, page_size, section
from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from typing import Any


def writes(
    resources: Mapping[str, Any],
    *,
    controllers: Collection[str] | None = None,
    mem_limit_now: int | None = None,
    has_swap: bool = True,
    bfq: bool = False,
    unified_ok: bool = False,
) -> list[Write]:
    """The v1 writes for ``resources``, in the order they must be done.

    ``controllers``: only emit (and check) sections whose hierarchy is in it (None: all).
    ``mem_limit_now``: the current ``memory.limit_in_bytes``, which decides whether swap or memory is
    written first when both change.  ``has_swap``: ``memory.memsw.*`` exists.  ``bfq``: the blkio
    hierarchy has BFQ's files (``blkio.bfq.weight``).  ``unified_ok``: a ``unified`` map is handled by
    the caller (hybrid host) rather than refused.
    """
    if resources.get("unified") and not unified_ok:
        raise UsageError(f"{FIELD}.unified", "needs cgroup v2, and this host has only cgroup v1")

    def want(c: str) -> bool:
        return controllers is None or c in controllers

    out: list[Write] = []
    if want("cpu"):
        out += _cpu(section(resources, "cpu"))
    if want("cpuset"):
        out += _cpuset(section(resources, "cpu"))
    if want("memory"):
        out += _memory(section(resources, "memory"), mem_limit_now, has_swap)
    if want("pids"):
        out += _pids(resources)
    if want("blkio"):
        out += _blkio(section(resources, "blockIO"), bfq)
    if want("hugetlb"):
        for i, entry in enumerate(items(resources, "hugepageLimits", FIELD)):
            field = f"{FIELD}.hugepageLimits[{i}]"
            limit = integer(entry, "limit", field, minimum=0)
            if limit is not None:
                out.append(Write("hugetlb", f"hugetlb.{page_size(entry, field)}.limit_in_bytes", str(limit)))
    if want("devices") and resources.get("devices") is not None:
        out += devices.v1_writes(devices.parse_rules(resources["devices"]))
    net = section(resources, "network")
    field = f"{FIELD}.network"
    class_id = integer(net, "classID", field, minimum=0)
    if class_id is not None and want("net_cls"):
        out.append(Write("net_cls", "net_cls.classid", str(class_id)))
    if want("net_prio"):
        for i, prio in enumerate(items(net, "priorities", field)):
            name, value = prio.get("name"), integer(prio, "priority", f"{field}.priorities[{i}]", minimum=0)
            if not isinstance(name, str) or not name or value is None:
                raise UsageError(f"{field}.priorities[{i}]", "needs a name and a priority")
            out.append(Write("net_prio", "net_prio.ifpriomap", f"{name} {value}"))
    return out


def _cpu(cpu: dict[str, Any]) -> list[Write]:
    field = f"{FIELD}.cpu"
    out = []
    rt_period = integer(cpu, "realtimePeriod", field, minimum=0)
    rt_runtime = integer(cpu, "realtimeRuntime", field, minimum=-1)
    if rt_period:
        out.append(Write("cpu", "cpu.rt_period_us", str(rt_period)))
    if rt_runtime:
        out.append(Write("cpu", "cpu.rt_runtime_us", str(rt_runtime)))
    shares = integer(cpu, "shares", field, minimum=0)
    if shares:
        out.append(Write("cpu", "cpu.shares", str(shares)))
    quota = integer(cpu, "quota", field, minimum=-1)
    period = integer(cpu, "period", field, minimum=0)
    burst = integer(cpu, "burst", field, minimum=0)
    # A new period or burst can be refused (EINVAL) until the new quota is in: retry after it.
    if period:
        out.append(Write("cpu", "cpu.cfs_period_us", str(period), retry=bool(quota)))
    if burst is not None:
        out.append(Write("cpu", "cpu.cfs_burst_us", str(burst), retry=bool(quota)))
    if quota:
        out.append(Write("cpu", "cpu.cfs_quota_us", str(quota)))
    idle = integer(cpu, "idle", field)
    if idle is not None:
        out.append(Write("cpu", "cpu.idle", str(idle)))
    return out


def _cpuset(cpu: dict[str, Any]) -> list[Write]:
    out = []
    for key in ("cpus", "mems"):
        value = cpu.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise UsageError(f"{FIELD}.cpu.{key}", f"must be a list like '0-3,5', not {value!r}")
        out.append(Write("cpuset", f"cpuset.{key}", value))
    return out


def _memory(mem: dict[str, Any], limit_now: int | None, has_swap: bool) -> list[Write]:
    field = f"{FIELD}.memory"
    limit = integer(mem, "limit", field, minimum=-1) or 0
    swap = integer(mem, "swap", field, minimum=-1) or 0
    out: list[Write] = []
    # Unlimited memory and no word on swap: unlimited swap too (runc), if swap is accounted at all.
    if limit == -1 and swap == 0 and has_swap:
        swap = -1
    limit_w = Write("memory", "memory.limit_in_bytes", str(limit)) if limit else None
    swap_w = Write("memory", "memory.memsw.limit_in_bytes", str(swap)) if swap else None
    if limit > 0 and swap > 0 and swap < limit:
        raise UsageError(f"{field}.swap", f"memory+swap limit {swap} is below the memory limit {limit}")
    # memory.memsw.limit_in_bytes must stay >= memory.limit_in_bytes at every step.
    if limit_w and swap_w and (swap == -1 or (limit_now is not None and limit_now < swap)):
        out += [swap_w, limit_w]
    else:
        out += [w for w in (limit_w, swap_w) if w]
    reservation = integer(mem, "reservation", field, minimum=-1)
    if reservation:
        out.append(Write("memory", "memory.soft_limit_in_bytes", str(reservation)))
    # memory.kernel is gone from the kernel (runc ignores it too); TCP buffers still have a v1 knob.
    kernel_tcp = integer(mem, "kernelTCP", field, minimum=-1)
    if kernel_tcp:
        out.append(Write("memory", "memory.kmem.tcp.limit_in_bytes", str(kernel_tcp)))
    if mem.get("disableOOMKiller") is True:
        out.append(Write("memory", "memory.oom_control", "1"))
    swappiness = integer(mem, "swappiness", field, minimum=-1)
    if swappiness is not None and swappiness != -1:
        if swappiness > 100:
            raise UsageError(f"{field}.swappiness", f"must be 0-100, not {swappiness}")
        out.append(Write("memory", "memory.swappiness", str(swappiness)))
    hierarchy = mem.get("useHierarchy")
    if isinstance(hierarchy, bool):
        out.append(Write("memory", "memory.use_hierarchy", "1" if hierarchy else "0"))
    return out


def _pids(resources: Mapping[str, Any]) -> list[Write]:
    pids = section(resources, "pids")
    limit = integer(pids, "limit", f"{FIELD}.pids")
    if limit is None:
        return []
    # runtime-spec: a limit <= 0 means no limit (runc's specconv turns it into "max").
    return [Write("pids", "pids.max", "max" if limit <= 0 else str(limit))]


def _blkio(blk: dict[str, Any], bfq: bool) -> list[Write]:
    field = f"{FIELD}.blockIO"
    prefix = "blkio.bfq." if bfq else "blkio."
    out = []
    weight = integer(blk, "weight", field, minimum=0)
    if weight:
        out.append(Write("blkio", f"{prefix}weight", str(weight)))
    leaf = integer(blk, "leafWeight", field, minimum=0)
    if leaf:
        out.append(Write("blkio", "blkio.leaf_weight", str(leaf)))
    for i, wd in enumerate(items(blk, "weightDevice", field)):
        f = f"{field}.weightDevice[{i}]"
        dev = device_number(wd, f)
        w = integer(wd, "weight", f, minimum=0)
        lw = integer(wd, "leafWeight", f, minimum=0)
        if w:
            out.append(Write("blkio", f"{prefix}weight_device", f"{dev} {w}"))
        if lw:
            out.append(Write("blkio", "blkio.leaf_weight_device", f"{dev} {lw}"))
    for key, file in THROTTLES.items():
        for i, td in enumerate(items(blk, key, field)):
            f = f"{field}.{key}[{i}]"
            rate = integer(td, "rate", f, minimum=0)
            if rate is None:
                raise UsageError(f, "needs a rate")
            out.append(Write("blkio", f"blkio.throttle.{file}", f"{device_number(td, f)} {rate}"))
    return out


THROTTLES = {
    "throttleReadBpsDevice": "read_bps_device",
    "throttleWriteBpsDevice": "write_bps_device",
    "throttleReadIOPSDevice": "read_iops_device",
    "throttleWriteIOPSDevice": "write_iops_device",
}
