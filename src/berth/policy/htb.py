"""The HTB class tree for network share, guarantee and cap, as plain data.

Linux-VServer shared a link among guests with tc HTB; berth builds the same tree and leaves
applying it (pyroute2, on the egress of the uplink or bridge) to :mod:`berth.net`::

    qdisc 1: htb default 2             root, unclassified traffic goes to 1:2
    └── class 1:1   rate = ceil = link  the whole link
        ├── class 1:2   default         the host and anything not classified
        └── class 1:(0x10 + index)      one per guest, leaf qdisc fq_codel (0x10 + index):

Class ids are stable: a guest's minor is ``0x10 + index`` with *index* a number the guest store
gives each guest for life, so starting or stopping one guest never renumbers another's class
(and its filters).  Index 0…:data:`MAX_INDEX` (16267: the filter priorities bound it) fits the 16-bit minor.

Rates (bits per second):

* **rate** is the guarantee.  A guest with ``rate_bps`` gets exactly that.  Guests without one
  share what is not guaranteed, ``U = link - Σ guarantees - default_rate``, in proportion to their
  shares, none above its ceil (what a ceil leaves over goes to the others: water-filling, as in
  :func:`berth.policy.cpu.water_fill`), and none below :data:`MIN_RATE_BPS` so every class can send.
  When guarantees take the whole link, the unguaranteed guests get only that minimum (the sum of
  rates then exceeds the link a little; HTB simply cannot keep such a promise, which is why
  admission leaves the minimum rates aside).
* **ceil** is the cap: ``ceil_bps`` or the link rate; a ceil above the link rate is lowered to it
  (more than the link cannot be sent anyway, and a config stays portable across hosts).  A
  guarantee above the guest's own ceil is a :class:`~berth.errors.UsageError`.
* **quantum** (bytes) is how HTB splits bandwidth *above* the rates among classes borrowing from
  1:1: in proportion to quantum.  berth makes it proportional to the share, the smallest share
  getting one MTU (HTB needs quantum ≥ the largest packet to be fair: a class whose quantum is
  smaller still sends one packet per round), scaled down if needed so none exceeds
  ``max(200000, 16 × MTU)`` bytes (200000 is tc's "quantum is big" limit; with a 64 KiB MTU, or
  GSO packets, one MTU is already a third of it); ratios beyond that over the MTU are compressed.
* **burst** (bytes, :func:`burst_bytes`) is about 1 ms of the rate plus one largest packet: the
  kernel's default burst is far too small at Gbit rates, and a burst below one packet makes a
  class wait for tokens it can never hold at once.

Admission: ``Σ guarantees + default_rate ≤ link`` or :class:`~berth.errors.AdmissionError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from berth.errors import AdmissionError, UsageError
from berth.policy.cpu import water_fill
from berth.policy.units import format_rate

ROOT_MAJOR = 1
LINK_MINOR = 1
DEFAULT_MINOR = 2
GUEST_MINOR_BASE = 0x10
#: The highest guest index: berth.net.htb gives a guest's IPv4 filter the priority 100 + its minor,
#: below its IPv6 filter's 0x4000 + minor (which must stay within 16 bits).
MAX_INDEX = 0x4000 - 100 - GUEST_MINOR_BASE - 1  # 16267
#: The least rate a class gets, so it can always send (1 kB/s).
MIN_RATE_BPS = 8_000
#: An Ethernet frame: HTB counts bytes at layer 2.
DEFAULT_MTU = 1514
MAX_QUANTUM = 200_000
DEFAULT_NET_SHARE = 100
MAX_NET_SHARE = 10_000


@dataclass(frozen=True, slots=True)
class NetRequest:
    """One guest's network request: stable ``index`` (class id), guarantee, cap, share 1…10000."""

    name: str
    index: int
    rate_bps: int | None = None
    ceil_bps: int | None = None
    share: int = DEFAULT_NET_SHARE


@dataclass(frozen=True, slots=True)
class HtbClass:
    """One HTB class: ``minor`` under root major 1, its parent, rates, quantum and leaf qdisc."""

    name: str
    minor: int
    parent_minor: int | None
    rate_bps: int
    ceil_bps: int
    quantum: int
    leaf_major: int | None

    @property
    def classid(self) -> str:
        """``tc`` notation, hexadecimal: ``1:1a``."""
        return f"{ROOT_MAJOR:x}:{self.minor:x}"

    @property
    def handle(self) -> int:
        """The 32-bit class handle ``major << 16 | minor`` (pyroute2 ``classid``)."""
        return ROOT_MAJOR << 16 | self.minor

    @property
    def parent(self) -> int:
        """The parent's 32-bit handle: the root qdisc ``1:`` for the link class."""
        return ROOT_MAJOR << 16 | (self.parent_minor or 0)


@dataclass(frozen=True, slots=True)
class HtbPlan:
    """The whole tree: root qdisc ``1:`` (default class 1:2), link class 1:1, default, guests."""

    link_rate_bps: int
    link: HtbClass
    default: HtbClass
    guests: tuple[HtbClass, ...]
    mtu: int = DEFAULT_MTU  # the largest packet (bytes at layer 2) the quanta and bursts allow for

    root_handle = ROOT_MAJOR << 16
    default_minor = DEFAULT_MINOR

    def guest(self, name: str) -> HtbClass:
        """The class of guest *name* (KeyError if it has none)."""
        for cls in self.guests:
            if cls.name == name:
                return cls
        raise KeyError(name)

    def classes(self) -> tuple[HtbClass, ...]:
        """Every class, parents first: the order to create them in."""
        return (self.link, self.default, *self.guests)


