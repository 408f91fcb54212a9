"""Admission control: a guest starts only if its reservation fits what is not reserved yet.

Shares may be overbooked (they are relative: more guests just means smaller slices), caps may be
overbooked (they are upper bounds), but **reservations may not**: the weights of
:mod:`berth.policy.cpu` keep every promise only while ``Σ r_i ≤ C``.  A slice of the host,
``host_reserve`` (5 % by default), is never handed out, so the host's own daemons, the berth
supervisor and the kernel threads keep running when every guest is busy, and so that the weights
of unreserved guests are never squeezed to nothing.

The capacity that may be reserved is ``C · (1 - host_reserve)``.  A new guest with reservation
``r`` is admitted when ``r ≤ C · (1 - host_reserve) - Σ r_running`` (with a 10⁻⁹ tolerance for
float sums).  A running guest with the same name as the new one is left out of the sum: that is a
change to its own reservation (``berth set``), not a second guest.

The refusal is one line, for example::

    cpu-reserve: 1.5 CPUs requested, but only 0.40 of 2.00 CPUs are unreserved (1.50 reserved by 2 guests, 5% kept for the host)

Memory reservations (``memory.low`` on v2, ``memory.soft_limit_in_bytes`` on v1) follow the same
rule against host RAM (:func:`admit_memory`): protection promised twice over protects nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from berth.errors import AdmissionError, UsageError
from berth.policy.cpu import CpuRequest, check_request
from berth.policy.htb import NetRequest, check_net_request
from berth.policy.units import format_rate, format_size

DEFAULT_HOST_RESERVE = 0.05
_EPS = 1e-9


def _check_host_reserve(host_reserve: float) -> None:
    if not (math.isfinite(host_reserve) and 0 <= host_reserve < 1):
        raise UsageError("host-reserve", f"{host_reserve!r} is not a fraction from 0 up to (not including) 1")


def _guests(n: int) -> str:
    return f"{n} guest" if n == 1 else f"{n} guests"


def unreserved_cpus(
    running: Iterable[CpuRequest], capacity: float, host_reserve: float = DEFAULT_HOST_RESERVE
) -> float:
    """CPUs still free to reserve: ``C · (1 - host_reserve) - Σ r`` (may be negative if overbooked)."""
    _check_host_reserve(host_reserve)
    return capacity * (1 - host_reserve) - math.fsum(r.reserve for r in running)


def admit(
    running: Iterable[CpuRequest],
    new: CpuRequest,
    capacity: float,
    host_reserve: float = DEFAULT_HOST_RESERVE,
) -> None:
    """Raise :class:`AdmissionError` unless *new*'s CPU reservation fits beside *running*'s.

    *running* may include *new*'s own current entry (same name): it is replaced, not added.
    Raises :class:`UsageError` if *new* is inconsistent on its own.
    """
    if not (math.isfinite(capacity) and capacity > 0):
        raise UsageError("cpu-capacity", f"{capacity!r} is not a positive number of CPUs")
    _check_host_reserve(host_reserve)
    check_request(new)
    others = [r for r in running if r.name != new.name]
    if new.reserve <= 0:
        return
    reserved = math.fsum(r.reserve for r in others)
    free = capacity * (1 - host_reserve) - reserved
    if new.reserve > free + _EPS:
        raise AdmissionError(
            f"cpu-reserve: {new.reserve:g} CPUs requested, but only {max(free, 0.0):.2f} of "
            f"{capacity:.2f} CPUs are unreserved ({reserved:.2f} reserved by {_guests(len(others))}, "
            f"{host_reserve * 100:g}% kept for the host)"
        )


def admit_memory(
    running: Mapping[str, int],
    name: str,
    reservation: int,
    host_bytes: int,
    host_reserve: float = DEFAULT_HOST_RESERVE,
) -> None:
    """Raise :class:`AdmissionError` unless guest *name*'s memory reservation fits host RAM.

    *running* maps each running guest to its reservation in bytes (an entry for *name* itself is
    replaced, not added).  The message has the shape of :func:`admit`'s.
    """
    if host_bytes <= 0:
        raise UsageError("memory-capacity", f"{host_bytes!r} is not a positive number of bytes")
    _check_host_reserve(host_reserve)
    if reservation < 0:
        raise UsageError("memory-reservation", f"guest {name!r}: {reservation} bytes is negative")
    if reservation == 0:
        return
    others = {n: b for n, b in running.items() if n != name}
    reserved = sum(others.values())
    free = math.floor(host_bytes * (1 - host_reserve)) - reserved
    if reservation > free:
        raise AdmissionError(
            f"memory-reservation: {format_size(reservation)} requested, but only "
            f"{format_size(max(free, 0))} of {format_size(host_bytes)} are unreserved "
            f"({format_size(reserved)} reserved by {_guests(len(others))}, "
            f"{host_reserve * 100:g}% kept for the host)"
        )


def admit_net(
    running: Iterable[NetRequest],
    new: NetRequest,
    link_rate_bps: int,
    default_rate_bps: int | None = None,
) -> None:
    """Raise :class:`AdmissionError` unless *new*'s network guarantee fits the link.

    Guarantees (HTB ``rate``) may not add up to more than the link, counting the default class's
    own guarantee (the host's traffic) if it has one; shares and ceils may be overbooked.  An
    entry of *running* with *new*'s name is replaced, not added.
    """
    if isinstance(link_rate_bps, bool) or not isinstance(link_rate_bps, int) or link_rate_bps <= 0:
        raise UsageError("net-link-rate", f"{link_rate_bps!r} is not a positive whole number of bit/s")
    check_net_request(new)
    if new.rate_bps is None:
        return
    others = [r for r in running if r.name != new.name and r.rate_bps is not None]
    reserved = sum(r.rate_bps or 0 for r in others)
    host = default_rate_bps or 0
    free = link_rate_bps - host - reserved
    if new.rate_bps > free:
        kept = f", {format_rate(host)} kept for the host" if host else ""
        raise AdmissionError(
            f"net-rate: {format_rate(new.rate_bps)} requested, but only {format_rate(max(free, 0))} of "
            f"{format_rate(link_rate_bps)} are not guaranteed ({format_rate(reserved)} guaranteed to "
            f"{_guests(len(others))}{kept})"
        )
