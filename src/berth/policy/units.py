"""Parsers for the values users write in flags and guest configs: sizes, rates, CPUs, durations,
CPU sets, ulimits and device throttles.

Every parser takes the *field* it parses for (a flag like ``--memory`` or a config key like
``resources.memory``) and raises :class:`berth.errors.UsageError` with a one-line reason naming
that field and the offending text.  Numbers are parsed exactly (integer arithmetic on the decimal
digits, never through a float) and truncated towards zero, as docker and tc do.

Units, chosen to match the tools people already know:

* **Sizes** (:func:`parse_size`) follow docker (go-units ``RAMInBytes``): the unit letters
  ``b k m g t p`` are case-insensitive and always *binary*, with an optional ``b``, ``ib`` suffix:
  ``64m`` = ``64M`` = ``64mb`` = ``64MB`` = ``64MiB`` = 64 x 1024².  (``64MB`` is *not*
  64 x 1000²: docker users write ``--memory 64MB`` and mean mebibytes.)  A bare number is bytes;
  fractions are allowed (``1.5G``) and truncated to whole bytes.
* **Rates** (:func:`parse_rate`) follow ``tc(8)``: a bare number or ``bit`` is bits per second,
  ``kbit mbit gbit tbit`` are decimal (x1000), ``kibit mibit gibit tibit`` binary; ``bps`` is
  *bytes* per second, so ``kbps mbps gbps tbps`` are decimal kilo/mega/… bytes per second (x8 to
  get bits) and ``kibps mibps …`` binary ones.  Case-insensitive, like tc's ``strcasecmp``.
  The result is in bits per second.
* **CPUs** (:func:`parse_cpus`): a decimal number of CPUs (``0.5``) or a percentage of the host
  (``25%``).
* **Durations** (:func:`parse_duration`): ``us`` (or ``µs``), ``ms``, ``s``, ``m``, ``h``; a bare
  integer is microseconds, the kernel's unit for ``cpu.cfs_period_us`` and docker's
  ``--cpu-period``.  The result is whole microseconds; a finer value is an error.
* **CPU sets** (:func:`parse_cpuset`): the kernel's list format (``0-3,5``), normalized the way the
  kernel prints it back: sorted, runs of two or more merged into ranges (``{0, 1}`` → ``0-1``).
* **Ulimits** (:func:`parse_ulimit`): docker's ``name=soft[:hard]`` with docker's list of names;
  ``unlimited``, ``infinity`` or ``-1`` mean no limit and become :data:`RLIM_INFINITY` (2⁶⁴ - 1,
  the value the kernel and the OCI spec use; it orders above every finite limit).
* **Device throttles** (:func:`parse_device_rate`, :func:`parse_device_iops`): docker's
  ``<path>:<rate>``, the rate a size (bytes per second, binary units) or an integer of I/O
  operations per second.  The path is returned as written: whether it is a block device is for the
  caller to check.
"""

from __future__ import annotations

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: collections.abc costs `berth run` milliseconds
    from collections.abc import Iterable

INT64_MAX = 2**63 - 1
#: ``RLIM_INFINITY`` as the kernel and the OCI spec (``uint64``) write it.
RLIM_INFINITY = 2**64 - 1

_KIB = 1024
_SIZE_UNITS = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgtp", start=1):
    for _suffix in (_letter, _letter + "b", _letter + "ib"):
        _SIZE_UNITS[_suffix] = _KIB**_i

_RATE_UNITS: dict[str, int] = {"": 1, "bit": 1, "bps": 8}
for _i, _letter in enumerate("kmgt", start=1):
    _RATE_UNITS[_letter + "bit"] = 1000**_i
    _RATE_UNITS[_letter + "ibit"] = 1024**_i
    _RATE_UNITS[_letter + "bps"] = 8 * 1000**_i
    _RATE_UNITS[_letter + "ibps"] = 8 * 1024**_i

_DURATION_UNITS = {"": 1, "us": 1, "µs": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}

#: The ulimit names docker accepts (go-units ``ulimitNameMapping``), as OCI ``rlimits`` types.
#: ``as`` is left out, as docker leaves it out.
ULIMIT_NAMES = {
    name: f"RLIMIT_{name.upper()}"
    for name in (
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    )
}


def _number(field: str, text: str, what: str) -> tuple[int, int, str]:
    """Split an unsigned decimal number off the front of *text*.

    Returns ``(numerator, denominator, rest)`` with the value exactly ``numerator / denominator``
    (the denominator a power of ten) and *rest* the unit, stripped and lower-cased.
    """
    s = text.strip()
    if not s:
        raise UsageError(field, f"empty {what}")
    if s[0] == "-":
        raise UsageError(field, f"{text!r}: a {what} cannot be negative")
    i = 0
    while i < len(s) and s[i].isascii() and s[i].isdigit():
        i += 1
    whole = s[:i]
    frac = ""
    if i < len(s) and s[i] == ".":
        j = i + 1
        while j < len(s) and s[j].isascii() and s[j].isdigit():
            j += 1
        frac = s[i + 1 : j]
        if not frac:
            raise UsageError(field, f"{text!r} is not a {what}: no digits after the decimal point")
        i = j
    if not whole:
        raise UsageError(field, f"{text!r} is not a {what}: it must start with a number")
    return int(whole + frac), 10 ** len(frac), s[i:].strip().lower()


