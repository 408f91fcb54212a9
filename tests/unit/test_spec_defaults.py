"""Shape of the default OCI spec, its mounts, devices and capabilities."""

from __future__ import annotations

import json

import pytest

from berth.errors import UsageError
from berth.spec import defaults as d
from berth.spec.validate import validate


def test_caps_tables() -> None:
    assert len(d.DEFAULT_CAPS) == 14
    assert set(d.DEFAULT_CAPS) <= set(d.CAP_NAMES)
    assert d.CAP_NAMES[0] == "CAP_CHOWN"
    assert d.CAP_NAMES[21] == "CAP_SYS_ADMIN"
    assert d.CAP_NAMES[40] == "CAP_CHECKPOINT_RESTORE"
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    assert len(d.ALL_CAPS) == min(last, 40) + 1


def test_default_spec_shape() -> None:
    spec = d.default_spec(["sh", "-c", "true"], hostname="g1")
    assert spec["ociVersion"] == "1.2.0"
    proc = spec["process"]
    assert proc["args"] == ["sh", "-c", "true"]
    assert proc["cwd"] == "/"
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["terminal"] is False
    assert proc["env"] == [f"PATH={d.DEFAULT_PATH}", "HOSTNAME=g1"]
    caps = proc["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    assert all(caps[k] == list(d.DEFAULT_CAPS) for k in caps)
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    assert spec["hostname"] == "g1"
    linux = spec["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network", "cgroup"]
    assert linux["maskedPaths"] == list(d.MASKED_PATHS)
    assert linux["readonlyPaths"] == list(d.READONLY_PATHS)
    assert linux["devices"] == []
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    json.dumps(spec)  # JSON-compatible
    validate(spec)


def test_default_spec_options() -> None:
    spec = d.default_spec(
        ["top"],
        terminal=True,
        env={"PATH": "/bin", "A": "1"},
        cwd="/srv",
        uid=1000,
        gid=1000,
        additional_gids=(5, 20),
        caps=["CAP_KILL"],
        readonly_root=True,
        seccomp=None,
        no_new_privileges=True,
    )
    proc = spec["process"]
    assert proc["env"] == ["PATH=/bin", "TERM=xterm", "A=1"]
    assert proc["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [5, 20]}
    assert proc["capabilities"]["bounding"] == ["CAP_KILL"]
    assert proc["noNewPrivileges"] is True
    assert proc["terminal"] is True
    assert spec["root"]["readonly"] is True
    assert "seccomp" not in spec["linux"]
    assert "hostname" not in spec
    validate(spec)


def test_default_spec_env_list() -> None:
    spec = d.default_spec(["sh"], env=["FOO=bar=baz", "PATH=/x"])
    assert spec["process"]["env"] == ["PATH=/x", "FOO=bar=baz"]


def test_seccomp_follows_caps() -> None:
    spec = d.default_spec(["sh"], caps=[*d.DEFAULT_CAPS, "CAP_SYS_ADMIN"])
    names = {n for c in spec["linux"]["seccomp"]["syscalls"] for n in c["names"]}
    assert "mount" in names
    custom = {"defaultAction": "SCMP_ACT_ALLOW"}
    assert d.default_spec(["sh"], seccomp=custom)["linux"]["seccomp"] is custom
    with pytest.raises(UsageError):
        d.default_spec(["sh"], seccomp="nonsense")


def test_privileged() -> None:
    spec = d.default_spec(["sh"], privileged=True)
    caps = spec["process"]["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted", "inheritable", "ambient"}
    assert all(caps[k] == list(d.ALL_CAPS) for k in caps)
    linux = spec["linux"]
    assert "seccomp" not in linux
    assert "maskedPaths" not in linux
    assert "readonlyPaths" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    sys_mounts = [m for m in spec["mounts"] if m["destination"] in ("/sys", "/sys/fs/cgroup")]
    assert all("ro" not in m["options"] for m in sys_mounts)
    validate(spec)


def test_mounts() -> None:
    mounts = {m["destination"]: m for m in d.default_mounts()}
    assert list(mounts) == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert mounts["/dev"]["options"] == ["nosuid", "strictatime", "mode=755", "size=65536k"]
    assert {"newinstance", "ptmxmode=0666", "mode=0620", "gid=5"} <= set(mounts["/dev/pts"]["options"])
    assert {"mode=1777", "size=65536k"} <= set(mounts["/dev/shm"]["options"])
    assert mounts["/dev/mqueue"]["type"] == "mqueue"
    assert {"ro", "nosuid", "noexec", "nodev"} <= set(mounts["/sys"]["options"])
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"
    assert "ro" in mounts["/sys/fs/cgroup"]["options"]
    assert d.default_mounts() is not d.default_mounts()


def test_masked_paths() -> None:
    for path in (
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/sys/firmware",
        "/proc/acpi",
        "/proc/scsi",
    ):
        assert path in d.MASKED_PATHS
    assert d.READONLY_PATHS == ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def test_devices() -> None:
    by_path = {dev["path"]: (dev["major"], dev["minor"]) for dev in d.DEFAULT_DEVICES}
    assert by_path == {
        "/dev/null": (1, 3),
        "/dev/zero": (1, 5),
        "/dev/full": (1, 7),
        "/dev/random": (1, 8),
        "/dev/urandom": (1, 9),
        "/dev/tty": (5, 0),
    }
    assert all(dev["type"] == "c" and dev["fileMode"] == 0o666 for dev in d.DEFAULT_DEVICES)


def test_device_rules() -> None:
    rules = d.default_device_rules()
    assert rules[0] == {"allow": False, "access": "rwm"}
    allowed = {(r["type"], r["major"], r.get("minor")) for r in rules[1:]}
    assert all(r["allow"] and r["access"] == "rwm" for r in rules[1:])
    assert ("c", 5, 2) in allowed  # ptmx
    assert ("c", 136, None) in allowed  # /dev/pts/*
    assert ("c", 1, 3) in allowed
    assert not [r for r in rules if r.get("type") == "b"]  # no block device, not even mknod
    assert not [r for r in rules[1:] if "major" not in r]  # no wildcard allow


def test_runc_spec() -> None:
    spec = d.runc_spec()
    assert spec["process"]["args"] == ["sh"]
    assert spec["process"]["terminal"] is True
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["process"]["capabilities"]["bounding"] == [
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
    ]
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert [n["type"] for n in spec["linux"]["namespaces"]] == [
        "pid",
        "network",
        "ipc",
        "uts",
        "mount",
        "cgroup",
    ]
    validate(spec)


def test_runc_spec_rootless() -> None:
    spec = d.runc_spec(rootless=True, uid=1000, gid=100)
    types = [n["type"] for n in spec["linux"]["namespaces"]]
    assert "network" not in types
    assert types[-1] == "user"
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 100, "size": 1}]
    assert "resources" not in spec["linux"]
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert sys_mount["options"] == ["rbind", "nosuid", "noexec", "nodev", "ro"]
    assert all(not o.startswith("gid=") for m in spec["mounts"] for o in m["options"])
    validate(spec)
