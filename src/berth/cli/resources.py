"""Resource flags of `berth run` (and later of guest configs): parsed into the OCI spec.

Everything the kernel has a knob for goes to ``linux.resources`` (and ``process.rlimits``);
what berth itself enforces or computes across guests travels as annotations, read back by
:mod:`berth.runtime.resources` when the guest is created:

* ``berth.cpu.share``, ``berth.cpu.reserve``, ``berth.cpu.cap``, ``berth.cpu.burst-us``: the
  guest's :class:`~berth.policy.cpu.CpuRequest`.  The weights depend on every running guest, so
  the runtime computes ``cpu.shares`` / quota / burst at create time (after admission control).
* ``berth.memory.anon``, ``berth.memory.memlock``: ANON and MEMLOCK limits in bytes, enforced by
  the supervisor (:mod:`berth.runtime.supervise`).
* ``berth.log.max``: the bound of a guest's console log in bytes (-1: none), kept by guestd
  (:mod:`berth.guests.consolelog`).

All values are parsed before anything is created; a bad one is a one-line
:class:`~berth.errors.UsageError` naming the flag.

berth's own guests (``berth run``, ``berth create``) get :data:`DEFAULT_PIDS_LIMIT` unless
``--pids-limit`` says otherwise (:func:`with_defaults`): a fork bomb in a guest started with no
flags stops at it instead of taking every pid of the host.  ``berth-runtime`` follows the spec
it is given, and ``berth set`` changes only what it is told.
"""

from __future__ import annotations

import os

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Processes and threads of a guest of `berth run` / `berth create` given no --pids-limit.  A
#: debian system guest with systemd has ~30-200 tasks, a JVM or a build some hundreds: 4096 is
#: well above them, and an eighth of the kernel's smallest default pid_max (32768): one runaway
#: guest leaves the host and the other guests most of their pids (podman's default,
#: containers.conf pids_limit, is 2048).
DEFAULT_PIDS_LIMIT = 4096

FLAGS: dict[str, str] = {
    "--cpu-share": "W",
    "--cpu-shares": "W",
    "--cpu-reserve": "R",
    "--cpus": "C",
    "--cpu-burst": "D",
    "--cpuset-cpus": "LIST",
    "--memory": "SIZE",
    "-m": "SIZE",
    "--memory-reservation": "SIZE",
    "--memory-swap": "SIZE",
    "--anon-memory": "SIZE",
    "--memlock": "SIZE",
    "--pids-limit": "N",
    "--nofile": "N",
    "--ulimit": "NAME=SOFT[:HARD]",
    "--blkio-weight": "W",
    "--device-read-bps": "DEV:RATE",
    "--device-write-bps": "DEV:RATE",
    "--device-read-iops": "DEV:RATE",
    "--device-write-iops": "DEV:RATE",
    "--log-max": "SIZE",
}

HELP = """
resources (checked before anything is created; see berth.runtime.resources):
  --cpu-share W           fair-share weight 0-10000 (default 100); 0 = exactly the reservation
  --cpu-reserve R         guaranteed CPUs (0.5) or percent of the host (25%); admission-controlled:
                          the sum over running guests may not pass capacity minus the host reserve
                          (BERTH_HOST_RESERVE, default 5%)
  --cpus C                hard cap in CPUs (token-bucket fill rate)
  --cpu-burst D           bucket size: CPU time saved while idle, spent above the cap (200ms)
  --cpuset-cpus LIST      CPUs the guest may run on (0-1,3)
  -m, --memory SIZE       hard RSS limit (OOM kill inside the guest)
  --memory-reservation S  soft limit, reclaimed first under host pressure
  --memory-swap SIZE      memory plus swap (-1 unlimited)
  --anon-memory SIZE      anonymous memory of the guest (supervised, ~100 ms reaction)
  --memlock SIZE          mlocked memory of the guest (RLIMIT_MEMLOCK + supervised sum)
  --pids-limit N          processes and threads of the guest (-1 unlimited); default 4096 for
                          berth run and berth create
  --nofile N              open files per process (soft = hard = N)
  --ulimit NAME=SOFT[:HARD]  any rlimit (repeatable): nofile, nproc, core, stack, ...
  --blkio-weight W        block I/O weight 10-1000
  --device-read-bps DEV:RATE, --device-write-bps DEV:RATE     throttle (10mb)
  --device-read-iops DEV:N,   --device-write-iops DEV:N       throttle in operations/s
  --log-max SIZE          a guest's console log (berth logs) keeps its newest SIZE at most,
                          at least 64k (-1 unbounded); default 16m
"""

_ALIASES = {"--cpu-shares": "--cpu-share", "-m": "--memory"}
_THROTTLES = {
    "--device-read-bps": "throttleReadBpsDevice",
    "--device-write-bps": "throttleWriteBpsDevice",
    "--device-read-iops": "throttleReadIOPSDevice",
    "--device-write-iops": "throttleWriteIOPSDevice",
}


