"""The evaluation's network-latency target, read from bench/net.py's table (pure logic)."""

from __future__ import annotations

from bench.eval.experiments import net_latency_targets

TABLE = """path                         Gbit/s     max   ratio   RTT us   ratio
host loopback (native)        14.69   16.26    1.00     36.4    1.00
guest->host IPv6 mtu 65535    12.78   12.88    0.87      nan     nan
guest->host mtu 65535         13.82   14.02    0.94     36.1    0.99
UML guest->host (tap)          4.96    5.32    0.34    338.1    9.29
gVisor guest->host (veth)      0.72    1.18    0.05    329.0    9.04
"""


def test_berth_round_trip_against_each_peer() -> None:
    got = {what: (ratio, ok) for what, ratio, ok in net_latency_targets(TABLE)}
    assert got["berth network latency (TCP round trip) lower than uml"] == ("9.4×", True)
    assert got["berth network latency (TCP round trip) lower than gvisor"] == ("9.1×", True)


def test_slower_berth_is_a_miss_and_missing_rows_give_no_target() -> None:
    slow = TABLE.replace("    36.1    0.99", "   400.0   11.00")
    assert all(ok is False for _w, _r, ok in net_latency_targets(slow))
    assert net_latency_targets("gVisor guest->host (veth): failed: boom\n") == []
