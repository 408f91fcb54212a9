"""berth metrics: the Prometheus families built from a snapshot (pure), read back with the client
library's own parser, and the --listen parsing."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from berth.cli.metrics import parse, parse_listen
from berth.errors import UsageError
from berth.monitor import metrics


class _Fixed:
    def __init__(self, snap: dict, stopped: list[str]) -> None:
        self.snap, self.stopped = snap, stopped

    def collect(self):
        yield from metrics.families(self.snap, self.stopped)


def _scrape(snap: dict, stopped: list[str] = []) -> dict[str, dict[tuple, float]]:  # noqa: B006
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(snap, stopped))
    text = generate_latest(reg).decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        out.setdefault("_type_" + fam.name, {})[()] = {"counter": 1.0, "gauge": 2.0}[fam.type]
    return out


def _guest(**over) -> dict:
    s = {
        "cpu": {"usage_ns": 2_500_000_000, "user_ns": 2_000_000_000, "system_ns": 500_000_000,
                "throttled_ns": 10_000_000, "nr_throttled": 3, "nr_periods": 40},
        "memory": {"usage": 1 << 20, "max_usage": 2 << 20, "limit": 64 << 20, "rss": 4096, "anon": 4096,
                   "file": 8192, "mlocked": 0, "swap": None, "oom_kills": 1, "failcnt": 5},
        "pids": {"current": 3, "limit": None},
        "blkio": {"read_bytes": 100, "write_bytes": 200, "read_ios": 1, "write_ios": 2},
        "net": {c: i + 1 for i, c in enumerate(metrics.NET_COUNTERS)},
        "created": 1700000000.5,
    }  # fmt: skip
    s.update(over)
    return s


def test_values_units_and_types() -> None:
    got = _scrape({"web": _guest()})
    g = (("guest", "web"),)
    assert got["berth_guest_up"][g] == 1
    assert got["berth_guest_start_time_seconds"][g] == 1700000000.5
    assert got["berth_cpu_seconds_total"][g] == pytest.approx(2.5)
    assert got["berth_cpu_user_seconds_total"][g] == pytest.approx(2.0)
    assert got["berth_cpu_throttled_seconds_total"][g] == pytest.approx(0.01)
    assert got["berth_cpu_throttled_periods_total"][g] == 3
    assert got["berth_memory_usage_bytes"][g] == 1 << 20
    assert got["berth_memory_limit_bytes"][g] == 64 << 20
    assert got["berth_memory_oom_kills_total"][g] == 1
    assert got["berth_tasks"][g] == 3
    assert got["berth_blkio_write_bytes_total"][g] == 200
    # the host end receives what the guest sends
    net = {c: i + 1 for i, c in enumerate(metrics.NET_COUNTERS)}
    assert got["berth_network_transmit_bytes_total"][g] == net["rx_bytes"]
    assert got["berth_network_receive_bytes_total"][g] == net["tx_bytes"]
    assert got["_type_berth_cpu_seconds"][()] == 1.0  # counter
    assert got["_type_berth_memory_usage_bytes"][()] == 2.0  # gauge


def test_unknown_values_are_left_out_not_zero() -> None:
    got = _scrape({"a": _guest(net=None, pids={"current": 1, "limit": None})})
    assert (("guest", "a"),) not in got.get("berth_tasks_limit", {})
    assert (("guest", "a"),) not in got.get("berth_memory_swap_bytes", {})
    assert (("guest", "a"),) not in got.get("berth_network_transmit_bytes_total", {})
    assert got["berth_tasks"][(("guest", "a"),)] == 1


def test_stopped_guests_are_down_and_running_wins() -> None:
    got = _scrape({"a": _guest()}, stopped=["b", "a"])
    assert got["berth_guest_up"] == {(("guest", "a"),): 1, (("guest", "b"),): 0}
    assert (("guest", "b"),) not in got["berth_cpu_seconds_total"]


def test_several_guests_and_odd_label_text() -> None:
    odd = 'x"y\\z'
    got = _scrape({"a": _guest(), odd: _guest(cpu={"usage_ns": 1_000_000_000})})
    assert got["berth_cpu_seconds_total"] == {(("guest", "a"),): 2.5, (("guest", odd),): 1.0}


def test_no_guests_is_a_valid_scrape() -> None:
    got = _scrape({})
    assert "berth_cpu_seconds_total" not in got  # families with no samples
    assert got["_type_berth_cpu_seconds"] == {(): 1.0}  # still described, as a counter


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:9478", ("127.0.0.1", 9478)),
        ("[::]:9478", ("::", 9478)),
        ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize(
    "text", ["9478", "host:80", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:", "[::1]"]
)
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(text)


def test_parse_options() -> None:
    assert parse([]) == {"listen": None}
    assert parse(["--listen=127.0.0.1:1"]) == {"listen": ("127.0.0.1", 1)}
    with pytest.raises(UsageError, match="--listen"):
        parse(["--listen"])
    with pytest.raises(UsageError, match="--bogus"):
        parse(["--bogus"])
    with pytest.raises(UsageError, match="twice"):
        parse(["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:2"])


def test_collector_describes_its_families(tmp_path, monkeypatch) -> None:
    """The registry knows the names before a scrape, so ?name[]= filters work."""
    monkeypatch.setattr(metrics, "snapshot", lambda _run, _store: {"a": _guest()})
    reg = metrics.registry(str(tmp_path / "run"), str(tmp_path / "store"))
    text = generate_latest(reg.restricted_registry(["berth_guest_up", "berth_cpu_seconds_total"])).decode()
    assert 'berth_guest_up{guest="a"} 1.0' in text and 'berth_cpu_seconds_total{guest="a"} 2.5' in text
    assert "berth_memory_usage_bytes" not in text
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()  # reading made nothing


def test_bad_network_records_are_skipped(tmp_path) -> None:
    d = tmp_path / "net"
    d.mkdir()
    (d / "a.json").write_text("[1, 2]")  # not an object
    (d / "b.json").write_text("{not json")
    (d / "c.json").write_text('{"active": {"x": {"veth": "v0", "pid": "12"}, "y": {"veth": "v1", "pid": 7},'
                              ' "z": {"veth": 5}, "w": "no"}}')  # fmt: skip
    assert metrics.veths(str(tmp_path)) == {"x": ("v0", -1), "y": ("v1", 7)}