def host_cpus() -> int:
    """CPUs this process (and so the berth parent cpuset) may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return os.cpu_count() or 1


def _device(flag: str, path: str) -> tuple[int, int]:
    import stat

    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(flag.lstrip("-"), f"{path}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):  # blkio throttles take a whole disk (else the write's ENODEV)
        what = "a character device" if stat.S_ISCHR(st.st_mode) else "not a device"
        raise UsageError(flag.lstrip("-"), f"{path} is {what}: I/O throttles take a block device (a disk)")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if os.path.exists(f"/sys/dev/block/{major}:{minor}/partition"):
        raise UsageError(flag.lstrip("-"), f"{path} is a partition: I/O throttles take its whole disk")
    return major, minor


def _int(flag: str, text: str, lo: int, hi: int, *, unlimited: bool = False) -> int:
    s = text.strip()
    if unlimited and s in ("-1", "unlimited", "max"):
        return -1
    if not (s.isascii() and s.isdigit()) or not lo <= int(s) <= hi:
        more = " (or -1 for unlimited)" if unlimited else ""
        raise UsageError(flag.lstrip("-"), f"{text!r} is not a whole number from {lo} to {hi}{more}")
    return int(s)


def with_defaults(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``items`` (the resource flags of `berth run` / `berth create`) with berth's default
    limits added for what they leave unset: ``--pids-limit`` :data:`DEFAULT_PIDS_LIMIT`."""
    if any(flag == "--pids-limit" for flag, _value in items):
        return list(items)
    return [*items, ("--pids-limit", str(DEFAULT_PIDS_LIMIT))]


def parse(items: list[tuple[str, str]], ncpus: int | None = None) -> dict[str, Any]:
    """The resource flags as ``{"resources": …, "rlimits": […], "annotations": {…}}``."""
    from berth.policy import units

    cpus = host_cpus() if ncpus is None else ncpus
    res: dict[str, Any] = {}
    rlimits: dict[str, tuple[int, int]] = {}
    ann: dict[str, str] = {}
    mem: dict[str, int] = {}

    def field(flag: str) -> str:
        return flag.lstrip("-")

    for raw_flag, value in items:
        flag = _ALIASES.get(raw_flag, raw_flag)
        f = field(flag)
        if flag == "--cpu-share":
            ann["berth.cpu.share"] = str(_int(flag, value, 0, 10000))
        elif flag == "--cpu-reserve":
            ann["berth.cpu.reserve"] = repr(units.parse_cpus(f, value, cpus))
        elif flag == "--cpus":
            ann["berth.cpu.cap"] = repr(units.parse_cpus(f, value, cpus))
        elif flag == "--cpu-burst":
            ann["berth.cpu.burst-us"] = str(units.parse_duration(f, value))
        elif flag == "--cpuset-cpus":
            res.setdefault("cpu", {})["cpus"] = units.parse_cpuset(f, value, os.sched_getaffinity(0))
        elif flag in ("--memory", "--memory-reservation", "--anon-memory", "--memlock"):
            size = units.parse_size(f, value)
            if size <= 0:
                raise UsageError(f, f"{value!r}: must be more than 0")
            mem[flag] = size
        elif flag == "--memory-swap":
            mem[flag] = -1 if value.strip() == "-1" else units.parse_size(f, value)
        elif flag == "--pids-limit":
            n = _int(flag, value, 1, 4_194_304, unlimited=True)
            res["pids"] = {"limit": n}
        elif flag == "--nofile":
            n = _int(flag, value, 1, 1 << 30)
            rlimits["RLIMIT_NOFILE"] = (n, n)
        elif flag == "--ulimit":
            name, soft, hard = units.parse_ulimit(f, value)
            rlimits[name] = (soft, hard)
        elif flag == "--blkio-weight":
            res.setdefault("blockIO", {})["weight"] = _int(flag, value, 10, 1000)
        elif flag in _THROTTLES:
            if flag.endswith("-iops"):
                path, rate = units.parse_device_iops(f, value)
            else:
                path, rate = units.parse_device_rate(f, value)
            major, minor = _device(flag, path)
            entry = {"major": major, "minor": minor, "rate": rate}
            res.setdefault("blockIO", {}).setdefault(_THROTTLES[flag], []).append(entry)
        elif flag == "--log-max":
            ann["berth.log.max"] = "-1" if value.strip() in ("-1", "unlimited") else str(_log_max(value))
        else:
            raise UsageError(f, "unknown resource flag")
    if "--memory" in mem or "--memory-swap" in mem or "--memory-reservation" in mem:
        from berth.policy.memory import validate_memory

        limits = validate_memory(
            mem.get("--memory"), mem.get("--memory-swap"), mem.get("--memory-reservation")
        )
        m: dict[str, int] = {}
        if limits.memory is not None:
            m["limit"] = limits.memory
            m["swap"] = limits.memsw_limit
        if limits.reservation is not None:
            m["reservation"] = limits.reservation
        res["memory"] = m
    if "--anon-memory" in mem:
        ann["berth.memory.anon"] = str(mem["--anon-memory"])
    if "--memlock" in mem:
        lock = mem["--memlock"]
        ann["berth.memory.memlock"] = str(lock)
        if "RLIMIT_MEMLOCK" not in rlimits:
            rlimits["RLIMIT_MEMLOCK"] = (lock, lock)
    _check_cpu(ann, cpus)
    out_rl = [
        {"type": k, "soft": _lower(k, s, "soft"), "hard": _lower(k, h, "hard")}
        for k, (s, h) in rlimits.items()
    ]
    _warn_lowered(rlimits, out_rl)
    return {"resources": res, "rlimits": out_rl, "annotations": ann}


