"""config.json validation: good configs pass, each bad field is named by its JSON path."""

from __future__ import annotations

import copy
import json
import re

import pytest

from berth.errors import UsageError
from berth.spec import validate as v
from berth.spec.defaults import default_spec, runc_spec

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_DELETE = object()


def _tokens(path: str) -> list[str | int]:
    return [int(i) if i else k for k, i in _TOKEN.findall(path)]


def setp(spec: dict, path: str, value: object) -> dict:
    """A copy of ``spec`` with the field at ``path`` set (or deleted with _DELETE)."""
    spec = copy.deepcopy(spec)
    *parents, last = _tokens(path)
    node = spec
    for key in parents:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return spec


@pytest.fixture(scope="module")
def good() -> dict:
    spec = default_spec(["sh"], hostname="g1")
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]
    spec["process"]["consoleSize"] = {"height": 24, "width": 80}
    spec["process"]["oomScoreAdj"] = 100
    spec["hooks"] = {"prestart": [{"path": "/usr/bin/hook", "args": ["hook", "x"], "timeout": 5}]}
    spec["annotations"] = {"org.example": "1"}
    spec["linux"]["resources"].update(
        {
            "memory": {"limit": 1 << 30, "swap": 2 << 30, "swappiness": 10},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1,3"},
            "pids": {"limit": 100},
            "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
            "unified": {"memory.high": "max"},
        }
    )
    spec["linux"]["devices"] = [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}
    ]
    spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    spec["linux"]["cgroupsPath"] = "/berth/g1"
    spec["linux"]["rootfsPropagation"] = "rslave"
    return v.validate(spec)


def test_good_configs(good: dict) -> None:
    assert v.validate(good) is good
    v.validate(runc_spec())
    v.validate(runc_spec(rootless=True))
    v.validate(default_spec(["sh"], privileged=True))
    v.validate({"ociVersion": "1.0.2", "root": {"path": "/r"}})  # process is optional
    v.validate({**good, "hostname": "h" * 64, "domainname": "é" * 32})  # the kernel's 64 bytes


