"""berth-runtime events [--stats] [--interval 5s] ID: resource usage as runc's event JSON."""

from __future__ import annotations

from berth.oci.args import duration, need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context


def _n(v: Any) -> int:
    return int(v or 0)


def runc_stats(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """berth's normalized cgroup stats in runc's ``types.Stats`` shape."""
    cpu, mem, pids, blk = (s.get(k) or {} for k in ("cpu", "memory", "pids", "blkio"))
    return {
        "cpu": {
            "usage": {"total": _n(cpu.get("usage_ns")), "user": _n(cpu.get("user_ns")),
                      "kernel": _n(cpu.get("system_ns"))},
            "throttling": {"periods": _n(cpu.get("nr_periods")), "throttledPeriods": _n(cpu.get("nr_throttled")),
                           "throttledTime": _n(cpu.get("throttled_ns"))},
        },
        "memory": {
            "usage": {"usage": _n(mem.get("usage")), "max": _n(mem.get("max_usage")),
                      "limit": _n(mem.get("limit")), "failcnt": _n(mem.get("failcnt"))},
            "swap": {"usage": _n(mem.get("swap"))},
            "raw": {"rss": _n(mem.get("rss")), "anon": _n(mem.get("anon")), "file": _n(mem.get("file")),
                    "oom_kill": _n(mem.get("oom_kills"))},
        },
        "pids": {"current": _n(pids.get("current")), "limit": _n(pids.get("limit"))},
        "blkio": {"ioServiceBytesRecursive": [
            {"op": "Read", "value": _n(blk.get("read_bytes"))}, {"op": "Write", "value": _n(blk.get("write_bytes"))}]},
    }  # fmt: skip


def main(ctx: Context, argv: list[str]) -> int:
    import json
    import sys
    import time

    from berth.runtime import state as st
    from berth.runtime.container import Container

    opts, rest = parse(argv, valued={"interval": "interval"}, flags={"stats": "stats"})
    cid = need_id(rest, "events")
    interval = duration(opts.get("interval") or "5s")
    while True:
        c = Container.load(ctx.root, cid)
        if c.status() == st.STOPPED and not opts.get("stats"):
            return 0
        cg = c.cgroup()
        data = runc_stats(cg.stats()) if cg is not None else {}
        sys.stdout.write(json.dumps({"type": "stats", "id": cid, "data": data}) + "\n")
        sys.stdout.flush()
        if opts.get("stats"):
            return 0
        time.sleep(interval)
