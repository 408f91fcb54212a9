"""berth.policy.htb: the HTB class tree as data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from berth.errors import AdmissionError, UsageError
from berth.policy.htb import MAX_INDEX, MAX_QUANTUM, MIN_RATE_BPS, HtbPlan, NetRequest, burst_bytes, htb_tree

MBIT, GBIT = 10**6, 10**9


def test_tree_shape() -> None:
    plan = htb_tree(
        GBIT,
        [
            NetRequest("web", 0, rate_bps=300 * MBIT, ceil_bps=500 * MBIT),
            NetRequest("db", 10, share=300),
            NetRequest("ci", 5, share=100),
        ],
    )
    assert plan.root_handle == 0x10000
    assert plan.default_minor == 2
    assert plan.link.classid == "1:1"
    assert plan.link.parent == 0x10000  # the root qdisc
    assert (plan.link.rate_bps, plan.link.ceil_bps) == (GBIT, GBIT)
    assert plan.default.classid == "1:2"
    assert plan.default.rate_bps == MIN_RATE_BPS
    assert [c.name for c in plan.guests] == ["web", "ci", "db"]  # by index
    web, ci, db = plan.guests
    assert web.classid == "1:10"
    assert db.classid == "1:1a"
    assert db.handle == 0x1001A
    assert db.parent == 0x10001
    assert db.leaf_major == 0x1A
    assert (web.rate_bps, web.ceil_bps) == (300 * MBIT, 500 * MBIT)
    # 700 Mbit/s unguaranteed, split 3:1 between db and ci
    assert db.rate_bps == 525 * MBIT
    assert ci.rate_bps == 175 * MBIT
    assert db.ceil_bps == ci.ceil_bps == GBIT
    assert plan.guest("db") is db
    with pytest.raises(KeyError):
        plan.guest("nope")
    assert plan.classes()[:2] == (plan.link, plan.default)


def test_quantum_follows_share() -> None:
    plan = htb_tree(GBIT, [NetRequest("a", 0, share=50), NetRequest("b", 1, share=200)])
    assert plan.guest("a").quantum == 1514
    assert plan.default.quantum == 2 * 1514
    assert plan.guest("b").quantum == 4 * 1514
    big = htb_tree(GBIT, [NetRequest("a", 0, share=1), NetRequest("b", 1, share=10000)], mtu=1500)
    assert big.guest("b").quantum == MAX_QUANTUM
    assert big.guest("a").quantum == 1500


def test_large_mtu_quantum_and_burst() -> None:
    """With 64 KiB packets every quantum holds one packet, and the cap grows so shares still count."""
    frame = 65535
    plan = htb_tree(GBIT, [NetRequest("a", 0, share=100), NetRequest("b", 1, share=400)], mtu=frame)
    assert plan.mtu == frame
    assert plan.guest("a").quantum == frame
    assert plan.guest("b").quantum == 4 * frame  # above 200000: the cap is 16 packets
    big = htb_tree(GBIT, [NetRequest("a", 0, share=1), NetRequest("b", 1, share=10000)], mtu=frame)
    assert big.guest("b").quantum == 16 * frame
    assert burst_bytes(100 * 10**6) == 12_500 + 1600  # the old 1500-MTU figure
    assert burst_bytes(100 * 10**6, frame) > frame  # one packet always fits


def test_ceil_limits_share_and_rest_goes_to_others() -> None:
    plan = htb_tree(100 * MBIT, [NetRequest("a", 0, ceil_bps=10 * MBIT), NetRequest("b", 1)])
    assert plan.guest("a").rate_bps == 10 * MBIT
    assert plan.guest("b").rate_bps == 90 * MBIT


def test_ceil_above_link_is_lowered() -> None:
    plan = htb_tree(100 * MBIT, [NetRequest("a", 0, ceil_bps=GBIT)])
    assert plan.guest("a").ceil_bps == 100 * MBIT


def test_fully_guaranteed_link_leaves_minimum_rates() -> None:
    plan = htb_tree(100 * MBIT, [NetRequest("a", 0, rate_bps=100 * MBIT), NetRequest("b", 1)])
    assert plan.guest("b").rate_bps == MIN_RATE_BPS


def test_default_rate() -> None:
    plan = htb_tree(100 * MBIT, [NetRequest("a", 0)], default_rate_bps=10 * MBIT)
    assert plan.default.rate_bps == 10 * MBIT
    assert plan.guest("a").rate_bps == 90 * MBIT


def test_admission() -> None:
    with pytest.raises(AdmissionError) as exc:
        htb_tree(
            GBIT,
            [NetRequest("web", 0, rate_bps=600 * MBIT), NetRequest("db", 1, rate_bps=500 * MBIT)],
        )
    assert str(exc.value) == (
        "net-rate: the guarantees add up to 1.1Gbit/s, more than the link's 1Gbit/s "
        "(web 600Mbit/s, db 500Mbit/s)"
    )
    with pytest.raises(AdmissionError, match="default 200Mbit/s"):
        htb_tree(GBIT, [NetRequest("web", 0, rate_bps=900 * MBIT)], default_rate_bps=200 * MBIT)


@pytest.mark.parametrize(
    ("guests", "field"),
    [
        ([NetRequest("a", 0), NetRequest("a", 1)], "net"),
        ([NetRequest("a", 0), NetRequest("b", 0)], "net-index"),
        ([NetRequest("a", -1)], "net-index"),
        ([NetRequest("a", 0xFFF0)], "net-index"),
        ([NetRequest("a", MAX_INDEX + 1)], "net-index"),
        ([NetRequest("a", 0, share=0)], "net-share"),
        ([NetRequest("a", 0, rate_bps=0)], "net-rate"),
        ([NetRequest("a", 0, ceil_bps=-1)], "net-ceil"),
        ([NetRequest("a", 0, rate_bps=20, ceil_bps=10)], "net-ceil"),
    ],
)
def test_bad_requests(guests: list[NetRequest], field: str) -> None:
    with pytest.raises(UsageError) as exc:
        htb_tree(GBIT, guests)
    assert exc.value.field == field


def test_bad_link() -> None:
    with pytest.raises(UsageError, match="net-link-rate"):
        htb_tree(0, [])
    with pytest.raises(UsageError, match="net-mtu"):
        htb_tree(GBIT, [], mtu=10)
    assert htb_tree(GBIT, []).guests == ()


@st.composite
def net_sets(draw: st.DrawFn) -> tuple[int, list[NetRequest]]:
    link = draw(st.integers(MBIT, 100 * GBIT))
    indexes = draw(st.lists(st.integers(0, MAX_INDEX), min_size=1, max_size=10, unique=True))
    budget = link
    reqs = []
    for i, index in enumerate(indexes):
        rate = draw(st.none() | st.integers(1, max(1, budget)))
        if rate is not None:
            if rate > budget:
                rate = None
            else:
                budget -= rate
        ceil = draw(st.none() | st.integers(rate or 1, 2 * link))
        reqs.append(NetRequest(f"g{i}", index, rate, ceil, draw(st.integers(1, 10000))))
    return link, reqs


@settings(max_examples=150, deadline=None)
@given(net_sets())
def test_plan_invariants(host: tuple[int, list[NetRequest]]) -> None:
    link, reqs = host
    plan = htb_tree(link, reqs)
    minors = [c.minor for c in plan.classes()]
    assert len(set(minors)) == len(minors)
    for cls, req in zip(plan.guests, sorted(reqs, key=lambda r: r.index), strict=True):
        assert cls.name == req.name
        assert cls.minor == 0x10 + req.index
        assert 0 < cls.rate_bps <= cls.ceil_bps <= link
        assert cls.quantum >= 1514
        assert cls.quantum <= MAX_QUANTUM
        if req.rate_bps is not None:
            assert cls.rate_bps == req.rate_bps
    unguaranteed = [
        c for c, r in zip(plan.guests, sorted(reqs, key=lambda r: r.index), strict=True) if r.rate_bps is None
    ]
    free = link - sum(r.rate_bps or 0 for r in reqs)
    if all(c.rate_bps > MIN_RATE_BPS for c in unguaranteed):
        assert sum(c.rate_bps for c in unguaranteed) <= free


@settings(max_examples=100, deadline=None)
@given(net_sets(), st.data())
def test_classids_are_stable(host: tuple[int, list[NetRequest]], data: st.DataObject) -> None:
    """Stopping guests never renumbers the classes of the others."""
    link, reqs = host
    kept = data.draw(st.lists(st.sampled_from(reqs), unique_by=lambda r: r.name))
    before: HtbPlan = htb_tree(link, reqs)
    after = htb_tree(link, kept)
    for r in kept:
        assert after.guest(r.name).classid == before.guest(r.name).classid