BAD = [
    # top level
    ("ociVersion", _DELETE, "ociVersion", "is required"),
    ("ociVersion", 1, "ociVersion", "must be a string"),
    ("ociVersion", "2.0.0", "ociVersion", "unsupported version"),
    ("root", _DELETE, "root", "is required"),
    ("root.path", _DELETE, "root.path", "is required"),
    ("root.path", "", "root.path", "must not be empty"),
    ("root.readonly", "yes", "root.readonly", "must be true or false"),
    ("hostname", 5, "hostname", "must be a string"),
    ("hostname", "h" * 65, "hostname", "65 bytes long: at most 64"),
    ("hostname", "é" * 33, "hostname", "66 bytes long: at most 64"),
    ("hostname", "a\0b", "hostname", "NUL byte"),
    ("domainname", "d" * 65, "domainname", "at most 64"),
    ("annotations", {"a": 1}, "annotations.a", "must be a string"),
    # process
    ("process", [], "process", "must be an object"),
    ("process.args", _DELETE, "process.args", "is required"),
    ("process.args", [], "process.args", "must not be empty"),
    ("process.args", "sh", "process.args", "must be a list"),
    ("process.args", ["sh", 1], "process.args[1]", "must be a string"),
    ("process.cwd", "srv", "process.cwd", "must be an absolute path"),
    ("process.cwd", _DELETE, "process.cwd", "is required"),
    ("process.env", ["A=1", None], "process.env[1]", "must be a string"),
    ("process.env", ["A=1", "B=\0"], "process.env[1]", "contains a NUL byte"),
    ("process.env", ["A=1", "=x"], "process.env[1]", "empty variable name"),
    ("process.args", ["sh", "-c", "a\0b"], "process.args[2]", "contains a NUL byte"),
    ("process.terminal", 1, "process.terminal", "must be true or false"),
    ("process.consoleSize.height", -1, "process.consoleSize.height", "must not be negative"),
    ("process.consoleSize.width", "80", "process.consoleSize.width", "must be an integer"),
    ("process.user", _DELETE, "process.user", "is required"),
    ("process.user.uid", -1, "process.user.uid", "between 0 and"),
    ("process.user.gid", 1.5, "process.user.gid", "must be an integer"),
    ("process.user.uid", True, "process.user.uid", "must be an integer"),
    ("process.user.additionalGids", [1, -2], "process.user.additionalGids[1]", "between 0 and"),
    ("process.user.umask", 0o1777, "process.user.umask", "between 0 and"),
    (
        "process.capabilities.bounding",
        ["CAP_FOO"],
        "process.capabilities.bounding[0]",
        "unknown capability 'CAP_FOO'",
    ),
    ("process.capabilities.ambient", ["SYS_ADMIN"], "process.capabilities.ambient[0]", "unknown capability"),
    ("process.rlimits[0].type", "NOFILE", "process.rlimits[0].type", "unknown rlimit 'NOFILE'"),
    ("process.rlimits[0].soft", 5000, "process.rlimits[0].soft", "above the hard limit"),
    ("process.rlimits[0].hard", -1, "process.rlimits[0].hard", "must not be negative"),
    (
        "process.rlimits",
        [{"type": "RLIMIT_CORE", "soft": 0, "hard": 0}] * 2,
        "process.rlimits[1].type",
        "given twice",
    ),
    ("process.noNewPrivileges", "true", "process.noNewPrivileges", "must be true or false"),
    ("process.oomScoreAdj", 1001, "process.oomScoreAdj", "between -1000 and 1000"),
    # mounts
    ("mounts[2].destination", "dev/pts", "mounts[2].destination", "must be an absolute path"),
    ("mounts[0].destination", _DELETE, "mounts[0].destination", "is required"),
    ("mounts[1].options", "ro", "mounts[1].options", "must be a list"),
    ("mounts", {}, "mounts", "must be a list"),
    ("mounts[0].type", "tmpfs", "mounts[0].destination", "takes only a proc mount"),
    ("mounts[1].destination", "//proc/", "mounts[1].destination", "takes only a proc mount"),
    # hooks
    ("hooks.prestart[0].path", "hook", "hooks.prestart[0].path", "must be an absolute path"),
    ("hooks.poststop", [{"args": []}], "hooks.poststop[0].path", "is required"),
    ("hooks.prestart[0].timeout", 0, "hooks.prestart[0].timeout", "between 1 and"),
    (
        "hooks.createRuntime",
        [{"path": "/x", "env": [1]}],
        "hooks.createRuntime[0].env[0]",
        "must be a string",
    ),
    # namespaces
    ("linux.namespaces[0].type", "pids", "linux.namespaces[0].type", "unknown namespace type 'pids'"),
    ("linux.namespaces[1]", {"type": "pid"}, "linux.namespaces[1].type", "given twice"),
    ("linux.namespaces[0].path", "proc/1/ns/pid", "linux.namespaces[0].path", "must be an absolute path"),
    (
        "linux.uidMappings",
        [{"containerID": 0, "hostID": 1000, "size": 0}],
        "linux.uidMappings[0].size",
        "between 1 and",
    ),
    (
        "linux.uidMappings",
        [
            {"containerID": 0, "hostID": 100000, "size": 1000},
            {"containerID": 500, "hostID": 200000, "size": 10},
        ],
        "linux.uidMappings[1].containerID",
        "overlaps linux.uidMappings[0]'s",
    ),
    (
        "linux.gidMappings",
        [
            {"containerID": 0, "hostID": 100000, "size": 1000},
            {"containerID": 5000, "hostID": 100999, "size": 1},
        ],
        "linux.gidMappings[1].hostID",
        "overlaps linux.gidMappings[0]'s",
    ),
    (
        "linux.uidMappings",
        [{"containerID": 0, "hostID": 4294967290, "size": 6}],
        "linux.uidMappings[0].size",
        "runs past the last id",
    ),
    (
        "linux.uidMappings",
        [{"containerID": i, "hostID": 100000 + i, "size": 1} for i in range(341)],
        "linux.uidMappings",
        "at most 340",
    ),
    ("linux.devices[0].type", "x", "linux.devices[0].type", "unknown device type"),
    ("linux.devices[0].path", "dev/fuse", "linux.devices[0].path", "must be an absolute path"),
    ("linux.devices[0].major", _DELETE, "linux.devices[0].major", "is required"),
    ("linux.maskedPaths[1]", "proc/kcore", "linux.maskedPaths[1]", "must be an absolute path"),
    ("linux.readonlyPaths", "/proc/sys", "linux.readonlyPaths", "must be a list"),
    ("linux.sysctl", {"a": 1}, "linux.sysctl.a", "must be a string"),
    ("linux.sysctl", {"kernel.core_pattern": "|/x"}, "linux.sysctl.kernel.core_pattern", "host's kernel"),
    ("linux.sysctl", {"kernel/core_pattern": "|/x"}, "linux.sysctl.kernel/core_pattern", "host's kernel"),
    ("linux.sysctl", {"vm.overcommit_memory": "1"}, "linux.sysctl.vm.overcommit_memory", "host's kernel"),
    ("linux.sysctl", {"net..ipv4": "1"}, "linux.sysctl.net..ipv4", "host's kernel"),
    ("linux.sysctl", {"fs.mqueue": "1"}, "linux.sysctl.fs.mqueue", "host's kernel"),
    ("linux.rootfsPropagation", "rshard", "linux.rootfsPropagation", "unknown propagation"),
    # resources
    ("linux.resources.devices[0].allow", _DELETE, "linux.resources.devices[0].allow", "is required"),
    ("linux.resources.devices[1].access", "rwx", "linux.resources.devices[1].access", "letters from 'rwm'"),
    ("linux.resources.devices[1].type", "d", "linux.resources.devices[1].type", "unknown device type"),
    ("linux.resources.cpu.shares", 1, "linux.resources.cpu.shares", "between 2 and 262144"),
    ("linux.resources.cpu.shares", 300000, "linux.resources.cpu.shares", "between 2 and 262144"),
    ("linux.resources.cpu.period", 10, "linux.resources.cpu.period", "between 1000 and 1000000"),
    ("linux.resources.cpu.quota", 500, "linux.resources.cpu.quota", "at least 1000"),
    ("linux.resources.cpu.cpus", "0-a", "linux.resources.cpu.cpus", "a list like"),
    ("linux.resources.cpu.cpus", "3-1", "linux.resources.cpu.cpus", "a list like"),
    ("linux.resources.memory.limit", 0, "linux.resources.memory.limit", "positive, or -1"),
    ("linux.resources.memory.limit", -2, "linux.resources.memory.limit", "between -1 and"),
    ("linux.resources.memory.limit", "1G", "linux.resources.memory.limit", "must be an integer"),
    ("linux.resources.memory.swap", 1 << 20, "linux.resources.memory.swap", "below the memory limit"),
    ("linux.resources.memory.swappiness", 101, "linux.resources.memory.swappiness", "between 0 and 100"),
    ("linux.resources.pids.limit", -5, "linux.resources.pids.limit", "between -1 and"),
    ("linux.resources.pids", {}, "linux.resources.pids.limit", "is required"),
    ("linux.resources.blockIO.weight", 5, "linux.resources.blockIO.weight", "between 10 and 1000"),
    (
        "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
        -1,
        "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
        "must not be negative",
    ),
    (
        "linux.resources.hugepageLimits[0].pageSize",
        2,
        "linux.resources.hugepageLimits[0].pageSize",
        "must be a string",
    ),
    ("linux.resources.unified", {"memory.max": 5}, "linux.resources.unified.memory.max", "must be a string"),
    # seccomp
    (
        "linux.seccomp.defaultAction",
        "SCMP_ACT_DENY",
        "linux.seccomp.defaultAction",
        "unknown action 'SCMP_ACT_DENY'",
    ),
    ("linux.seccomp.defaultAction", "SCMP_ACT_NOTIFY", "linux.seccomp.defaultAction", "not supported"),
    ("linux.seccomp.defaultErrnoRet", -1, "linux.seccomp.defaultErrnoRet", "between 0 and 65535"),
    (
        "linux.seccomp.architectures[0]",
        "SCMP_ARCH_VAX",
        "linux.seccomp.architectures[0]",
        "unknown architecture",
    ),
    ("linux.seccomp.flags", ["SECCOMP_FILTER_FLAG_FOO"], "linux.seccomp.flags[0]", "unknown flag"),
    (
        "linux.seccomp.syscalls[3].action",
        "SCMP_ACT_FOO",
        "linux.seccomp.syscalls[3].action",
        "unknown action 'SCMP_ACT_FOO'",
    ),
    ("linux.seccomp.syscalls[0].names", [], "linux.seccomp.syscalls[0].names", "must not be empty"),
    (
        "linux.seccomp.syscalls[2].args[0].op",
        "SCMP_CMP_XX",
        "linux.seccomp.syscalls[2].args[0].op",
        "unknown operator",
    ),
    (
        "linux.seccomp.syscalls[2].args[0].index",
        6,
        "linux.seccomp.syscalls[2].args[0].index",
        "between 0 and 5",
    ),
    (
        "linux.seccomp.syscalls[2].args[0].value",
        -1,
        "linux.seccomp.syscalls[2].args[0].value",
        "between 0 and",
    ),
    (
        "linux.seccomp.syscalls[0].errnoRet",
        1,
        "linux.seccomp.syscalls[0].errnoRet",
        "not allowed with SCMP_ACT_ALLOW",
    ),
    # across objects
    ("linux.namespaces", [{"type": "pid"}, {"type": "mount"}], "hostname", "without a private UTS namespace"),
    (
        "linux.namespaces",
        [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}],
        "linux.sysctl.net.ipv4.ip_forward",
        "needs the container's own network namespace",
    ),
]