def _scaled(field: str, text: str, what: str, units: dict[str, int], hint: str) -> int:
    num, den, unit = _number(field, text, what)
    if unit not in units:
        raise UsageError(field, f"{text!r} has an unknown unit {unit!r} ({hint})")
    return num * units[unit] // den


def parse_size(field: str, text: str) -> int:
    """Parse a size in bytes, docker style: ``64m``, ``1.5G``, ``512k``, ``64MiB``, ``100``.

    All unit letters are binary (``1k`` = 1024).  Zero is allowed (the caller decides what it
    means); negative, empty, unknown units and sizes above 2⁶³ - 1 bytes are errors.
    """
    value = _scaled(field, text, "size", _SIZE_UNITS, "use b, k, m, g, t or p; 1k = 1024 bytes")
    if value > INT64_MAX:
        raise UsageError(field, f"{text!r} is too large (at most 8 EiB)")
    return value


def format_size(n: int) -> str:
    """Format a byte count for a message: ``64MiB``, ``1.5GiB``, ``100B``."""
    for exp, unit in ((5, "PiB"), (4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if abs(n) >= _KIB**exp:
            return f"{n / _KIB**exp:.2f}".rstrip("0").rstrip(".") + unit
    return f"{n}B"


def column_size(n: int | None) -> str:
    """A byte count for a table column: ``1.5G``, ``12.0M``, ``512B``; ``-`` when unknown."""
    if n is None:
        return "-"
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n}B"


def parse_rate(field: str, text: str) -> int:
    """Parse a network rate into bits per second, tc style: ``100mbit``, ``1gbit``, ``10mbps``.

    A bare number is bits per second; ``bps`` units are bytes per second (x8).  Zero, negative,
    empty, unknown units and rates above 2⁶³ - 1 bit/s are errors.
    """
    hint = "use bit, kbit, mbit, gbit, tbit (x1000), kibit… (x1024), or bps, kbps, mbps… for bytes"
    value = _scaled(field, text, "rate", _RATE_UNITS, hint)
    if value <= 0:
        raise UsageError(field, f"{text!r}: a rate must be at least 1 bit/s")
    if value > INT64_MAX:
        raise UsageError(field, f"{text!r} is too large")
    return value


def format_rate(bps: int) -> str:
    """Format bits per second for a message: ``1Gbit/s``, ``2.5Mbit/s``, ``800bit/s``."""
    for exp, unit in ((4, "Tbit"), (3, "Gbit"), (2, "Mbit"), (1, "Kbit")):
        if abs(bps) >= 1000**exp:
            return f"{bps / 1000**exp:.2f}".rstrip("0").rstrip(".") + unit + "/s"
    return f"{bps}bit/s"


def parse_cpus(field: str, text: str, host_cpus: float) -> float:
    """Parse a CPU amount: ``0.5``, ``2`` or ``25%`` (of *host_cpus*).

    The result must be more than 0 and at most *host_cpus*.  ``nan``, ``inf`` and exponents are
    not numbers here.
    """
    s = text.strip()
    percent = s.endswith("%")
    num, den, rest = _number(field, s[:-1] if percent else s, "CPU amount")
    if rest:
        raise UsageError(field, f"{text!r} is not a CPU amount (write 0.5, 2 or 25%)")
    value = num / den
    if percent:
        value = value * host_cpus / 100
    if value <= 0:
        raise UsageError(field, f"{text!r}: a CPU amount must be more than 0")
    if value > host_cpus * (1 + 1e-12):
        raise UsageError(field, f"{text!r} is more than the {host_cpus:g} CPUs of this host")
    return min(value, float(host_cpus))


def parse_duration(field: str, text: str) -> int:
    """Parse a duration into whole microseconds: ``200ms``, ``1s``, ``500us``, ``2m``, ``100000``.

    A bare integer is microseconds.  Negative, empty, unknown units, fractions of a microsecond
    and durations above 2⁶³ - 1 µs are errors.
    """
    num, den, unit = _number(field, text, "duration")
    if unit not in _DURATION_UNITS:
        raise UsageError(field, f"{text!r} has an unknown unit {unit!r} (use us, ms, s, m or h)")
    total = num * _DURATION_UNITS[unit]
    if total % den:
        raise UsageError(field, f"{text!r} is not a whole number of microseconds")
    value = total // den
    if value > INT64_MAX:
        raise UsageError(field, f"{text!r} is too long")
    return value


def cpuset_members(field: str, text: str) -> list[int]:
    """The sorted CPU (or memory node) numbers of a kernel list like ``0-3,5``; duplicates merged."""
    members: set[int] = set()
    if not text.strip():
        raise UsageError(field, "empty CPU set")
    for item in text.split(","):
        part = item.strip()
        lo_text, dash, hi_text = part.partition("-")
        lo_text, hi_text = lo_text.strip(), hi_text.strip()
        if not (lo_text.isascii() and lo_text.isdigit()) or (
            dash and not (hi_text.isascii() and hi_text.isdigit())
        ):
            raise UsageError(field, f"{text!r}: {part!r} is not a CPU number or a range like 0-3")
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
        if hi < lo:
            raise UsageError(field, f"{text!r}: the range {part!r} runs backwards")
        if hi - lo > 1 << 16:
            raise UsageError(field, f"{text!r}: the range {part!r} is too large")
        members.update(range(lo, hi + 1))
    return sorted(members)


def format_cpuset(members: Iterable[int]) -> str:
    """Print CPU numbers the way the kernel does: sorted, runs of two or more as ``a-b``."""
    out: list[str] = []
    run: list[int] = []
    for cpu in sorted(set(members)):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_cpuset(field: str, text: str, host_cpus: int | Iterable[int]) -> str:
    """Parse and normalize a CPU set (``1,0,2-3`` → ``0-3``), rejecting CPUs the host lacks.

    *host_cpus* is either a count (CPUs ``0 … n-1`` exist) or the CPU numbers that exist, for
    example the members of the parent cgroup's ``cpuset.cpus.effective``.
    """
    members = cpuset_members(field, text)
    available = set(range(host_cpus)) if isinstance(host_cpus, int) else set(host_cpus)
    missing = [cpu for cpu in members if cpu not in available]
    if missing:
        have = format_cpuset(available) or "none"
        raise UsageError(
            field, f"{text!r}: CPU {format_cpuset(missing)} does not exist (this host has {have})"
        )
    return format_cpuset(members)


def _rlimit_value(field: str, text: str, whole: str) -> int:
    s = text.strip().lower()
    if s in ("unlimited", "infinity", "-1"):
        return RLIM_INFINITY
    if not (s.isascii() and s.isdigit()):
        raise UsageError(field, f"{whole!r}: {text!r} is not a limit (a number, -1 or unlimited)")
    value = int(s)
    if value >= RLIM_INFINITY:
        raise UsageError(field, f"{whole!r}: {text!r} is too large")
    return value


def parse_ulimit(field: str, text: str) -> tuple[str, int, int]:
    """Parse docker's ``name=soft[:hard]`` (``nofile=1024:2048``) into ``("RLIMIT_NOFILE", 1024, 2048)``.

    Without ``:hard`` the hard limit equals the soft one.  The soft limit may not exceed the hard
    one.  Names are docker's (case-insensitive, an ``RLIMIT_`` prefix allowed).
    """
    name, eq, values = text.partition("=")
    key = name.strip().lower().removeprefix("rlimit_")
    if not eq:
        raise UsageError(field, f"{text!r} is not name=soft[:hard]")
    if key not in ULIMIT_NAMES:
        raise UsageError(
            field, f"{text!r}: unknown ulimit {name.strip()!r} (one of {', '.join(ULIMIT_NAMES)})"
        )
    soft_text, colon, hard_text = values.partition(":")
    soft = _rlimit_value(field, soft_text, text)
    hard = _rlimit_value(field, hard_text, text) if colon else soft
    if soft > hard:
        raise UsageError(field, f"{text!r}: the soft limit is above the hard limit")
    return ULIMIT_NAMES[key], soft, hard


def _device_split(field: str, text: str) -> tuple[str, str]:
    path, colon, value = text.rpartition(":")
    if not colon or not path:
        raise UsageError(field, f"{text!r} is not <device-path>:<value>")
    if not path.startswith("/"):
        raise UsageError(field, f"{text!r}: the device path {path!r} is not absolute")
    return path, value


def parse_device_rate(field: str, text: str) -> tuple[str, int]:
    """Parse docker's ``/dev/sda:10mb`` into ``("/dev/sda", 10485760)`` bytes per second.

    The rate is a size (binary units, see :func:`parse_size`) and must be positive.
    """
    path, value = _device_split(field, text)
    rate = parse_size(field, value)
    if rate <= 0:
        raise UsageError(field, f"{text!r}: the rate must be positive")
    return path, rate


def parse_device_iops(field: str, text: str) -> tuple[str, int]:
    """Parse docker's ``/dev/sda:1000`` into ``("/dev/sda", 1000)`` I/O operations per second."""
    path, value = _device_split(field, text)
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or int(v) <= 0:
        raise UsageError(
            field, f"{text!r}: {value!r} is not a positive whole number of operations per second"
        )
    if int(v) > INT64_MAX:
        raise UsageError(field, f"{text!r} is too large")
    return path, int(v)
