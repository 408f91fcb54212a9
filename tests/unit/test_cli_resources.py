"""Resource flags → OCI linux.resources, rlimits and berth annotations (no root)."""

from __future__ import annotations

from typing import Any

import pytest

from berth.cli import resources
from berth.errors import UsageError
from berth.runtime.resources import record_from_spec, request_from_annotations


def parse(*items: tuple[str, str]) -> dict:
    return resources.parse(list(items), ncpus=2)


def test_cpu_flags_become_annotations() -> None:
    out = parse(("--cpu-share", "200"), ("--cpu-reserve", "25%"), ("--cpus", "1.5"), ("--cpu-burst", "100ms"))
    ann = out["annotations"]
    assert ann == {
        "berth.cpu.share": "200",
        "berth.cpu.reserve": "0.5",
        "berth.cpu.cap": "1.5",
        "berth.cpu.burst-us": "100000",
    }
    req = request_from_annotations("g", ann)
    assert (req.share, req.reserve, req.cap, req.burst_us) == (200, 0.5, 1.5, 100000)


def test_memory_pids_blkio() -> None:
    out = parse(
        ("--memory", "64m"),
        ("--memory-reservation", "32M"),
        ("--pids-limit", "50"),
        ("--blkio-weight", "300"),
    )
    assert out["resources"] == {
        "memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": 32 << 20},
        "pids": {"limit": 50},
        "blockIO": {"weight": 300},
    }


def test_device_throttle_resolves_major_minor() -> None:
    out = parse(("--device-read-bps", "/dev/null:1mb"), ("--device-write-iops", "/dev/null:100"))
    blk = out["resources"]["blockIO"]
    assert blk["throttleReadBpsDevice"] == [{"major": 1, "minor": 3, "rate": 1 << 20}]
    assert blk["throttleWriteIOPSDevice"] == [{"major": 1, "minor": 3, "rate": 100}]


def test_rlimits_and_supervised_limits() -> None:
    out = parse(("--nofile", "100"), ("--ulimit", "core=0:0"), ("--anon-memory", "32M"), ("--memlock", "64k"))
    rl = {r["type"]: (r["soft"], r["hard"]) for r in out["rlimits"]}
    assert rl["RLIMIT_NOFILE"] == (100, 100)
    assert rl["RLIMIT_CORE"] == (0, 0)
    assert rl["RLIMIT_MEMLOCK"] == (65536, 65536)
    assert out["annotations"]["berth.memory.anon"] == str(32 << 20)


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--cpu-share", "10001", "cpu-share"),
        ("--cpu-share", "0", "cpu-share"),  # share 0 needs a reservation
        ("--cpus", "3", "cpus"),
        ("--cpus", "-1", "cpus"),
        ("--cpu-reserve", "abc", "cpu-reserve"),
        ("--cpu-burst", "5ms", "cpu-burst"),  # a burst needs a cap
        ("--memory", "1k", "memory"),
        ("--memory", "12xb", "memory"),
        ("--pids-limit", "0", "pids-limit"),
        ("--nofile", "x", "nofile"),
        ("--ulimit", "nofile=2:1", "ulimit"),
        ("--blkio-weight", "5", "blkio-weight"),
        ("--device-read-bps", "/nonexistent:1mb", "device-read-bps"),
        ("--device-read-bps", "/etc/passwd:1mb", "device-read-bps"),
        ("--anon-memory", "0", "anon-memory"),
    ],
)
def test_bad_values_name_the_flag(flag: str, value: str, field: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse((flag, value))
    assert str(exc.value).startswith(f"{field}: "), str(exc.value)


def test_apply_merges_into_spec() -> None:
    spec: dict[str, Any] = {
        "process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]},
        "linux": {},
    }
    resources.apply(spec, [("--nofile", "10"), ("--cpuset-cpus", "0"), ("--cpus", "0.5")])
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 10}]
    assert spec["linux"]["resources"]["cpu"] == {"cpus": "0"}
    assert record_from_spec(spec)["cap"] == 0.5


def test_plain_oci_cpu_passes_through() -> None:
    # podman/containerd/kubelet set cpu.shares themselves: berth's weight policy leaves them alone.
    spec = {"linux": {"resources": {"cpu": {"shares": 2048, "quota": 50000, "period": 100000}}}}
    assert record_from_spec(spec) == {"share": 100, "reserve": 0.0, "cap": None, "burst_us": None}
