"""Prometheus metrics of the running guests (`berth metrics`): one scrape in the text exposition
format, or served over HTTP for a Prometheus server to scrape.

Every figure is read at scrape time from the guest's cgroup (as `berth stats`) and, for a guest
on a bridge, from the host end of its veth pair; nothing is kept between scrapes, so the
cumulative ones are counters (Prometheus takes the rates).  One label, ``guest``: the container
id (a managed guest's name, or a `berth run` guest's id).  :func:`families` is pure (a snapshot
in, metric families out); :func:`snapshot` does the reading.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

# (name, help, kind, section, key, scale): kind "counter" or "gauge"; the value is
# stats[section][key] * scale, left out where the host does not account it (None).
# fmt: off
_CGROUP_METRICS: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("cpu_seconds", "CPU time used by the guest's processes", "counter", "cpu", "usage_ns", 1e-9),
    ("cpu_user_seconds", "CPU time in user mode", "counter", "cpu", "user_ns", 1e-9),
    ("cpu_system_seconds", "CPU time in kernel mode", "counter", "cpu", "system_ns", 1e-9),
    ("cpu_throttled_seconds", "time the guest's CPU cap held it back", "counter", "cpu", "throttled_ns", 1e-9),
    ("cpu_throttled_periods", "periods in which the CPU cap held it back", "counter", "cpu", "nr_throttled", 1),
    ("cpu_periods", "scheduler periods with runnable tasks under a cap", "counter", "cpu", "nr_periods", 1),
    ("memory_usage_bytes", "memory charged to the guest (RSS, page cache, kernel)", "gauge", "memory", "usage", 1),
    ("memory_max_usage_bytes", "peak of memory_usage_bytes", "gauge", "memory", "max_usage", 1),
    ("memory_limit_bytes", "the guest's memory limit (absent: none)", "gauge", "memory", "limit", 1),
    ("memory_rss_bytes", "resident anonymous memory", "gauge", "memory", "rss", 1),
    ("memory_anon_bytes", "anonymous memory", "gauge", "memory", "anon", 1),
    ("memory_file_bytes", "page cache", "gauge", "memory", "file", 1),
    ("memory_mlocked_bytes", "unevictable (mlocked) memory", "gauge", "memory", "mlocked", 1),
    ("memory_swap_bytes", "swap used", "gauge", "memory", "swap", 1),
    ("memory_oom_kills", "processes the OOM killer ended in the guest", "counter", "memory", "oom_kills", 1),
    ("memory_limit_hits", "times the memory limit was reached", "counter", "memory", "failcnt", 1),
    ("tasks", "processes and threads in the guest (the pids controller's count)", "gauge", "pids", "current", 1),
    ("tasks_limit", "the guest's limit on processes and threads (absent: none)", "gauge", "pids", "limit", 1),
    ("blkio_read_bytes", "bytes read from block devices", "counter", "blkio", "read_bytes", 1),
    ("blkio_write_bytes", "bytes written to block devices", "counter", "blkio", "write_bytes", 1),
    ("blkio_reads", "read operations on block devices", "counter", "blkio", "read_ios", 1),
    ("blkio_writes", "write operations on block devices", "counter", "blkio", "write_ios", 1),
)
# fmt: on
# The guest's traffic, seen from the host end of its veth: what the host end receives the guest sent.
_NET_METRICS: tuple[tuple[str, str, str], ...] = (
    ("network_transmit_bytes", "bytes the guest sent on its bridge", "rx_bytes"),
    ("network_receive_bytes", "bytes the guest received from its bridge", "tx_bytes"),
    ("network_transmit_packets", "packets the guest sent on its bridge", "rx_packets"),
    ("network_receive_packets", "packets the guest received from its bridge", "tx_packets"),
    ("network_transmit_dropped", "packets the guest sent that were dropped", "rx_dropped"),
    ("network_receive_dropped", "packets for the guest that were dropped", "tx_dropped"),
)
NET_COUNTERS = tuple(c for _n, _h, c in _NET_METRICS)
PREFIX = "berth_"


def families(snap: dict[str, dict[str, Any]], stopped: Iterable[str] = ()) -> Iterator[Any]:
    """Prometheus metric families for the running guests of ``snap`` ({guest: {"cpu": …,
    "memory": …, "pids": …, "blkio": …, "net": {counter: int} or None, "created": epoch
    seconds or None}}) and the managed guests ``stopped`` (berth_guest_up 0)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    up = GaugeMetricFamily(
        PREFIX + "guest_up", "1 for a running guest, 0 for a managed guest that is stopped", labels=["guest"]
    )
    for guest in sorted(set(stopped) - set(snap)):
        up.add_metric([guest], 0)
    started = GaugeMetricFamily(
        PREFIX + "guest_start_time_seconds",
        "when the guest's current run began (Unix time)",
        labels=["guest"],
    )
    for guest, s in sorted(snap.items()):
        up.add_metric([guest], 1)
        if s.get("created"):
            started.add_metric([guest], float(s["created"]))
    yield up
    yield started
    for name, text, kind, section, key, scale in _CGROUP_METRICS:
        fam = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
            PREFIX + name, text, labels=["guest"]
        )
        for guest, s in sorted(snap.items()):
            v = (s.get(section) or {}).get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                fam.add_metric([guest], v * scale)
        yield fam
    for name, text, counter in _NET_METRICS:
        fam = CounterMetricFamily(PREFIX + name, text, labels=["guest"])
        for guest, s in sorted(snap.items()):
            v = (s.get("net") or {}).get(counter)
            if isinstance(v, int):
                fam.add_metric([guest], v)
        yield fam


