"""CPU fair share, reservations and token-bucket caps, turned into kernel knobs.

The model (Linux-VServer's, on CFS)
===================================
Each running guest *i* asks for a **share** ``s_i`` (an integer 0…10000, default 100), a
**reservation** ``r_i`` (CPUs it is guaranteed, default 0) and optionally a **cap** ``c_i`` (CPUs it
may never exceed on average) with a **burst** (the token-bucket size).  The host has capacity
``C`` CPUs, ``R = Σ r_j`` is reserved (admission control keeps ``R ≤ C``, see
:mod:`berth.policy.admission`) and ``S = Σ s_j``.

Under full contention (every guest busy) guest *i* should get its **target**

    f_i = r_i + (C - R) · s_i / S

its reservation plus its share of what is not reserved.  Σ f_i = C.  What a guest does not use
(it is idle, waits, or hits its cap) goes to the busy guests *in the same proportions* f_i.

Weights (``cpu.weight`` on cgroup v2, ``cpu.shares`` on v1)
-----------------------------------------------------------
CFS divides the CPU among runnable sibling cgroups in proportion to their weights, and what a
cgroup cannot use (it is capped or has fewer runnable threads) is divided among the others, again
by weight: it is *water-filling*.  With weights ``w_i`` and per-guest limits
``l_i = min(demand_i, c_i)`` (``demand_i`` ≤ the guest's runnable threads), the allocation is
``x_i = min(l_i, λ·w_i)`` with the level λ chosen so Σ x_i = min(C, Σ l_i)
(:func:`water_fill`).

berth sets ``w_i ∝ f_i``.  **Claim:** for any set *B* of busy guests, every busy guest gets
``x_i ≥ min(f_i, l_i) ≥ min(r_i, l_i)``.

*Proof.*  If Σ_B l_j ≤ C every busy guest gets all it can use: x_i = l_i.  Otherwise Σ_B x_j = C
and x_j ≤ λ·w_j for all j, so C ≤ λ·Σ_B w_j ≤ λ·W with W the sum over *all* guests; hence
λ ≥ C/W and x_i = min(l_i, λ·w_i) ≥ min(l_i, C·w_i/W) = min(l_i, f_i) because
C·w_i/W = f_i when w ∝ f and Σ f = C.  As f_i ≥ r_i the claim follows.  ∎

A guest's fraction of the weight only *grows* when others idle, so its reservation holds for
any busy subset, and the unreserved rest is split by share exactly when everyone is busy
(x_i - r_i = (C - R)·s_i/S) and in proportion to the targets otherwise.

Weights are integers, so they are scaled to use the kernel's whole range (the largest target gets
``cpu.weight`` 10000 and ``cpu.shares`` 262144; only ratios among the guests, all siblings under the
berth parent cgroup, matter) and rounded, with the kernel's minimum (1, resp. 2) for a guest whose
target rounds to nothing.  That makes ``C·w_i/W`` at most ``max_f·(n + ½)/10000`` CPUs below
``f_i`` for *n* guests on v2 (26x finer on v1): far below what CFS itself resolves.  Weights depend
on every running guest, so :func:`compute` must be run again whenever a guest starts, stops or
changes, and all weights written.

Decisions
---------
* **Share 0** with a reservation means *exactly the reservation, never more*: target f_i = r_i and
  a cap equal to the reservation (quota = r_i x period).  Share 0 *without* a reservation is a
  :class:`~berth.errors.UsageError`: such a guest would be promised nothing; giving it the
  minimum weight would silently make it a share-epsilon guest instead.
* **Caps** are CFS bandwidth control: ``quota = cap x period`` per ``period``.  The cap must be at
  least the reservation (a guest capped below its guarantee is a contradiction) and the quota at
  least 1000 µs, the kernel's minimum.
* **Period**: 100000 µs (100 ms) by default, the kernel's and docker's, configurable 1 ms … 1 s.
  A shorter period throttles more smoothly (a guest capped at 0.1 CPU runs 1 ms of every 10 ms
  instead of 10 ms then nothing for 90 ms, which hurts latency) but costs a timer per period per
  cgroup, and small quotas on many CPUs become inaccurate because each CPU takes bandwidth in
  5 ms slices (``sched_cfs_bandwidth_slice_us``).  100 ms keeps long-run accuracy; users who need
  latency under a cap set a smaller period.
* **Burst** is the token bucket's extra depth: ``cpu.cfs_burst_us`` (v1) / ``cpu.max.burst`` (v2),
  CPU time saved from unused quota that a guest may spend above its quota in one period, so it can
  run up to ``quota + burst`` in a period after idling.  The kernel rejects ``burst > quota``;
  berth raises a :class:`~berth.errors.UsageError` instead of clamping, since a silently shortened
  bucket is a surprise in production.  A burst needs a cap (no bucket without a fill rate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from berth.errors import AdmissionError, UsageError

DEFAULT_SHARE = 100
MAX_SHARE = 10_000
DEFAULT_PERIOD_US = 100_000
MIN_PERIOD_US = 1_000
MAX_PERIOD_US = 1_000_000
MIN_QUOTA_US = 1_000
WEIGHT_V2_MIN, WEIGHT_V2_MAX = 1, 10_000
SHARES_V1_MIN, SHARES_V1_MAX = 2, 262_144
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class CpuRequest:
    """What one running guest asks of the CPU.

    ``share`` 0…10000 (relative), ``reserve`` CPUs guaranteed, ``cap`` CPUs at most (None: no
    cap), ``burst_us`` token-bucket depth above the cap's quota in µs of CPU time (None: none).
    """

    name: str
    share: int = DEFAULT_SHARE
    reserve: float = 0.0
    cap: float | None = None
    burst_us: int | None = None


@dataclass(frozen=True, slots=True)
class CpuKnobs:
    """The kernel values for one guest's cgroup.

    v1: ``cpu.shares``, ``cpu.cfs_quota_us`` (:attr:`cfs_quota_us`), ``cpu.cfs_period_us``,
    ``cpu.cfs_burst_us``.  v2: ``cpu.weight``, ``cpu.max`` (:attr:`cpu_max`), ``cpu.max.burst``.
    """

    shares_v1: int
    weight_v2: int
    quota_us: int | None
    period_us: int
    burst_us: int | None

    @property
    def cap(self) -> float | None:
        """The cap in CPUs, or None."""
        return None if self.quota_us is None else self.quota_us / self.period_us

    @property
    def cfs_quota_us(self) -> int:
        """``cpu.cfs_quota_us``: the quota, or -1 for none."""
        return -1 if self.quota_us is None else self.quota_us

    @property
    def cpu_max(self) -> str:
        """``cpu.max``: ``"<quota> <period>"`` or ``"max <period>"``."""
        return f"{'max' if self.quota_us is None else self.quota_us} {self.period_us}"


def _check_capacity(capacity: float) -> None:
    if not (math.isfinite(capacity) and capacity > 0):
        raise UsageError("cpu-capacity", f"{capacity!r} is not a positive number of CPUs")


def effective_cap(req: CpuRequest) -> float | None:
    """The cap in force: the requested one, or the reservation for a share-0 guest."""
    if req.share == 0:
        return req.reserve if req.cap is None else min(req.cap, req.reserve)
    return req.cap


def check_request(req: CpuRequest, period_us: int = DEFAULT_PERIOD_US) -> None:
    """Raise :class:`UsageError` if one guest's request is inconsistent on its own."""
    who = f"guest {req.name!r}"
    if isinstance(req.share, bool) or not isinstance(req.share, int) or not 0 <= req.share <= MAX_SHARE:
        raise UsageError("cpu-share", f"{who}: {req.share!r} is not a whole number from 0 to {MAX_SHARE}")
    if not (math.isfinite(req.reserve) and req.reserve >= 0):
        raise UsageError("cpu-reserve", f"{who}: {req.reserve!r} is not a number of CPUs ≥ 0")
    if req.share == 0 and req.reserve <= 0:
        raise UsageError(
            "cpu-share", f"{who}: share 0 needs a cpu-reserve (it means: the reservation and never more)"
        )
    if req.cap is not None:
        if not (math.isfinite(req.cap) and req.cap > 0):
            raise UsageError("cpu-cap", f"{who}: {req.cap!r} is not a positive number of CPUs")
        if req.cap < req.reserve - _EPS:
            raise UsageError(
                "cpu-cap", f"{who}: the cap {req.cap:g} CPUs is below the reservation {req.reserve:g} CPUs"
            )
    cap = effective_cap(req)
    quota = None if cap is None else round(cap * period_us)
    if quota is not None and quota < MIN_QUOTA_US:
        field = "cpu-cap" if req.cap is not None else "cpu-reserve"
        raise UsageError(
            field,
            f"{who}: {cap:g} CPUs is {quota} µs per {period_us} µs period, "
            f"below the kernel's minimum of {MIN_QUOTA_US} µs",
        )
    if req.burst_us is not None:
        if isinstance(req.burst_us, bool) or not isinstance(req.burst_us, int) or req.burst_us < 0:
            raise UsageError("cpu-burst", f"{who}: {req.burst_us!r} is not a whole number of µs ≥ 0")
        if quota is None:
            raise UsageError("cpu-burst", f"{who}: a burst needs a cpu-cap (the bucket's fill rate)")
        if req.burst_us > quota:
            raise UsageError(
                "cpu-burst",
                f"{who}: {req.burst_us} µs is more than the quota of {quota} µs per period "
                f"({cap:g} CPUs x {period_us} µs); the kernel allows burst ≤ quota",
            )