def _positive(field: str, who: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(field, f"{who}: {value!r} is not a positive whole number of bit/s")
    return value


def check_net_request(req: NetRequest) -> None:
    """Raise :class:`UsageError` if one guest's request is inconsistent on its own."""
    who = f"guest {req.name!r}"
    if isinstance(req.index, bool) or not isinstance(req.index, int) or not 0 <= req.index <= MAX_INDEX:
        raise UsageError("net-index", f"{who}: {req.index!r} is not an index from 0 to {MAX_INDEX}")
    if isinstance(req.share, bool) or not isinstance(req.share, int) or not 1 <= req.share <= MAX_NET_SHARE:
        raise UsageError("net-share", f"{who}: {req.share!r} is not a whole number from 1 to {MAX_NET_SHARE}")
    if req.rate_bps is not None:
        _positive("net-rate", who, req.rate_bps)
    if req.ceil_bps is not None:
        _positive("net-ceil", who, req.ceil_bps)
        if req.rate_bps is not None and req.ceil_bps < req.rate_bps:
            raise UsageError(
                "net-ceil",
                f"{who}: the ceil {format_rate(req.ceil_bps)} is below the rate {format_rate(req.rate_bps)}",
            )


def max_quantum(mtu: int) -> int:
    """The largest quantum berth gives a class for packets of up to ``mtu`` bytes."""
    return max(MAX_QUANTUM, 16 * mtu)


def burst_bytes(rate_bps: int, mtu: int = DEFAULT_MTU) -> int:
    """HTB burst (or cburst) for ``rate_bps``: ~1 ms of traffic plus one packet of ``mtu``."""
    return rate_bps // 8000 + mtu + 86


def _quanta(shares: dict[int, int], mtu: int) -> dict[int, int]:
    low = min(shares.values())
    raw = {n: mtu * s / low for n, s in shares.items()}
    top = max(raw.values())
    factor = min(1.0, max_quantum(mtu) / top)
    return {n: max(mtu, round(q * factor)) for n, q in raw.items()}


def htb_tree(
    link_rate_bps: int,
    guests: Iterable[NetRequest],
    default_rate_bps: int | None = None,
    *,
    mtu: int = DEFAULT_MTU,
) -> HtbPlan:
    """Build the class tree for a link of *link_rate_bps* shared by *guests*.

    *mtu* is the largest packet the classes see, in bytes at layer 2 (the link's MTU plus the
    Ethernet header, or the GSO size).  *default_rate_bps* is a guarantee for the default class (the host's own traffic); without it
    that class gets :data:`MIN_RATE_BPS` and borrows like a guest of share 100.  Guest classes are
    ordered by index.  Raises :class:`UsageError` for bad input and :class:`AdmissionError` when
    the guarantees exceed the link.
    """
    link = _positive("net-link-rate", "link", link_rate_bps)
    if default_rate_bps is not None:
        _positive("net-default-rate", "default class", default_rate_bps)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise UsageError("net-mtu", f"{mtu!r} is not an MTU from 68 to 65535")
    reqs = sorted(guests, key=lambda r: r.index if isinstance(r.index, int) else -1)
    names: set[str] = set()
    indexes: dict[int, str] = {}
    for req in reqs:
        check_net_request(req)
        if req.name in names:
            raise UsageError("net", f"guest {req.name!r} appears twice")
        if req.index in indexes:
            raise UsageError(
                "net-index", f"guests {indexes[req.index]!r} and {req.name!r} share index {req.index}"
            )
        names.add(req.name)
        indexes[req.index] = req.name

    guaranteed = [r for r in reqs if r.rate_bps is not None]
    reserved = sum(r.rate_bps or 0 for r in guaranteed) + (default_rate_bps or 0)
    if reserved > link:
        parts = [f"{r.name} {format_rate(r.rate_bps or 0)}" for r in guaranteed]
        if default_rate_bps:
            parts.append(f"default {format_rate(default_rate_bps)}")
        raise AdmissionError(
            f"net-rate: the guarantees add up to {format_rate(reserved)}, more than the link's "
            f"{format_rate(link)} ({', '.join(parts)})"
        )

    ceils = {r.name: min(r.ceil_bps or link, link) for r in reqs}
    shared = [r for r in reqs if r.rate_bps is None]
    split = water_fill(
        float(link - reserved),
        {r.name: float(r.share) for r in shared},
        {r.name: float(ceils[r.name]) for r in shared},
    )
    rates = {r.name: r.rate_bps or min(ceils[r.name], max(MIN_RATE_BPS, int(split[r.name]))) for r in reqs}

    quanta = _quanta(
        {DEFAULT_MINOR: DEFAULT_NET_SHARE, **{GUEST_MINOR_BASE + r.index: r.share for r in reqs}}, mtu
    )
    return HtbPlan(
        link_rate_bps=link,
        link=HtbClass("<link>", LINK_MINOR, None, link, link, mtu, None),
        default=HtbClass(
            "<default>",
            DEFAULT_MINOR,
            LINK_MINOR,
            min(link, default_rate_bps or MIN_RATE_BPS),
            link,
            quanta[DEFAULT_MINOR],
            DEFAULT_MINOR,
        ),
        guests=tuple(
            HtbClass(
                r.name,
                GUEST_MINOR_BASE + r.index,
                LINK_MINOR,
                rates[r.name],
                ceils[r.name],
                quanta[GUEST_MINOR_BASE + r.index],
                GUEST_MINOR_BASE + r.index,
            )
            for r in reqs
        ),
        mtu=mtu,
    )
