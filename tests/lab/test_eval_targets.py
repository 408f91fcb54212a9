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


def test_figures_beside_targets_are_rounded_down() -> None:
    from bench.eval.experiments import _pct, floor_text

    assert floor_text(94.96, 1) == "94.9"  # not "95.0" beside a 95 % target it missed
    assert floor_text(0.97996, 3) == "0.979"
    assert floor_text(10.0, 1) == "10.0"
    assert floor_text(float("nan"), 1) == "–"
    assert _pct([0.9496, 0.9499, 0.96]) == "94% (95–96)"  # the median 94.99 %: not "95%"