def _check_all(requests: Iterable[CpuRequest], capacity: float, period_us: int) -> list[CpuRequest]:
    _check_capacity(capacity)
    if isinstance(period_us, bool) or not isinstance(period_us, int):
        raise UsageError("cpu-period", f"{period_us!r} is not a whole number of µs")
    if not MIN_PERIOD_US <= period_us <= MAX_PERIOD_US:
        raise UsageError("cpu-period", f"{period_us} µs is outside {MIN_PERIOD_US}…{MAX_PERIOD_US} µs")
    reqs = list(requests)
    seen: set[str] = set()
    for req in reqs:
        if req.name in seen:
            raise UsageError("cpu", f"guest {req.name!r} appears twice")
        seen.add(req.name)
        check_request(req, period_us)
    reserved = math.fsum(r.reserve for r in reqs)
    if reserved > capacity + _EPS:
        raise AdmissionError(
            f"cpu-reserve: {len(reqs)} guests reserve {reserved:.2f} CPUs, "
            f"more than the {capacity:.2f} CPUs of this host"
        )
    return reqs


def targets(requests: Iterable[CpuRequest], capacity: float) -> dict[str, float]:
    """Each guest's full-contention target ``f_i = r_i + (C - R)·s_i/S`` in CPUs.

    If every share is 0 the targets are the reservations (and the rest of the host stays idle,
    as every guest is capped at its reservation).
    """
    return _targets(_check_all(requests, capacity, DEFAULT_PERIOD_US), capacity)