@pytest.mark.parametrize(
    ("key", "ns"),
    [
        ("net.ipv4.ip_forward", "network"),
        ("net/ipv4/ip_forward", "network"),
        ("kernel.shmmax", "ipc"),
        ("fs.mqueue.msg_max", "ipc"),
        ("kernel.domainname", "uts"),
        ("kernel.core_pattern", None),
        ("kernel.modprobe", None),
        ("vm.panic_on_oom", None),
        ("", None),
    ],
)
def test_sysctl_namespace(key: str, ns: str | None) -> None:
    assert v.sysctl_namespace(key) == ns


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"), BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD]
)
def test_bad_field(good: dict, path: str, value: object, field: str, reason: str) -> None:
    bad = setp(good, path, value)
    with pytest.raises(UsageError) as exc:
        v.validate(bad)
    assert exc.value.field == field
    assert reason in exc.value.reason
    assert "\n" not in str(exc.value)


def test_not_an_object() -> None:
    with pytest.raises(UsageError, match="config: must be an object, not a list"):
        v.validate([])


def test_null_is_absent(good: dict) -> None:
    v.validate(setp(good, "hooks", None))
    v.validate(setp(good, "linux.seccomp", None))


def test_unknown_fields_are_left_alone(good: dict) -> None:
    v.validate(setp(good, "x-berth", {"anything": [1]}))


