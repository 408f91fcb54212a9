"""berth.policy.cpu: fair share + reservations + caps -> weights, quota, burst; the CFS model."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from berth.errors import AdmissionError, UsageError
from berth.policy.cpu import (
    CpuKnobs,
    CpuRequest,
    compute,
    effective_cap,
    simulate,
    targets,
    water_fill,
)

# --- examples ------------------------------------------------------------------------------


def test_targets_issue_example() -> None:
    # C = 4: a reserves 1, c reserves 0.5 with share 0; b and a split the 2.5 unreserved 1:1.
    reqs = [CpuRequest("a", reserve=1), CpuRequest("b"), CpuRequest("c", share=0, reserve=0.5)]
    f = targets(reqs, 4)
    assert f == pytest.approx({"a": 2.25, "b": 1.25, "c": 0.5})
    knobs = compute(reqs, 4)
    assert knobs["a"].weight_v2 == 10000
    assert knobs["b"].weight_v2 == round(10000 * 1.25 / 2.25)
    assert knobs["a"].shares_v1 == 262144
    assert knobs["c"].quota_us == 50_000  # share 0: capped at its reservation
    assert knobs["a"].quota_us is None


def test_no_reservations_weights_follow_shares() -> None:
    knobs = compute([CpuRequest("a", share=100), CpuRequest("b", share=200), CpuRequest("c", share=50)], 2)
    assert [knobs[n].weight_v2 for n in "abc"] == [5000, 10000, 2500]
    assert [knobs[n].shares_v1 for n in "abc"] == [131072, 262144, 65536]


def test_full_contention_simulation_matches_targets() -> None:
    reqs = [CpuRequest("a", reserve=1), CpuRequest("b"), CpuRequest("c", share=0, reserve=0.5)]
    got = simulate(reqs, 4, {"a": 4, "b": 4, "c": 4})
    assert got == pytest.approx({"a": 2.25, "b": 1.25, "c": 0.5}, abs=1e-3)
    # c idle: its 0.5 goes to a and b in proportion 2.25 : 1.25
    got = simulate(reqs, 4, {"a": 4, "b": 4})
    assert got["a"] == pytest.approx(4 * 2.25 / 3.5, abs=1e-3)
    assert got["c"] == 0
    # only c busy: never more than its reservation
    assert simulate(reqs, 4, {"c": 4})["c"] == pytest.approx(0.5)


def test_single_guest_gets_the_host() -> None:
    assert simulate([CpuRequest("a")], 2, {"a": 8}) == {"a": 2.0}
    assert compute([CpuRequest("a", share=1)], 2)["a"].weight_v2 == 10000


def test_all_share_zero_keeps_the_rest_idle() -> None:
    reqs = [CpuRequest("a", share=0, reserve=0.5), CpuRequest("b", share=0, reserve=1)]
    assert targets(reqs, 4) == {"a": 0.5, "b": 1.0}
    assert simulate(reqs, 4, {"a": 4, "b": 4}) == pytest.approx({"a": 0.5, "b": 1.0})


def test_fully_reserved_host_gives_unreserved_guest_minimum_weight() -> None:
    knobs = compute([CpuRequest("a", reserve=2), CpuRequest("b")], 2)
    assert knobs["b"].weight_v2 == 1
    assert knobs["b"].shares_v1 == 2


def test_cap_and_burst() -> None:
    k = compute([CpuRequest("a", cap=0.5, burst_us=20_000)], 2)["a"]
    assert k == CpuKnobs(
        shares_v1=262144, weight_v2=10000, quota_us=50_000, period_us=100_000, burst_us=20_000
    )
    assert k.cap == 0.5
    assert k.cpu_max == "50000 100000"
    assert k.cfs_quota_us == 50_000
    free = compute([CpuRequest("a")], 2)["a"]
    assert free.cpu_max == "max 100000"
    assert free.cfs_quota_us == -1
    assert free.cap is None
    assert compute([CpuRequest("a", cap=1.5)], 2, period_us=10_000)["a"].cpu_max == "15000 10000"
    # burst equal to the quota is the kernel's limit and allowed
    assert compute([CpuRequest("a", cap=0.5, burst_us=50_000)], 2)["a"].burst_us == 50_000


def test_share_zero_cap_is_the_reservation() -> None:
    assert effective_cap(CpuRequest("a", share=0, reserve=0.5)) == 0.5
    assert effective_cap(CpuRequest("a", share=0, reserve=0.5, cap=1)) == 0.5
    assert effective_cap(CpuRequest("a", reserve=0.5, cap=1)) == 1
    assert effective_cap(CpuRequest("a")) is None


def test_empty() -> None:
    assert compute([], 2) == {}
    assert simulate([], 2, {}) == {}


@pytest.mark.parametrize(
    ("req", "field", "needle"),
    [
        (CpuRequest("a", share=0), "cpu-share", "share 0 needs a cpu-reserve"),
        (CpuRequest("a", share=-1), "cpu-share", "from 0 to 10000"),
        (CpuRequest("a", share=10001), "cpu-share", "from 0 to 10000"),
        (CpuRequest("a", share=True), "cpu-share", "whole number"),
        (CpuRequest("a", reserve=-0.5), "cpu-reserve", "≥ 0"),
        (CpuRequest("a", reserve=math.nan), "cpu-reserve", "≥ 0"),
        (CpuRequest("a", cap=0), "cpu-cap", "positive"),
        (CpuRequest("a", cap=math.inf), "cpu-cap", "positive"),
        (CpuRequest("a", reserve=1, cap=0.5), "cpu-cap", "below the reservation"),
        (CpuRequest("a", cap=0.005), "cpu-cap", "below the kernel's minimum of 1000 µs"),
        (CpuRequest("a", share=0, reserve=0.005), "cpu-reserve", "below the kernel's minimum"),
        (CpuRequest("a", burst_us=1000), "cpu-burst", "needs a cpu-cap"),
        (CpuRequest("a", cap=0.5, burst_us=50_001), "cpu-burst", "kernel allows burst ≤ quota"),
        (CpuRequest("a", cap=0.5, burst_us=-1), "cpu-burst", "≥ 0"),
    ],
)
def test_request_errors(req: CpuRequest, field: str, needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        compute([req], 2)
    assert exc.value.field == field
    assert needle in str(exc.value)
    assert "guest 'a'" in str(exc.value)


def test_set_errors() -> None:
    with pytest.raises(UsageError, match="appears twice"):
        compute([CpuRequest("a"), CpuRequest("a")], 2)
    with pytest.raises(
        AdmissionError, match=r"cpu-reserve: 2 guests reserve 2.50 CPUs, more than the 2.00 CPUs"
    ):
        compute([CpuRequest("a", reserve=1.5), CpuRequest("b", reserve=1)], 2)
    with pytest.raises(UsageError, match="cpu-capacity"):
        compute([CpuRequest("a")], 0)
    with pytest.raises(UsageError, match="cpu-period: 999 µs is outside"):
        compute([CpuRequest("a")], 2, period_us=999)
    with pytest.raises(UsageError, match="cpu-period"):
        compute([CpuRequest("a")], 2, period_us=2_000_000)


def test_period_changes_quota_minimum() -> None:
    # 0.005 CPUs is 5000 µs of a 1 s period: allowed there, not with 100 ms
    assert compute([CpuRequest("a", cap=0.005)], 2, period_us=1_000_000)["a"].quota_us == 5000


# --- water-filling ---------------------------------------------------------------------------


def test_water_fill_examples() -> None:
    assert water_fill(2, {"a": 1, "b": 1}, {"a": 5, "b": 5}) == {"a": 1.0, "b": 1.0}
    assert water_fill(2, {"a": 1, "b": 1}, {"a": 0.5, "b": 5}) == {"a": 0.5, "b": 1.5}
    assert water_fill(2, {"a": 3, "b": 1}, {"a": 5, "b": 5}) == {"a": 1.5, "b": 0.5}
    assert water_fill(2, {"a": 1, "b": 1}, {"a": 0.5, "b": 0.5}) == {"a": 0.5, "b": 0.5}
    assert water_fill(2, {"a": 1, "b": 1}, {"b": 3}) == {"a": 0.0, "b": 2.0}


@settings(max_examples=150)
@given(
    st.floats(0.5, 64),
    st.dictionaries(
        st.sampled_from("abcdefgh"),
        st.tuples(st.integers(1, 10000), st.floats(0, 64)),
        min_size=1,
    ),
)
def test_water_fill_properties(capacity: float, guests: dict[str, tuple[int, float]]) -> None:
    weights = {n: float(w) for n, (w, _) in guests.items()}
    limits = {n: lim for n, (_, lim) in guests.items()}
    x = water_fill(capacity, weights, limits)
    assert math.fsum(x.values()) == pytest.approx(
        min(capacity, math.fsum(limits.values())), rel=1e-9, abs=1e-9
    )
    for n in x:
        assert -1e-12 <= x[n] <= limits[n] + 1e-9
    # everyone below its limit is at the same level x/w, and those at their limit are not above it
    unsat = [n for n in x if x[n] < limits[n] - 1e-9]
    if unsat:
        level = x[unsat[0]] / weights[unsat[0]]
        for n in unsat:
            assert x[n] / weights[n] == pytest.approx(level, rel=1e-9)
        for n in x:
            assert x[n] <= level * weights[n] * (1 + 1e-9) + 1e-12


# --- the reservation guarantee ---------------------------------------------------------------


@st.composite
def guest_sets(draw: st.DrawFn) -> tuple[float, list[CpuRequest]]:
    """A host of 0.5..64 CPUs and 1..8 guests whose reservations fit (in 1/100 CPU)."""
    capacity = draw(st.integers(50, 6400)) / 100
    n = draw(st.integers(1, 8))
    budget = int(capacity * 100)
    reqs = []
    for i in range(n):
        reserve = draw(st.integers(0, budget) | st.just(0)) if budget else 0
        budget -= reserve
        share = draw(st.integers(0 if reserve >= 1 else 1, 10000))
        cap = None
        if share > 0 and draw(st.booleans()):
            cap = max(reserve, 1) / 100 + draw(st.integers(0, int(capacity * 100))) / 100
        reqs.append(CpuRequest(f"g{i}", share=share, reserve=reserve / 100, cap=cap))
    return capacity, reqs


def rounding_tolerance(reqs: list[CpuRequest], capacity: float) -> float:
    """What integer weights may cost a guest, in CPUs (see the cpu module notes)."""
    return max(targets(reqs, capacity).values()) * (len(reqs) + 1) / 10000 * 1.01 + 1e-9


def limits_of(reqs: list[CpuRequest], demand: dict[str, float], capacity: float) -> dict[str, float]:
    out = {}
    for r in reqs:
        cap = effective_cap(r)
        d = min(demand.get(r.name, 0.0), capacity)
        out[r.name] = d if cap is None else min(d, cap)
    return out


@settings(max_examples=200, deadline=None)
@given(guest_sets(), st.data(), st.sampled_from([1, 2]))
def test_busy_reserved_guest_gets_its_reservation(
    host: tuple[float, list[CpuRequest]], data: st.DataObject, version: int
) -> None:
    capacity, reqs = host
    busy = data.draw(st.sets(st.sampled_from([r.name for r in reqs]), min_size=1))
    # demand: a thread count (each thread at most one CPU) or a fraction of a CPU
    demand = {
        n: data.draw(st.integers(1, math.ceil(capacity)).map(float) | st.floats(0.01, capacity)) for n in busy
    }
    x = simulate(reqs, capacity, demand, cgroup_version=version)
    f = targets(reqs, capacity)
    limits = limits_of(reqs, demand, capacity)
    tol = rounding_tolerance(reqs, capacity)
    for r in reqs:
        assert x[r.name] <= limits[r.name] + 1e-6
        if r.name in busy:
            # the stronger claim: at least the full-contention target, or all it can use
            assert x[r.name] >= min(f[r.name], limits[r.name]) - tol
            assert x[r.name] >= min(r.reserve, limits[r.name]) - tol
        else:
            assert x[r.name] == 0
        if r.share == 0:
            assert x[r.name] <= r.reserve + 1e-5
    # work-conserving: the host idles only if the busy guests cannot use it
    assert math.fsum(x.values()) == pytest.approx(
        min(capacity, math.fsum(limits.values())), rel=1e-6, abs=1e-6
    )


@settings(max_examples=120, deadline=None)
@given(guest_sets())
def test_full_contention_splits_the_rest_by_share(host: tuple[float, list[CpuRequest]]) -> None:
    capacity, reqs = host
    reqs = [CpuRequest(r.name, share=r.share, reserve=r.reserve) for r in reqs]  # no caps
    assume(any(r.share for r in reqs))
    x = simulate(reqs, capacity, {r.name: capacity for r in reqs})
    free = capacity - sum(r.reserve for r in reqs)
    total_share = sum(r.share for r in reqs)
    tol = rounding_tolerance(reqs, capacity)
    for r in reqs:
        assert x[r.name] - r.reserve == pytest.approx(free * r.share / total_share, abs=tol)


@settings(max_examples=100, deadline=None)
@given(guest_sets())
def test_weights_are_proportional_to_targets(host: tuple[float, list[CpuRequest]]) -> None:
    capacity, reqs = host
    knobs = compute(reqs, capacity)
    f = targets(reqs, capacity)
    assert math.fsum(f.values()) <= capacity * (1 + 1e-9)
    tol = rounding_tolerance(reqs, capacity)
    for attr, top in (("weight_v2", 10000), ("shares_v1", 262144)):
        w = {n: getattr(k, attr) for n, k in knobs.items()}
        assert max(w.values()) == top
        total = sum(w.values())
        for n, weight in w.items():
            assert math.fsum(f.values()) * weight / total == pytest.approx(f[n], abs=tol)


@settings(max_examples=50, deadline=None)
@given(guest_sets())
def test_knob_ranges(host: tuple[float, list[CpuRequest]]) -> None:
    capacity, reqs = host
    for r in reqs:
        k = compute(reqs, capacity)[r.name]
        assert 1 <= k.weight_v2 <= 10000
        assert 2 <= k.shares_v1 <= 262144
        cap = effective_cap(r)
        assert k.quota_us == (None if cap is None else round(cap * 100_000))
        assert k.quota_us is None or k.quota_us >= 1000