def veth_counters(ifname: str, sys_net: str = "/sys/class/net") -> dict[str, int] | None:
    """The statistics of host link ``ifname`` (None if it is gone)."""
    out = {}
    for c in NET_COUNTERS:
        try:
            with open(os.path.join(sys_net, ifname, "statistics", c), "rb") as f:
                out[c] = int(f.read())
        except (OSError, ValueError):
            return None
    return out


def veths(store_root: str) -> dict[str, tuple[str, int]]:
    """Guest -> (host end of its veth, pid of the init it was plugged for), from the network
    records of the store (:mod:`berth.net.guest`)."""
    from berth.monitor.sample import net_records

    return {
        name: (rec["veth"], pid)
        for name, rec, pid in net_records(store_root)
        if isinstance(rec.get("veth"), str) and rec["veth"]
    }


def stopped_guests(store_root: str, state_root: str, running: Iterable[str]) -> list[str]:
    """The managed guests of the store at ``store_root`` not among ``running``."""
    from berth.guests.store import Store

    return sorted(set(Store(store_root, state_root).names()) - set(running))


def snapshot(state_root: str, store_root: str) -> dict[str, dict[str, Any]]:
    """Read what :func:`families` needs, for every running container under ``state_root``."""
    from berth.monitor.sample import container_stats

    stats = container_stats(state_root, [], 0)
    links = veths(store_root)
    snap: dict[str, dict[str, Any]] = {}
    for guest, s in stats.items():
        link = links.get(guest)
        net = None
        if link is not None and link[1] in (0, s.get("pid")):  # plugged for this run of the guest
            net = veth_counters(link[0])
        snap[guest] = {**s, "net": net}
    return snap


class Collector:
    """A prometheus_client collector reading :func:`snapshot` at each scrape."""

    def __init__(self, state_root: str, store_root: str) -> None:
        self.state_root = state_root
        self.store_root = store_root

    def collect(self) -> Iterator[Any]:
        snap = snapshot(self.state_root, self.store_root)
        yield from families(snap, stopped_guests(self.store_root, self.state_root, snap))

    def describe(self) -> list[Any]:
        """The families without samples: the registry learns their names (``?name[]=`` filters)."""
        return list(families({}))


def registry(state_root: str, store_root: str) -> Any:
    """A registry holding only berth's collector (not the client library's process metrics)."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(state_root, store_root))
    return reg


def render(state_root: str, store_root: str) -> bytes:
    """One scrape, in the text exposition format."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry(state_root, store_root)))
