"""Cgroup statistics: pure parsers of the kernel's text files, and their normalization into one
shape for v1 and v2::

    {"cpu": {"usage_ns", "user_ns", "system_ns", "throttled_ns", "nr_throttled", "nr_periods"},
     "memory": {"usage", "max_usage", "limit", "rss", "anon", "file", "mlocked", "swap",
                "oom_kills", "failcnt"},
     "pids": {"current", "limit"},
     "blkio": {"read_bytes", "write_bytes", "read_ios", "write_ios"}}

A value the host does not report is None; an unlimited limit is None.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Reader = Callable[[str, str], "str | None"]

# v1 reports "no limit" as the largest page-aligned signed 64-bit value.
V1_UNLIMITED = 0x7FFFFFFFFFFFF000
USER_HZ = 100

CPU_KEYS = ("usage_ns", "user_ns", "system_ns", "throttled_ns", "nr_throttled", "nr_periods")
MEMORY_KEYS = (
    "usage",
    "max_usage",
    "limit",
    "rss",
    "anon",
    "file",
    "mlocked",
    "swap",
    "oom_kills",
    "failcnt",
)
PIDS_KEYS = ("current", "limit")
BLKIO_KEYS = ("read_bytes", "write_bytes", "read_ios", "write_ios")


def parse_flat(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat, cgroup.events, memory.oom_control …) as a dict."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_value(text: str | None) -> int | None:
    """A single-number file; ``max`` and v1's unlimited value are None."""
    if text is None:
        return None
    text = text.strip()
    if not text or text == "max":
        return None
    value = int(text)
    return None if value >= V1_UNLIMITED else value


def parse_blkio_v1(text: str) -> dict[str, int]:
    """``blkio.throttle.io_service*`` (``MAJ:MIN Op value`` lines) as totals per op, lower-case."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            op = parts[1].lower()
            out[op] = out.get(op, 0) + int(parts[2])
    return out


def parse_io_stat(text: str) -> dict[str, int]:
    """v2 ``io.stat`` (``MAJ:MIN rbytes=… wbytes=… rios=…``) summed over devices."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        for kv in line.split()[1:]:
            key, _, value = kv.partition("=")
            if value.isdigit():
                out[key] = out.get(key, 0) + int(value)
    return out


def _empty() -> dict[str, dict[str, int | None]]:
    return {
        "cpu": dict.fromkeys(CPU_KEYS),
        "memory": dict.fromkeys(MEMORY_KEYS),
        "pids": dict.fromkeys(PIDS_KEYS),
        "blkio": dict.fromkeys(BLKIO_KEYS),
    }


def memory_v1(
    stat: dict[str, int],
    usage: int | None,
    peak: int | None,
    limit: int | None,
    oom: dict[str, int],
    failcnt: int | None,
) -> dict[str, int | None]:
    """Normalized memory stats from the v1 files.  v1 has no mlocked count: ``unevictable`` (which
    mlocked pages are the main part of) stands in."""
    return {
        "usage": usage,
        "max_usage": peak,
        "limit": limit,
        "rss": stat.get("total_rss", stat.get("rss")),
        "anon": stat.get("total_rss", stat.get("rss")),
        "file": stat.get("total_cache", stat.get("cache")),
        "mlocked": stat.get("total_unevictable", stat.get("unevictable")),
        "swap": stat.get("total_swap", stat.get("swap")),
        "oom_kills": oom.get("oom_kill"),
        "failcnt": failcnt,
    }


def memory_v2(
    stat: dict[str, int],
    current: int | None,
    peak: int | None,
    limit: int | None,
    events: dict[str, int],
    swap: int | None,
) -> dict[str, int | None]:
    """Normalized memory stats from the v2 files (``unevictable`` stands in for mlocked, as on v1)."""
    return {
        "usage": current,
        "max_usage": peak,
        "limit": limit,
        "rss": stat.get("anon"),
        "anon": stat.get("anon"),
        "file": stat.get("file"),
        "mlocked": stat.get("unevictable"),
        "swap": swap,
        "oom_kills": events.get("oom_kill"),
        "failcnt": events.get("max"),
    }


def cpu_v1(
    usage: int | None,
    user: int | None,
    system: int | None,
    acct_stat: dict[str, int],
    cpu_stat: dict[str, int],
) -> dict[str, int | None]:
    """Normalized CPU stats from cpuacct.usage{,_user,_sys} (ns; cpuacct.stat's ticks as fallback)
    and cpu.stat."""
    tick = 1_000_000_000 // USER_HZ
    if user is None and "user" in acct_stat:
        user = acct_stat["user"] * tick
    if system is None and "system" in acct_stat:
        system = acct_stat["system"] * tick
    return {
        "usage_ns": usage,
        "user_ns": user,
        "system_ns": system,
        "throttled_ns": cpu_stat.get("throttled_time"),
        "nr_throttled": cpu_stat.get("nr_throttled"),
        "nr_periods": cpu_stat.get("nr_periods"),
    }