def test_id_mappings_side_by_side(good: dict) -> None:
    maps = [{"containerID": 0, "hostID": 100000, "size": 1000}, {"containerID": 1000, "hostID": 0, "size": 1}]
    maps += [{"containerID": 1001, "hostID": 4294967294 - 5, "size": 5}]  # up to the last id
    ns = [*good["linux"]["namespaces"], {"type": "user"}]
    v.validate(
        setp(setp(setp(good, "linux.namespaces", ns), "linux.uidMappings", maps), "linux.gidMappings", maps)
    )


def test_uid_mappings_need_user_ns(good: dict) -> None:
    bad = setp(good, "linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}])
    with pytest.raises(UsageError, match="user namespace"):
        v.validate(bad)


def test_load_config(tmp_path, good: dict) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(good))
    assert v.load_config(path) == good


def test_load_config_invalid_json(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "ociVersion": "1.2.0",\n  "root": {"path": "rootfs",}\n}\n')
    with pytest.raises(UsageError) as exc:
        v.load_config(path)
    assert exc.value.field == str(path)
    assert exc.value.reason.startswith("invalid JSON at line 3 column 29: ")


def test_load_config_missing(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"cannot read: \[Errno 2\] No such file or directory"):
        v.load_config(tmp_path / "config.json")


def test_load_config_invalid_spec(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"ociVersion": "1.2.0", "root": {"path": "r"}, "process": {"args": []}}))
    with pytest.raises(UsageError) as exc:
        v.load_config(path)
    assert exc.value.field == "process.user"
    assert v.load_config(path, check=False)["root"] == {"path": "r"}
