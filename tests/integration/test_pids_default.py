"""The default pids limit of berth's own guests (berth.cli.resources.DEFAULT_PIDS_LIMIT): a
`berth run` or `berth create` guest given no --pids-limit gets 4096, so a fork loop in it stops
there while the host can still fork; -1 keeps it unlimited; `berth set` changes it and leaves it
alone when told something else; a guest whose config has no pids key (made by an older berth)
keeps no limit.

The fork loop is bounded: at most 5000 ``sleep 30 &`` from one shell (which exits at its first
failed fork), under ``timeout 60``, and the guest's cgroup is killed when its command ends.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from test_guests import Guests, guests  # noqa: F401  (the fixture, with its teardown)

CG = Path("/sys/fs/cgroup")
V2 = (CG / "cgroup.controllers").exists()
HAS_PIDS = (CG / "pids").is_dir() or (V2 and "pids" in (CG / "cgroup.controllers").read_text().split())
pytestmark = pytest.mark.skipif(not HAS_PIDS, reason="no pids cgroup controller on this host")

# Inside the guest: the inner shell forks sleeps until a fork fails (ash then exits, status 2);
# the outer one reports with builtins only (no fork left) and execs a short sleep, so the host
# looks while the guest sits at its limit.
FORK_LOOP = (
    'sh -c "i=0; while [ \\$i -lt 5000 ]; do sleep 30 & i=\\$((i+1)); done; echo loop ended \\$i"; '
    'echo "inner $?"; '
    "d=/sys/fs/cgroup/pids; [ -e $d/pids.max ] || d=/sys/fs/cgroup; "
    "read max < $d/pids.max; read ev < $d/pids.events; read cur < $d/pids.current; "
    'echo "limit $max events $ev current $cur"; exec sleep 5'
)
READ_MAX = "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"


def pids_file(cgroup: str, name: str) -> Path:
    """A file of the cgroup at path ``cgroup`` in the pids hierarchy (v1) or the one (v2)."""
    return (CG if V2 else CG / "pids") / cgroup.strip("/") / name


def test_default_run_guest_stops_a_fork_loop_at_the_limit(
    background, berth_env: dict[str, str], unique: str
) -> None:
    name = f"{unique}-pd"
    g = background("--name", name, "--", "timeout", "60", "sh", "-c", FORK_LOOP)
    try:
        line = g.wait_for(r"^limit ", timeout=120)
        host_max = pids_file(f"{berth_env['BERTH_CGROUP_PARENT']}/{name}", "pids.max").read_text().strip()
        held = int(pids_file(f"{berth_env['BERTH_CGROUP_PARENT']}/{name}", "pids.current").read_text())
        # The host forks while the guest holds its every pid.
        host = subprocess.run(
            ["sh", "-c", "for i in 1 2 3 4 5; do true & done; wait; echo forked"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    finally:
        res = g.finish(timeout=60)
    print(f"{line}; host saw pids.max {host_max}, pids.current {held}")
    m = re.match(r"limit (\S+) events max (\d+) current (\d+)$", line)
    assert m, line
    assert m.group(1) == host_max == "4096"
    assert int(m.group(2)) >= 1, "the loop never hit the limit"
    assert 4000 <= int(m.group(3)) <= 4096 and 4000 <= held <= 4096, (line, held)
    assert "inner 2" in res.stdout and "loop ended" not in res.stdout, res  # stopped, not finished
    assert "can't fork" in res.stderr, res
    assert host.stdout.strip() == "forked", host
    assert res.returncode == 0, res


def test_run_pids_limit_flag_and_unlimited(berth) -> None:
    assert berth("--", "sh", "-c", READ_MAX).lines() == ["4096"]
    assert berth("--pids-limit", "-1", "--", "sh", "-c", READ_MAX).lines() == ["max"]
    assert berth("--pids-limit", "100", "--", "sh", "-c", READ_MAX).lines() == ["100"]


def test_created_guest_keeps_its_default_and_set_changes_it(guests: Guests) -> None:  # noqa: F811
    n = guests.name("pids")
    guests("create", n, "--cmd", "sleep 1000")
    config = guests.store / "guests" / n / "config.toml"
    assert '"pids-limit" = "4096"' in config.read_text()
    assert guests.info(n)["resources"] == {"pids-limit": "4096"}
    # The resources are written as dotted keys: a key appended by hand is still a top-level one.
    config.write_text(config.read_text() + 'hostname = "appended"\n')
    assert guests.info(n)["resources"] == {"pids-limit": "4096"}
    assert "resources: --pids-limit 4096" in guests("info", n).stdout
    guests("start", n)
    assert guests("exec", n, "--", "hostname").stdout.strip() == "appended"
    cg = guests.record(n)["cgroup"]
    assert pids_file(cg, "pids.max").read_text().strip() == "4096"
    stats = json.loads(guests("stats", "--json", n).stdout)
    assert stats[n]["pids"]["limit"] == 4096
    # Another flag: the pids limit stays, live and in the config.
    guests("set", n, "--memory", "128M")
    assert pids_file(cg, "pids.max").read_text().strip() == "4096"
    assert guests.info(n)["resources"] == {"pids-limit": "4096", "memory": "128M"}
    # -1: unlimited, live and kept for the next start.
    guests("set", n, "--pids-limit", "-1")
    assert pids_file(cg, "pids.max").read_text().strip() == "max"
    assert '"pids-limit" = "-1"' in config.read_text()
    guests("restart", n, "--timeout", "2")
    cg = guests.record(n)["cgroup"]
    assert pids_file(cg, "pids.max").read_text().strip() == "max"
    guests("destroy", "--force", n)


def test_guest_without_pids_key_keeps_no_limit(guests: Guests) -> None:  # noqa: F811
    """A config written by a berth before the default (no pids-limit) is not given one."""
    n = guests.name("old")
    guests("create", n, "--cmd", "sleep 1000")
    config = guests.store / "guests" / n / "config.toml"
    lines = config.read_text().splitlines()
    config.write_text("".join(f"{ln}\n" for ln in lines if '"pids-limit"' not in ln))
    assert "pids-limit" not in config.read_text()
    assert guests.info(n)["resources"] == {}
    guests("start", n)
    assert pids_file(guests.record(n)["cgroup"], "pids.max").read_text().strip() == "max"
    guests("destroy", "--force", n)