def _warn_lowered(asked: dict[str, tuple[int, int]], given: list[dict[str, Any]]) -> None:
    """One line on stderr per rlimit :func:`_lower` lowered, as berth-runtime warns of one its
    init lowers (else ``--ulimit nofile=-1:-1`` silently gives the host's hard limit)."""
    import sys

    from berth.policy.units import RLIM_INFINITY

    def text(v: int) -> str:
        return "unlimited" if v in (-1, RLIM_INFINITY) else str(v)

    for rl in given:
        soft, hard = asked[rl["type"]]
        if (text(soft), text(hard)) != (text(rl["soft"]), text(rl["hard"])):
            sys.stderr.write(
                f"berth: warning: rlimit {rl['type']} {text(soft)}:{text(hard)} lowered to "
                f"{text(rl['soft'])}:{text(rl['hard'])}: the host allows no more\n"
            )


def _log_max(value: str) -> int:
    from berth.guests.consolelog import MIN_MAX
    from berth.policy import units

    size = units.parse_size("log-max", value)
    if size < MIN_MAX:
        raise UsageError("log-max", f"{value!r}: must be at least 64k (or -1 for unbounded)")
    return size


def _lower(name: str, value: int, which: str) -> int:
    """An rlimit as the spec wants it, lowered to the host's hard limit (berth has no
    CAP_SYS_RESOURCE on every host; a soft limit above hard would be refused)."""
    import resource

    from berth.policy.units import RLIM_INFINITY

    hard = resource.getrlimit(getattr(resource, name))[1]
    if value == RLIM_INFINITY:
        value = -1
    if os.geteuid() == 0 and _can_raise():
        hard = resource.RLIM_INFINITY
    if name == "RLIMIT_NOFILE":  # not even CAP_SYS_RESOURCE raises it past fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                hard = min(hard, int(f.read()))
        except (OSError, ValueError):
            pass
    if hard == resource.RLIM_INFINITY:
        return value
    return hard if value < 0 else min(value, hard)


def _can_raise() -> bool:
    """Whether we hold CAP_SYS_RESOURCE (may raise hard limits)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 24))
    except OSError:
        pass
    return False


def _check_cpu(ann: dict[str, str], ncpus: int) -> None:
    """Check the CPU request on its own (share 0 without reserve, cap below reserve, burst
    without cap or above the quota) before anything is created."""
    keys = ("berth.cpu.share", "berth.cpu.reserve", "berth.cpu.cap", "berth.cpu.burst-us")
    if not any(k in ann for k in keys):
        return
    from berth.policy.cpu import check_request
    from berth.runtime.resources import request_from_annotations

    try:
        check_request(request_from_annotations("new", ann))
    except UsageError as e:  # in the words of the flags: no guest name yet, --cpus for the cap
        reason = e.reason.removeprefix("guest 'new': ").replace("cpu-cap", "--cpus")
        raise UsageError("cpus" if e.field == "cpu-cap" else e.field, reason) from None


def apply(spec: dict[str, Any], items: list[tuple[str, str]]) -> None:
    """Fold the resource flags into ``spec``: ``linux.resources``, ``process.rlimits``, annotations."""
    parsed = parse(items)
    linux = spec.setdefault("linux", {})
    resources = linux.setdefault("resources", {})
    for key, value in parsed["resources"].items():
        if isinstance(value, dict) and isinstance(resources.get(key), dict):
            resources[key].update(value)
        else:
            resources[key] = value
    if parsed["rlimits"]:
        proc = spec.setdefault("process", {})
        names = {r["type"] for r in parsed["rlimits"]}
        proc["rlimits"] = [r for r in proc.get("rlimits") or [] if r["type"] not in names] + parsed["rlimits"]
    if parsed["annotations"]:
        spec.setdefault("annotations", {}).update(parsed["annotations"])