def cpu_v2(cpu_stat: dict[str, int]) -> dict[str, int | None]:
    """Normalized CPU stats from v2 cpu.stat (µs → ns)."""

    def ns(key: str) -> int | None:
        v = cpu_stat.get(key)
        return None if v is None else v * 1000

    return {
        "usage_ns": ns("usage_usec"),
        "user_ns": ns("user_usec"),
        "system_ns": ns("system_usec"),
        "throttled_ns": ns("throttled_usec"),
        "nr_throttled": cpu_stat.get("nr_throttled"),
        "nr_periods": cpu_stat.get("nr_periods"),
    }


def blkio_v1(service_bytes: dict[str, int], serviced: dict[str, int]) -> dict[str, int | None]:
    """Normalized I/O counters (a file with no device line yet means no I/O: 0)."""
    return {
        "read_bytes": service_bytes.get("read", 0),
        "write_bytes": service_bytes.get("write", 0),
        "read_ios": serviced.get("read", 0),
        "write_ios": serviced.get("write", 0),
    }


def blkio_v2(io: dict[str, int]) -> dict[str, int | None]:
    """Normalized I/O counters from io.stat (empty io.stat: no I/O yet, 0)."""
    return {
        "read_bytes": io.get("rbytes", 0),
        "write_bytes": io.get("wbytes", 0),
        "read_ios": io.get("rios", 0),
        "write_ios": io.get("wios", 0),
    }


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text.strip())
    except ValueError:
        return None


def collect_v1(read: Reader) -> dict[str, dict[str, int | None]]:
    """Stats from v1 hierarchies; ``read(controller, file)`` returns the text or None."""
    out = _empty()
    usage = _int(read("cpuacct", "cpuacct.usage"))
    cpu_stat = read("cpu", "cpu.stat")
    if usage is not None or cpu_stat is not None:
        out["cpu"] = cpu_v1(
            usage,
            _int(read("cpuacct", "cpuacct.usage_user")),
            _int(read("cpuacct", "cpuacct.usage_sys")),
            parse_flat(read("cpuacct", "cpuacct.stat") or ""),
            parse_flat(cpu_stat or ""),
        )
    stat = read("memory", "memory.stat")
    if stat is not None:
        out["memory"] = memory_v1(
            parse_flat(stat),
            _int(read("memory", "memory.usage_in_bytes")),
            _int(read("memory", "memory.max_usage_in_bytes")),
            parse_value(read("memory", "memory.limit_in_bytes")),
            parse_flat(read("memory", "memory.oom_control") or ""),
            _int(read("memory", "memory.failcnt")),
        )
    current = read("pids", "pids.current")
    if current is not None:
        out["pids"] = {"current": _int(current), "limit": parse_value(read("pids", "pids.max"))}
    sb = read("blkio", "blkio.throttle.io_service_bytes_recursive")
    if sb is not None:
        sv = read("blkio", "blkio.throttle.io_serviced_recursive") or ""
        out["blkio"] = blkio_v1(parse_blkio_v1(sb), parse_blkio_v1(sv))
    return out


def collect_v2(read: Reader) -> dict[str, dict[str, int | None]]:
    """Stats from a cgroup2 directory; ``read(controller, file)`` returns the text or None."""
    out = _empty()
    cpu_stat = read("cpu", "cpu.stat")  # core file: present even without the cpu controller
    if cpu_stat is not None:
        out["cpu"] = cpu_v2(parse_flat(cpu_stat))
    stat = read("memory", "memory.stat")
    if stat is not None:
        out["memory"] = memory_v2(
            parse_flat(stat),
            _int(read("memory", "memory.current")),
            _int(read("memory", "memory.peak")),
            parse_value(read("memory", "memory.max")),
            parse_flat(read("memory", "memory.events") or ""),
            _int(read("memory", "memory.swap.current")),
        )
    current = read("pids", "pids.current")
    if current is not None:
        out["pids"] = {"current": _int(current), "limit": parse_value(read("pids", "pids.max"))}
    io = read("io", "io.stat")
    if io is not None:
        out["blkio"] = blkio_v2(parse_io_stat(io))
    return out


def merge(
    first: dict[str, dict[str, int | None]], second: dict[str, dict[str, int | None]]
) -> dict[str, dict[str, int | None]]:
    """``first``, with its None values filled from ``second`` (hybrid: v1 first, then cgroup2)."""
    return {
        name: {k: v if v is not None else second.get(name, {}).get(k) for k, v in sec.items()}
        for name, sec in first.items()
    }
