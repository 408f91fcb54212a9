"""berth stats: what each running guest consumes, read from its cgroup (never from ps)."""

from __future__ import annotations

import sys

from berth.cli._args import seconds_option
from berth.errors import UsageError
from berth.policy.units import column_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HELP = """usage: berth stats [--json] [--interval SECONDS] [NAME...]

Resource use of the running guests (under BERTH_RUN), from their cgroup files:
CPU seconds, CPU % over the sampling interval (100% = one CPU) and over the guest's life,
throttled time, memory (usage, rss, anon, file, mlocked, swap, peak, limit), OOM kills,
processes, block I/O bytes and operations.

  --json              one JSON object: {name: {cpu: …, memory: …, pids: …, blkio: …}}
  --interval SECONDS  sampling interval for CPU % (default 0.5; 0: lifetime average only)
"""


def parse(argv: list[str]) -> dict[str, Any]:
    o: dict[str, Any] = {"json": False, "interval": 0.5, "names": []}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            sys.stdout.write(HELP)
            raise SystemExit(0)
        if a == "--json":
            o["json"] = True
        elif a == "--interval" or a.startswith("--interval="):
            o["interval"], i = seconds_option(argv, i, 0, 60)
        elif a.startswith("-"):
            raise UsageError(a, "unknown option (see 'berth stats --help')")
        else:
            o["names"].append(a)
        i += 1
    return o


def collect(state_root: str, names: list[str], interval: float) -> dict[str, dict[str, Any]]:
    """Stats of the running guests ``names`` (all when empty) under ``state_root``."""
    from berth.monitor.sample import container_stats

    return container_stats(state_root, names, interval)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(stats: dict[str, dict[str, Any]]) -> str:
    cols = ["NAME", "CPU-S", "CPU%", "THROTTLED", "MEM", "RSS", "ANON", "FILE", "MLOCK", "SWAP",
            "PEAK", "LIMIT", "OOM", "PIDS", "BLK-R", "BLK-W", "IOPS-R/W"]  # fmt: skip
    rows = [cols]
    for name, s in sorted(stats.items()):
        cpu, mem, pids, blk = s["cpu"], s["memory"], s["pids"], s["blkio"]
        thr = cpu.get("throttled_ns")
        rows.append([
            name,
            _num(cpu.get("seconds"), ".2f"),
            _num(cpu.get("percent"), ".1f"),
            "-" if thr is None else f"{thr / 1e9:.2f}s",
            column_size(mem.get("usage")), column_size(mem.get("rss")), column_size(mem.get("anon")), column_size(mem.get("file")),
            column_size(mem.get("mlocked")), column_size(mem.get("swap")), column_size(mem.get("max_usage")),
            column_size(mem.get("limit")),
            _num(mem.get("oom_kills"), "d"),
            f"{_num(pids.get('current'), 'd')}/{_num(pids.get('limit'), 'd') if pids.get('limit') else 'max'}",
            column_size(blk.get("read_bytes")), column_size(blk.get("write_bytes")),
            f"{_num(blk.get('read_ios'), 'd')}/{_num(blk.get('write_ios'), 'd')}",
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )


def main(argv: list[str]) -> int:
    from berth.cli import env_paths

    o = parse(argv)
    _store, state_root, _parent = env_paths()
    stats = collect(state_root, o["names"], o["interval"])
    if o["json"]:
        import json

        sys.stdout.write(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
