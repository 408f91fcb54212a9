"""Pure policy: the math behind berth's resource isolation, with no I/O.

* :mod:`~berth.policy.units`: parsers for sizes, rates, CPUs, durations, CPU sets, ulimits and
  device throttles, raising :class:`~berth.errors.UsageError` that names the field.
* :mod:`~berth.policy.cpu`: fair share + reservations + token-bucket caps → ``cpu.weight`` /
  ``cpu.shares``, ``cpu.max`` / ``cfs_quota_us``, burst; a water-filling model of CFS.
* :mod:`~berth.policy.admission`: reservations (CPU, memory, network) may not be overbooked.
* :mod:`~berth.policy.htb`: the tc HTB class tree for network share, guarantee and cap.
* :mod:`~berth.policy.memory`: docker's memory/swap/reservation rules; ANON and MEMLOCK
  enforcement decisions; ``/proc/PID/status`` parsing.

Importing this package is free: each name loads its module on first use (PEP 562), so the start
path pays only for what it touches.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.policy.admission import DEFAULT_HOST_RESERVE, admit, admit_memory, admit_net, unreserved_cpus
    from berth.policy.cpu import (
        DEFAULT_PERIOD_US,
        CpuKnobs,
        CpuRequest,
        check_request,
        compute,
        effective_cap,
        simulate,
        targets,
        water_fill,
    )
    from berth.policy.htb import MIN_RATE_BPS, HtbClass, HtbPlan, NetRequest, check_net_request, htb_tree
    from berth.policy.memory import (
        LockedProcess,
        MemoryLimits,
        anon_bytes,
        anon_overrun,
        memlock_victim,
        parse_proc_status,
        validate_memory,
    )
    from berth.policy.units import (
        RLIM_INFINITY,
        cpuset_members,
        format_cpuset,
        format_rate,
        format_size,
        parse_cpus,
        parse_cpuset,
        parse_device_iops,
        parse_device_rate,
        parse_duration,
        parse_rate,
        parse_size,
        parse_ulimit,
    )

_MODULES = {
    "admission": ("DEFAULT_HOST_RESERVE", "admit", "admit_memory", "admit_net", "unreserved_cpus"),
    "cpu": (
        "DEFAULT_PERIOD_US",
        "CpuKnobs",
        "CpuRequest",
        "check_request",
        "compute",
        "effective_cap",
        "simulate",
        "targets",
        "water_fill",
    ),
    "htb": ("MIN_RATE_BPS", "HtbClass", "HtbPlan", "NetRequest", "check_net_request", "htb_tree"),
    "memory": (
        "LockedProcess",
        "MemoryLimits",
        "anon_bytes",
        "anon_overrun",
        "memlock_victim",
        "parse_proc_status",
        "validate_memory",
    ),
    "units": (
        "RLIM_INFINITY",
        "cpuset_members",
        "format_cpuset",
        "format_rate",
        "format_size",
        "parse_cpus",
        "parse_cpuset",
        "parse_device_iops",
        "parse_device_rate",
        "parse_duration",
        "parse_rate",
        "parse_size",
        "parse_ulimit",
    ),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "DEFAULT_HOST_RESERVE",
    "DEFAULT_PERIOD_US",
    "MIN_RATE_BPS",
    "RLIM_INFINITY",
    "CpuKnobs",
    "CpuRequest",
    "HtbClass",
    "HtbPlan",
    "LockedProcess",
    "MemoryLimits",
    "NetRequest",
    "admit",
    "admit_memory",
    "admit_net",
    "anon_bytes",
    "anon_overrun",
    "check_net_request",
    "check_request",
    "compute",
    "cpuset_members",
    "effective_cap",
    "format_cpuset",
    "format_rate",
    "format_size",
    "htb_tree",
    "memlock_victim",
    "parse_cpus",
    "parse_cpuset",
    "parse_device_iops",
    "parse_device_rate",
    "parse_duration",
    "parse_proc_status",
    "parse_rate",
    "parse_size",
    "parse_ulimit",
    "simulate",
    "targets",
    "unreserved_cpus",
    "validate_memory",
    "water_fill",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'berth.policy' has no attribute {name!r}")
    value = getattr(__import__(f"berth.policy.{module}", fromlist=[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
