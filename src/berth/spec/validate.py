"""Check an OCI config.json before anything is created; the first problem is one :class:`UsageError`.

The error names the JSON path of the offending field (``process.args``, ``mounts[2].destination``,
``linux.resources.cpu.shares``) and says why.  Hand-written checks, one small function per object
of the spec: no schema library on the start path.  Fields berth does not know are left alone
(the spec allows extensions); JSON ``null`` counts as absent.
"""

from __future__ import annotations

import os

from berth.errors import UsageError
from berth.spec.defaults import CAP_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at import: annotations only
    from collections.abc import Callable
    from typing import Any, NoReturn

NAMESPACES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
RLIMITS = frozenset(
    f"RLIMIT_{n}"
    for n in "AS CORE CPU DATA FSIZE LOCKS MEMLOCK MSGQUEUE NICE NOFILE NPROC RSS RTPRIO RTTIME SIGPENDING STACK".split()
)
SECCOMP_ACTIONS = frozenset(
    f"SCMP_ACT_{n}" for n in "KILL KILL_PROCESS KILL_THREAD TRAP ERRNO TRACE ALLOW LOG NOTIFY".split()
)
SECCOMP_OPERATORS = frozenset(f"SCMP_CMP_{n}" for n in "NE LT LE EQ GE GT MASKED_EQ".split())
SECCOMP_ARCHES = frozenset(
    f"SCMP_ARCH_{n}"
    for n in (
        "X86 X86_64 X32 ARM AARCH64 MIPS MIPS64 MIPS64N32 MIPSEL MIPSEL64 MIPSEL64N32 PPC PPC64 PPC64LE "
        "S390 S390X PARISC PARISC64 RISCV64 LOONGARCH64 M68K SH SHEB"
    ).split()
)
SECCOMP_FLAGS = frozenset(
    {
        "SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    }
)
HOOKS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
UID_GID_MAP_MAX = 340  # UID_GID_MAP_MAX_EXTENTS: lines in a uid_map or gid_map
UTS_NAME_MAX = 64  # __NEW_UTS_LEN: sethostname(2) and setdomainname(2) refuse longer names
PROPAGATIONS = frozenset(
    {"shared", "slave", "private", "unbindable", "rshared", "rslave", "rprivate", "runbindable"}
)
_CAPS = frozenset(CAP_NAMES)
_U64 = (1 << 64) - 1
_I64 = (1 << 63) - 1


# -- primitives --------------------------------------------------------------------------------------


def _fail(field: str, reason: str) -> NoReturn:
    raise UsageError(field, reason)


def _at(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _obj(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(field, f"must be an object, not {_kind(value)}")
    return value


def _list(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(field, f"must be a list, not {_kind(value)}")
    return value


def _str(value: object, field: str) -> str:
    if not isinstance(value, str):
        _fail(field, f"must be a string, not {_kind(value)}")
    return value


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        _fail(field, f"must be true or false, not {_kind(value)}")
    return value


def _int(value: object, field: str, lo: int = -_I64 - 1, hi: int = _U64) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(field, f"must be an integer, not {_kind(value)}")
    if not lo <= value <= hi:
        _fail(field, f"must be between {lo} and {hi}, not {value}")
    return value


def _uint(value: object, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        _fail(field, f"must not be negative, not {value}")
    return _int(value, field, 0)


def _abs(value: object, field: str) -> str:
    if not _str(value, field).startswith("/"):
        _fail(field, f"must be an absolute path, not {value!r}")
    return value  # type: ignore[return-value]


def uts_name(value: object, field: str) -> str:
    """A hostname or domainname: what sethostname(2)/setdomainname(2) take (64 bytes, no NUL)."""
    name = _str(value, field)
    if "\0" in name:
        _fail(field, "contains a NUL byte")
    if len(name.encode()) > UTS_NAME_MAX:
        _fail(field, f"{len(name.encode())} bytes long: at most {UTS_NAME_MAX} (the kernel's limit)")
    return name


def guest_hostname(value: object, field: str) -> str:
    """A guest's hostname as berth's guest manager takes it: :func:`uts_name`, and no whitespace
    or control character (it goes into /etc/hosts and the guest's prompt; the OCI runtime takes
    what the kernel takes, as runc)."""
    name = uts_name(value, field)
    bad = next((c for c in name if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        _fail(field, f"{name!r} contains {bad!r}: letters, digits, '-', '.' and '_' make a hostname")
    return name


def _strings(value: object, field: str) -> list[str]:
    items = _list(value, field)
    if not all(type(item) is str for item in items):  # fast path: long syscall name lists
        for i, item in enumerate(items):
            _str(item, f"{field}[{i}]")
    return items


def _c_strings(value: object, field: str) -> list[str]:
    """Strings for execve(2): no NUL byte in any (else the exec fails after ``start``)."""
    items = _strings(value, field)
    for i, item in enumerate(items):
        if "\0" in item:
            _fail(f"{field}[{i}]", "contains a NUL byte")
    return items


def _env(value: object, field: str) -> list[str]:
    """``process.env``: strings for execve(2), each ``NAME=VALUE`` with a name (runc refuses
    others at create: an entry without ``=`` is no variable, and one with an empty name would
    fail the exec after ``start``)."""
    items = _c_strings(value, field)
    for i, item in enumerate(items):
        name, eq, _ = item.partition("=")
        if not eq:
            _fail(f"{field}[{i}]", f"{item!r} has no '=': entries are NAME=VALUE")
        if not name:
            _fail(f"{field}[{i}]", f"{item!r}: empty variable name")
    return items


def _str_map(value: object, field: str) -> None:
    for key, item in _obj(value, field).items():
        _str(item, f"{field}.{key}")


def _opt(obj: dict[str, Any], key: str, base: str, check: Callable[[Any, str], object]) -> None:
    """Run ``check`` on ``obj[key]`` when it is present and not null."""
    if obj.get(key) is not None:
        check(obj[key], _at(base, key))


def _req(obj: dict[str, Any], key: str, base: str, check: Callable[[Any, str], object]) -> None:
    if obj.get(key) is None:
        _fail(_at(base, key), "is required")
    check(obj[key], _at(base, key))


def _each(value: object, field: str, check: Callable[[dict[str, Any], str], object]) -> None:
    for i, item in enumerate(_list(value, field)):
        check(_obj(item, f"{field}[{i}]"), f"{field}[{i}]")


def _one_of(choices: frozenset[str] | tuple[str, ...], what: str) -> Callable[[Any, str], str]:
    def check(value: object, field: str) -> str:
        if _str(value, field) not in choices:
            _fail(field, f"unknown {what} {value!r}")
        return value  # type: ignore[return-value]

    return check


# -- top level ---------------------------------------------------------------------------------------


def validate(config: object) -> dict[str, Any]:
    """Check a parsed config.json; return it unchanged, or raise :class:`UsageError` for the first problem."""
    spec = _obj(config, "config")
    _req(spec, "ociVersion", "", _str)
    if not spec["ociVersion"].startswith("1."):
        _fail("ociVersion", f"unsupported version {spec['ociVersion']!r} (berth implements 1.x)")
    _req(spec, "root", "", _root)
    _opt(spec, "process", "", _process)
    _opt(spec, "hostname", "", uts_name)
    _opt(spec, "domainname", "", uts_name)
    _opt(spec, "mounts", "", lambda v, f: _each(v, f, _mount))
    _opt(spec, "hooks", "", _hooks)
    _opt(spec, "annotations", "", _str_map)
    _opt(spec, "linux", "", _linux)
    _semantics(spec)
    return spec


def load_config(path: str | os.PathLike[str], *, check: bool = True) -> dict[str, Any]:
    """Read and (by default) validate a config.json; errors name the file and, for bad JSON, line and column."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(name, f"cannot read: [Errno {exc.errno}] {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(name, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    from berth.spec.jsontext import loads

    try:
        data = loads(text)
    except ValueError as exc:  # json.JSONDecodeError
        line, col, msg = (getattr(exc, a, None) for a in ("lineno", "colno", "msg"))
        where = f" at line {line} column {col}: {msg}" if line is not None else f": {exc}"
        raise UsageError(name, f"invalid JSON{where}") from None
    return validate(data) if check else _obj(data, name)


def _root(value: object, field: str) -> None:
    root = _obj(value, field)
    _req(root, "path", field, _str)
    if not root["path"]:
        _fail(f"{field}.path", "must not be empty")
    _opt(root, "readonly", field, _bool)


def _mount(m: dict[str, Any], field: str) -> None:
    _req(m, "destination", field, _abs)
    _opt(m, "type", field, _str)
    _opt(m, "source", field, _str)
    _opt(m, "options", field, _strings)
    _opt(m, "uidMappings", field, _idmaps)
    _opt(m, "gidMappings", field, _idmaps)


def _hooks(value: object, field: str) -> None:
    hooks = _obj(value, field)
    for name in HOOKS:
        _opt(hooks, name, field, lambda v, f: _each(v, f, _hook))


def _hook(h: dict[str, Any], field: str) -> None:
    _req(h, "path", field, _abs)
    _opt(h, "args", field, _strings)
    _opt(h, "env", field, _strings)
    _opt(h, "timeout", field, lambda v, f: _int(v, f, 1))


# -- process -----------------------------------------------------------------------------------------


def _process(value: object, field: str) -> None:
    proc = _obj(value, field)
    _opt(proc, "terminal", field, _bool)
    _opt(proc, "consoleSize", field, _console_size)
    _req(proc, "user", field, _user)
    _req(proc, "args", field, _c_strings)
    if not proc["args"]:
        _fail(f"{field}.args", "must not be empty")
    _opt(proc, "env", field, _env)
    _req(proc, "cwd", field, _abs)
    _opt(proc, "capabilities", field, _capabilities)
    _opt(proc, "rlimits", field, _rlimits)
    _opt(proc, "noNewPrivileges", field, _bool)
    _opt(proc, "apparmorProfile", field, _str)
    _opt(proc, "selinuxLabel", field, _str)
    _opt(proc, "oomScoreAdj", field, lambda v, f: _int(v, f, -1000, 1000))
    _opt(proc, "ioPriority", field, _io_priority)


def _console_size(value: object, field: str) -> None:
    size = _obj(value, field)
    _req(size, "height", field, _uint)
    _req(size, "width", field, _uint)


def _user(value: object, field: str) -> None:
    user = _obj(value, field)
    _req(user, "uid", field, lambda v, f: _int(v, f, 0, 0xFFFFFFFF))
    _req(user, "gid", field, lambda v, f: _int(v, f, 0, 0xFFFFFFFF))
    _opt(user, "umask", field, lambda v, f: _int(v, f, 0, 0o777))
    _opt(
        user,
        "additionalGids",
        field,
        lambda v, f: [_int(g, f"{f}[{i}]", 0, 0xFFFFFFFF) for i, g in enumerate(_list(v, f))],
    )


def _capabilities(value: object, field: str) -> None:
    caps = _obj(value, field)
    for key in ("bounding", "effective", "inheritable", "permitted", "ambient"):
        _opt(
            caps,
            key,
            field,
            lambda v, f: [_one_of(_CAPS, "capability")(c, f"{f}[{i}]") for i, c in enumerate(_list(v, f))],
        )


def _rlimits(value: object, field: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(_list(value, field)):
        here = f"{field}[{i}]"
        rl = _obj(item, here)
        _req(rl, "type", here, _one_of(RLIMITS, "rlimit"))
        if rl["type"] in seen:
            _fail(f"{here}.type", f"{rl['type']} is given twice")
        seen.add(rl["type"])
        _req(rl, "soft", here, _uint)
        _req(rl, "hard", here, _uint)
        if rl["soft"] > rl["hard"]:
            _fail(f"{here}.soft", f"soft limit {rl['soft']} is above the hard limit {rl['hard']}")


def _io_priority(value: object, field: str) -> None:
    prio = _obj(value, field)
    _req(prio, "class", field, _one_of(("IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"), "class"))
    _opt(prio, "priority", field, lambda v, f: _int(v, f, 0, 7))


# -- linux -------------------------------------------------------------------------------------------


def _linux(value: object, field: str) -> None:
    linux = _obj(value, field)
    _opt(linux, "namespaces", field, _namespaces)
    _opt(linux, "uidMappings", field, _idmaps)
    _opt(linux, "gidMappings", field, _idmaps)
    _opt(linux, "devices", field, lambda v, f: _each(v, f, _device))
    _opt(linux, "cgroupsPath", field, _str)
    _opt(linux, "resources", field, _resources)
    _opt(linux, "seccomp", field, check_seccomp)
    _opt(linux, "maskedPaths", field, lambda v, f: [_abs(p, f"{f}[{i}]") for i, p in enumerate(_list(v, f))])
    _opt(
        linux, "readonlyPaths", field, lambda v, f: [_abs(p, f"{f}[{i}]") for i, p in enumerate(_list(v, f))]
    )
    _opt(linux, "sysctl", field, _str_map)
    _opt(linux, "rootfsPropagation", field, _one_of(PROPAGATIONS, "propagation"))
    _opt(linux, "mountLabel", field, _str)
    _opt(linux, "personality", field, _personality)


def _namespaces(value: object, field: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(_list(value, field)):
        here = f"{field}[{i}]"
        ns = _obj(item, here)
        _req(ns, "type", here, _one_of(NAMESPACES, "namespace type"))
        if ns["type"] in seen:
            _fail(f"{here}.type", f"namespace {ns['type']!r} is given twice")
        seen.add(ns["type"])
        _opt(ns, "path", here, _abs)


def _idmap(m: dict[str, Any], field: str) -> None:
    _req(m, "containerID", field, lambda v, f: _int(v, f, 0, 0xFFFFFFFF))
    _req(m, "hostID", field, lambda v, f: _int(v, f, 0, 0xFFFFFFFF))
    _req(m, "size", field, lambda v, f: _int(v, f, 1, 0xFFFFFFFF))
    for key in ("containerID", "hostID"):
        if m[key] + m["size"] > 0xFFFFFFFF:  # the kernel's u32 ids: -1 is no id
            _fail(f"{field}.size", f"{key} {m[key]} + size {m['size']} runs past the last id 4294967294")


def _idmaps(value: object, field: str) -> None:
    """A uid or gid map as /proc/PID/uid_map takes it: at most 340 lines, no two ranges
    overlapping on either side (else the kernel's bare EINVAL)."""
    _each(value, field, _idmap)
    maps: list[dict[str, Any]] = value  # type: ignore[assignment]
    if len(maps) > UID_GID_MAP_MAX:
        _fail(field, f"{len(maps)} ranges: the kernel takes at most {UID_GID_MAP_MAX}")
    for i, a in enumerate(maps):
        for j in range(i):
            b = maps[j]
            for key in ("containerID", "hostID"):
                if a[key] < b[key] + b["size"] and b[key] < a[key] + a["size"]:
                    _fail(f"{field}[{i}].{key}", f"its range overlaps {field}[{j}]'s")


def _device(d: dict[str, Any], field: str) -> None:
    _req(d, "path", field, _abs)
    _req(d, "type", field, _one_of(("c", "b", "u", "p"), "device type"))
    if d["type"] != "p":
        _req(d, "major", field, _uint)
        _req(d, "minor", field, _uint)
    _opt(d, "fileMode", field, lambda v, f: _int(v, f, 0, 0o7777))
    _opt(d, "uid", field, lambda v, f: _int(v, f, 0, 0xFFFFFFFF))
    _opt(d, "gid", field, lambda v, f: _int(v, f, 0, 0xFFFFFFFF))


def _personality(value: object, field: str) -> None:
    p = _obj(value, field)
    _req(p, "domain", field, _one_of(("LINUX", "LINUX32"), "personality domain"))
    _opt(p, "flags", field, _strings)


def _semantics(spec: dict[str, Any]) -> None:
    """Checks across objects: what the fields mean together."""
    linux = spec.get("linux") or {}
    types = {ns.get("type") for ns in linux.get("namespaces") or ()}
    if spec.get("hostname") and "linux" in spec and "uts" not in types:
        _fail("hostname", "cannot set the hostname without a private UTS namespace (linux.namespaces)")
    if spec.get("domainname") and "linux" in spec and "uts" not in types:
        _fail("domainname", "cannot set the domainname without a private UTS namespace (linux.namespaces)")
    if (linux.get("uidMappings") or linux.get("gidMappings")) and "user" not in types:
        _fail("linux.uidMappings", "ID mappings need a user namespace (linux.namespaces)")
    user = next((ns for ns in linux.get("namespaces") or () if ns["type"] == "user"), None)
    if user is not None and not user.get("path"):  # a new one (a joined one has its maps)
        for key in ("uidMappings", "gidMappings"):
            if not linux.get(key):  # else the kernel's bare EINVAL writing uid_map
                _fail(f"linux.{key}", "a user namespace needs uid and gid mappings")
    for i, m in enumerate(spec.get("mounts") or ()):
        if os.path.normpath("/" + m["destination"].lstrip("/")) == "/proc" and m.get("type") != "proc":
            # over the guest's proc the runtime's own /proc/self/fd/N lookups fail after create
            _fail(f"mounts[{i}].destination", f"{m['destination']!r} takes only a proc mount")
    for key in linux.get("sysctl") or {}:
        need = sysctl_namespace(key)
        if need is None:
            _fail(f"linux.sysctl.{key}", "not in a kernel namespace: it would change the host's kernel")
        if need not in types:
            _fail(f"linux.sysctl.{key}", f"needs the container's own {need} namespace (linux.namespaces)")


_IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)


def sysctl_namespace(key: str) -> str | None:
    """The namespace a sysctl belongs to (``ipc``, ``network``, ``uts``), ``None`` for one of the
    whole kernel (``kernel.core_pattern``, ``vm.*``): the init writes linux.sysctl as root into
    /proc/sys before the capabilities go, so only namespaced ones are allowed (runc's list)."""
    name = key.replace("/", ".")
    if not all(name.split(".")):
        return None
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
        return "ipc"
    if name.startswith("net."):
        return "network"
    if name in ("kernel.hostname", "kernel.domainname"):
        return "uts"
    return None


# -- linux.resources ---------------------------------------------------------------------------------


def _resources(value: object, field: str) -> None:
    res = _obj(value, field)
    _opt(res, "devices", field, lambda v, f: _each(v, f, _device_rule))
    _opt(res, "memory", field, _memory)
    _opt(res, "cpu", field, _cpu)
    _opt(res, "pids", field, _pids)
    _opt(res, "blockIO", field, _block_io)
    _opt(res, "hugepageLimits", field, lambda v, f: _each(v, f, _hugepage))
    _opt(res, "network", field, _network)
    _opt(res, "unified", field, _str_map)


def _device_rule(rule: dict[str, Any], field: str) -> None:
    _req(rule, "allow", field, _bool)
    _opt(rule, "type", field, _one_of(("a", "b", "c"), "device type"))
    _opt(rule, "major", field, lambda v, f: _int(v, f, -1))
    _opt(rule, "minor", field, lambda v, f: _int(v, f, -1))
    access = rule.get("access")
    if access is not None and (not isinstance(access, str) or not set(access) <= set("rwm")):
        _fail(f"{field}.access", f"must be letters from 'rwm', not {access!r}")


def _limit(value: object, field: str) -> int:
    """A byte count: positive, or -1 for no limit."""
    n = _int(value, field, -1, _I64)
    if n == 0:
        _fail(field, "must be positive, or -1 for no limit")
    return n


def _memory(value: object, field: str) -> None:
    mem = _obj(value, field)
    _opt(mem, "limit", field, _limit)
    for key in ("reservation", "swap", "kernel", "kernelTCP"):
        _opt(mem, key, field, lambda v, f: _int(v, f, -1, _I64))
    _opt(mem, "swappiness", field, lambda v, f: _int(v, f, 0, 100))
    for key in ("disableOOMKiller", "useHierarchy", "checkBeforeUpdate"):
        _opt(mem, key, field, _bool)
    limit, swap = mem.get("limit"), mem.get("swap")
    if isinstance(limit, int) and isinstance(swap, int) and limit > 0 and 0 < swap < limit:
        _fail(f"{field}.swap", f"memory+swap limit {swap} is below the memory limit {limit}")


def _cpu(value: object, field: str) -> None:
    cpu = _obj(value, field)
    _opt(cpu, "shares", field, lambda v, f: _int(v, f, 2, 262144))
    _opt(cpu, "quota", field, lambda v, f: _int(v, f, -1, _I64))
    _opt(cpu, "burst", field, _uint)
    _opt(cpu, "period", field, lambda v, f: _int(v, f, 1000, 1000000))
    _opt(cpu, "realtimeRuntime", field, lambda v, f: _int(v, f, -1, _I64))
    _opt(cpu, "realtimePeriod", field, _uint)
    _opt(cpu, "cpus", field, _cpuset)
    _opt(cpu, "mems", field, _cpuset)
    _opt(cpu, "idle", field, lambda v, f: _int(v, f, 0, 1))
    quota = cpu.get("quota")
    if isinstance(quota, int) and 0 < quota < 1000:
        _fail(f"{field}.quota", f"must be at least 1000 (µs), or -1 for no limit, not {quota}")


def _cpuset(value: object, field: str) -> None:
    text = _str(value, field)
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        if not lo.strip().isdigit() or (hi and not hi.strip().isdigit()) or (hi and int(hi) < int(lo)):
            _fail(field, f"must be a list like '0-3,8', not {text!r}")


def _pids(value: object, field: str) -> None:
    pids = _obj(value, field)
    _req(pids, "limit", field, lambda v, f: _int(v, f, -1, _I64))


def _block_io(value: object, field: str) -> None:
    bio = _obj(value, field)
    _opt(bio, "weight", field, lambda v, f: _int(v, f, 10, 1000))
    _opt(bio, "leafWeight", field, lambda v, f: _int(v, f, 10, 1000))
    _opt(bio, "weightDevice", field, lambda v, f: _each(v, f, _weight_device))
    for key in (
        "throttleReadBpsDevice",
        "throttleWriteBpsDevice",
        "throttleReadIOPSDevice",
        "throttleWriteIOPSDevice",
    ):
        _opt(bio, key, field, lambda v, f: _each(v, f, _throttle_device))


def _weight_device(d: dict[str, Any], field: str) -> None:
    _req(d, "major", field, _uint)
    _req(d, "minor", field, _uint)
    _opt(d, "weight", field, lambda v, f: _int(v, f, 10, 1000))
    _opt(d, "leafWeight", field, lambda v, f: _int(v, f, 10, 1000))


def _throttle_device(d: dict[str, Any], field: str) -> None:
    _req(d, "major", field, _uint)
    _req(d, "minor", field, _uint)
    _req(d, "rate", field, _uint)


def _hugepage(h: dict[str, Any], field: str) -> None:
    _req(h, "pageSize", field, _str)
    _req(h, "limit", field, _uint)


def _network(value: object, field: str) -> None:
    net = _obj(value, field)
    _opt(net, "classID", field, lambda v, f: _int(v, f, 0, 0xFFFFFFFF))
    _opt(net, "priorities", field, lambda v, f: _each(v, f, _net_priority))


def _net_priority(p: dict[str, Any], field: str) -> None:
    _req(p, "name", field, _str)
    _req(p, "priority", field, lambda v, f: _int(v, f, 0, 0xFFFFFFFF))


# -- linux.seccomp -----------------------------------------------------------------------------------


def _seccomp_action(value: object, field: str) -> None:
    _one_of(SECCOMP_ACTIONS, "action")(value, field)
    if value == "SCMP_ACT_NOTIFY":
        _fail(field, "SCMP_ACT_NOTIFY is not supported (berth has no seccomp agent)")


def check_seccomp(value: object, field: str = "linux.seccomp") -> None:
    """Check an OCI ``linux.seccomp`` object; ``field`` is its JSON path (``""`` for a profile file)."""
    sec = _obj(value, field or "seccomp")
    _req(sec, "defaultAction", field, _seccomp_action)
    _opt(sec, "defaultErrnoRet", field, lambda v, f: _int(v, f, 0, 0xFFFF))
    if sec.get("defaultErrnoRet") is not None and sec["defaultAction"] not in (
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
    ):
        _fail(_at(field, "defaultErrnoRet"), f"is not allowed with {sec['defaultAction']}")
    _opt(
        sec,
        "architectures",
        field,
        lambda v, f: [
            _one_of(SECCOMP_ARCHES, "architecture")(a, f"{f}[{i}]") for i, a in enumerate(_list(v, f))
        ],
    )
    _opt(
        sec,
        "flags",
        field,
        lambda v, f: [_one_of(SECCOMP_FLAGS, "flag")(a, f"{f}[{i}]") for i, a in enumerate(_list(v, f))],
    )
    _opt(sec, "listenerPath", field, _abs)
    _opt(sec, "listenerMetadata", field, _str)
    _opt(sec, "syscalls", field, lambda v, f: _each(v, f, _syscall_rule))


def _syscall_rule(rule: dict[str, Any], field: str) -> None:
    _req(rule, "names", field, _strings)
    if not rule["names"]:
        _fail(_at(field, "names"), "must not be empty")
    _req(rule, "action", field, _seccomp_action)
    _opt(rule, "errnoRet", field, lambda v, f: _int(v, f, 0, 0xFFFF))
    if rule.get("errnoRet") is not None and rule["action"] not in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        _fail(_at(field, "errnoRet"), f"is not allowed with {rule['action']}")
    _opt(rule, "args", field, lambda v, f: _each(v, f, _syscall_arg))


def _syscall_arg(arg: dict[str, Any], field: str) -> None:
    _req(arg, "index", field, lambda v, f: _int(v, f, 0, 5))
    _opt(arg, "value", field, lambda v, f: _int(v, f, 0, _U64))
    _opt(arg, "valueTwo", field, lambda v, f: _int(v, f, 0, _U64))
    _req(arg, "op", field, _one_of(SECCOMP_OPERATORS, "operator"))