def _targets(reqs: list[CpuRequest], capacity: float) -> dict[str, float]:
    free = max(0.0, capacity - math.fsum(r.reserve for r in reqs))
    total_share = sum(r.share for r in reqs)
    if total_share == 0:
        return {r.name: r.reserve for r in reqs}
    return {r.name: r.reserve + free * r.share / total_share for r in reqs}


def _scale(values: Mapping[str, float], lo: int, hi: int) -> dict[str, int]:
    top = max(values.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(values, lo)
    return {name: min(hi, max(lo, round(v * hi / top))) for name, v in values.items()}


def compute(
    requests: Iterable[CpuRequest], capacity: float, period_us: int = DEFAULT_PERIOD_US
) -> dict[str, CpuKnobs]:
    """The CPU knobs of every running guest, from the whole running set and host capacity.

    Raises :class:`UsageError` for an inconsistent request (see the module notes) and
    :class:`AdmissionError` if the reservations add up to more than *capacity*.
    """
    reqs = _check_all(requests, capacity, period_us)
    if not reqs:
        return {}
    f = _targets(reqs, capacity)
    v2 = _scale(f, WEIGHT_V2_MIN, WEIGHT_V2_MAX)
    v1 = _scale(f, SHARES_V1_MIN, SHARES_V1_MAX)
    out: dict[str, CpuKnobs] = {}
    for req in reqs:
        cap = effective_cap(req)
        out[req.name] = CpuKnobs(
            shares_v1=v1[req.name],
            weight_v2=v2[req.name],
            quota_us=None if cap is None else round(cap * period_us),
            period_us=period_us,
            burst_us=req.burst_us,
        )
    return out


def water_fill(
    capacity: float, weights: Mapping[str, float], limits: Mapping[str, float]
) -> dict[str, float]:
    """CFS's division of *capacity* among cgroups with *weights*, none exceeding its limit.

    Each guest gets ``min(limit_i, λ·w_i)`` with λ the level at which the total reaches
    ``min(capacity, Σ limits)``.  Guests missing from *limits* or with weight 0 get 0.
    """
    alloc = dict.fromkeys(weights, 0.0)
    active = {n for n, w in weights.items() if w > 0 and limits.get(n, 0.0) > 0}
    remaining = float(capacity)
    while active:
        level = remaining / math.fsum(weights[n] for n in active)
        full = [n for n in active if limits[n] <= level * weights[n]]
        if not full:
            for n in active:
                alloc[n] = level * weights[n]
            break
        for n in full:
            alloc[n] = float(limits[n])
            active.discard(n)
        remaining = max(0.0, remaining - math.fsum(limits[n] for n in full))
    return alloc


def simulate(
    requests: Iterable[CpuRequest],
    capacity: float,
    demand: Mapping[str, float],
    *,
    period_us: int = DEFAULT_PERIOD_US,
    cgroup_version: int = 2,
) -> dict[str, float]:
    """The long-run CPUs each guest gets from the knobs :func:`compute` sets, by water-filling.

    *demand* is how many CPUs each guest could use (at most its runnable threads; missing
    means idle).  Weights are the integer ``cpu.weight`` (or ``cpu.shares`` with
    ``cgroup_version=1``), limits the demand, the cap (quota/period) and the host.
    """
    reqs = list(requests)
    knobs = compute(reqs, capacity, period_us)
    weights: dict[str, float] = {}
    limits: dict[str, float] = {}
    for name, k in knobs.items():
        weights[name] = k.weight_v2 if cgroup_version == 2 else k.shares_v1
        limit = min(max(0.0, demand.get(name, 0.0)), capacity)
        limits[name] = limit if k.cap is None else min(limit, k.cap)
    return water_fill(capacity, weights, limits)
