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
    import os
    import stat

    # a whole disk (throttles take no character device or partition): loop0 on most hosts
    disks = [f"/dev/{d}" for d in sorted(os.listdir("/sys/block")) if os.path.exists(f"/dev/{d}")]
    disks = [d for d in disks if stat.S_ISBLK(os.stat(d).st_mode)]
    if not disks:
        pytest.skip("no block device node under /dev")
    dev = disks[0]
    major, minor = os.major(os.stat(dev).st_rdev), os.minor(os.stat(dev).st_rdev)
    out = parse(("--device-read-bps", f"{dev}:1mb"), ("--device-write-iops", f"{dev}:100"))
    blk = out["resources"]["blockIO"]
    assert blk["throttleReadBpsDevice"] == [{"major": major, "minor": minor, "rate": 1 << 20}]
    assert blk["throttleWriteIOPSDevice"] == [{"major": major, "minor": minor, "rate": 100}]


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


# -- the default pids limit of berth's own guests ----------------------------------------------


def test_default_pids_limit_added_only_when_unset() -> None:
    d = ("--pids-limit", str(resources.DEFAULT_PIDS_LIMIT))
    assert resources.DEFAULT_PIDS_LIMIT == 4096
    assert resources.with_defaults([]) == [d]
    assert resources.with_defaults([("--memory", "64M")]) == [("--memory", "64M"), d]
    for given in ("50", "-1", "max"):
        assert resources.with_defaults([("--pids-limit", given)]) == [("--pids-limit", given)]
    # `berth set` parses only what it is given: no default slips into a change of something else.
    assert "pids" not in parse(("--memory", "64M"))["resources"]
    assert "4096" in resources.HELP and "-1 unlimited" in resources.HELP


@pytest.mark.parametrize(
    ("flags", "limit"),
    [([], 4096), (["--pids-limit", "50"], 50), (["--pids-limit", "-1"], -1), (["--pids-limit=max"], -1)],
)
def test_berth_run_options_carry_the_default(flags: list[str], limit: int) -> None:
    """`berth run`'s and `berth create`'s parsed options (create stores them in the guest's
    config) hold the limit; the spec gets it as linux.resources.pids."""
    from berth.cli import run as runcli

    o = runcli.parse([*flags, "--", "sh"])
    want = flags[-1].split("=")[-1] if flags else "4096"
    assert [v for f, v in o["resources"] if f == "--pids-limit"] == [want]
    spec: dict[str, Any] = {"linux": {}}
    resources.apply(spec, o["resources"])
    assert spec["linux"]["resources"]["pids"] == {"limit": limit}


def test_old_guest_config_without_pids_key_gets_no_default() -> None:
    """A guest created by a berth before the default (no pids-limit in its [resources]) keeps
    what it had: no limit (its config is not rewritten behind its owner's back)."""
    from berth.guests import config

    o = config.run_options({"template": "busybox", "resources": {"memory": "64M"}})
    assert o["resources"] == [("--memory", "64M")]
    o = config.run_options({"template": "busybox", "resources": {"pids-limit": "4096"}})
    assert o["resources"] == [("--pids-limit", "4096")]
