"""One guest's broken config.toml (empty, not TOML, not UTF-8, a bad key) hides no other guest.

The commands that walk every guest (``berth list``, ``top``, ``stats``, ``metrics``, ``gc``)
show or handle the healthy guest beside it and name the broken one on one line; guestd adopts
and reaps both; a broken guest that runs still holds its CPU reservation (admission reads it from
the guest's runtime state, not its config); a command naming the broken guest fails with one
line, exit 125, except ``berth stop`` / ``destroy``, which still work on it.  Nothing is left
(test_guests' ``guests`` fixture checks the store, cgroups, mounts and loop devices).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from test_guests import Guests, _pid_alive, guests  # noqa: F401 - the fixture

from helpers import cgroup_roots

BROKEN = {
    "empty": (b"", "empty (a guest's config needs at least 'template')"),
    "toml": (
        b'template = "busybox"\ncmd = ["sleep",\n',
        "not valid TOML at line 3, column 1 (the end of the file): invalid value",
    ),
    "utf8": (
        b'template = "busybox"\ncmd = ["sleep", "\xff"]\n',
        "not valid TOML at line 2, column 18: not UTF-8 (byte 0xff)",
    ),
    "key": (b'template = "busybox"\nprivileged = "yes"\n', "privileged: must be true or false, not 'yes'"),
}


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{proc.stderr}"
    return lines[0]


def _cgroups(path: str) -> list[Path]:
    """The guest's cgroup directories (``path``: its run record's ``cgroup``) still there."""
    return [top / path.strip("/") for top in cgroup_roots() if (top / path.strip("/")).is_dir()]


def _pair(guests: Guests, *reserve: str) -> tuple[str, str, Path, bytes]:  # noqa: F811
    """A healthy running guest and one whose config is then broken (running too)."""
    good, bad = guests.name("ok"), guests.name("bad")
    guests("create", good, *(("--cpu-reserve", reserve[0]) if reserve else ()), "--cmd", "sleep 1000")
    guests("create", bad, *(("--cpu-reserve", reserve[1]) if reserve else ()), "--cmd", "sleep 1000")
    guests("start", good, bad)
    cfg = guests.store / "guests" / bad / "config.toml"
    return good, bad, cfg, cfg.read_bytes()


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_walkers_show_the_other_guests(guests: Guests, kind: str) -> None:  # noqa: F811
    content, why = BROKEN[kind]
    good, bad, cfg, _orig = _pair(guests)
    pids = {n: guests.record(n)["pid"] for n in (good, bad)}
    cgs = {n: guests.record(n)["cgroup"] for n in (good, bad)}
    assert all(_cgroups(c) for c in cgs.values())
    cfg.write_bytes(content)
    prefix = f"guest '{bad}': {cfg}: "

    listed = guests("list")
    assert _one_line(listed) == f"berth list: {prefix}{why}"
    rows = {ln.split()[0]: ln.split()[1:3] for ln in listed.stdout.splitlines()[1:]}
    assert rows[good] == ["running", str(pids[good])]
    assert rows[bad] == ["broken", str(pids[bad])]  # its pid still shown: it runs

    top = guests("top", "--once", "--interval", "0.1")
    assert _one_line(top) == f"berth top: {prefix}{why}"
    shown = {ln.split()[0]: ln.split() for ln in top.stdout.splitlines() if ln.split()[:1] in ([good], [bad])}
    assert shown[good][1:3] == ["running", str(pids[good])] and shown[good][-1] == "busybox"
    assert shown[bad][1:3] == ["running", str(pids[bad])] and shown[bad][-1] == "?"

    stats = guests("stats", "--json", "--interval", "0")
    assert stats.stderr == ""
    got = json.loads(stats.stdout)
    assert got[good]["pid"] == pids[good] and got[bad]["pid"] == pids[bad]
    assert got[good]["pids"]["current"] >= 1
    one = guests("stats", "--json", "--interval", "0", bad)  # stats need no config: named, it is shown
    assert json.loads(one.stdout)[bad]["pid"] == pids[bad]

    metrics = guests("metrics")
    assert metrics.stderr == ""
    assert f'berth_guest_up{{guest="{good}"}} 1.0' in metrics.stdout
    assert f'berth_guest_up{{guest="{bad}"}} 1.0' in metrics.stdout

    gc = guests("gc")
    assert bad not in gc.stdout and good not in gc.stdout, gc.stdout  # both run: nothing of theirs cleaned
    assert all(_pid_alive(p) for p in pids.values())

    assert guests("start", bad).returncode == 0  # it runs already: nothing to do, no config read
    for verb in (
        ("info", bad),
        ("restart", bad),
        ("restart", good, bad),
        ("set", bad, "--memory", "64M"),
    ):
        proc = guests(*verb, check=False)
        assert proc.returncode == 125, proc
        assert _one_line(proc).startswith(f"berth: {cfg}: {why}"), proc.stderr
    assert all(_pid_alive(p) for p in pids.values())  # a restart that cannot start stops nothing
    assert guests.info(good)["state"] == "running"

    guests("stop", "--timeout", "5", bad)  # its own stop signal unknown: SIGTERM
    assert not _pid_alive(pids[bad])
    assert not _cgroups(cgs[bad])
    assert guests.record(bad)["status"] == "stopped"
    # stopped and broken: still listed as broken, still not in the way of the other
    rows = {ln.split()[0]: ln.split()[1] for ln in guests("list").stdout.splitlines()[1:]}
    assert (rows[good], rows[bad]) == ("running", "broken")
    start = guests("start", bad, check=False)  # stopped: its config is needed now
    assert start.returncode == 125, start
    assert _one_line(start).startswith(f"berth: {cfg}: {why}"), start.stderr
    assert guests.record(bad)["status"] == "stopped" and not _cgroups(cgs[bad])
    assert f'berth_guest_up{{guest="{good}"}} 1.0' in guests("metrics").stdout
    guests("destroy", bad)
    guests("stop", good)
    assert guests.mine() == [good]


def test_admission_counts_a_broken_running_guest(guests: Guests) -> None:  # noqa: F811
    # reserved: 25% + 50% of the host; a third asking 30% passes only if the 50% is forgotten
    good, bad, cfg, orig = _pair(guests, "25%", "50%")
    third = guests.name("third")
    guests("create", third, "--cpu-reserve", "30%", "--cmd", "sleep 1000")
    cfg.write_bytes(b"")
    refused = guests("start", third, check=False)
    assert refused.returncode == 125, refused
    line = _one_line(refused)
    assert "cpu-reserve" in line and "unreserved" in line, line
    assert guests.record(third).get("status") != "running"
    assert not _cgroups(f"{guests.env['BERTH_CGROUP_PARENT']}/{third}")
    guests("stop", bad)  # its reservation goes with it
    guests("start", third)
    assert guests.info(third)["state"] == "running"
    guests("stop", good, third)
    cfg.write_bytes(orig)


def test_guestd_adopts_and_reaps_a_broken_guest(guests: Guests) -> None:  # noqa: F811
    good, bad, cfg, _orig = _pair(guests)
    cfg.write_bytes(BROKEN["toml"][0])
    pids = {n: guests.record(n)["pid"] for n in (good, bad)}
    cgs = {n: guests.record(n)["cgroup"] for n in (good, bad)}
    old = guests.daemon_pid()
    assert old
    os.kill(old, signal.SIGKILL)
    guests.wait(lambda: not _pid_alive(old), what="guestd to die")
    guests("list")  # a running guest always has a supervisor: a new guestd adopts both
    new = guests.wait(lambda: guests.daemon_pid() != old and guests.daemon_pid(), what="a new guestd")
    assert _pid_alive(new)
    os.kill(pids[bad], signal.SIGKILL)  # an adopted guest ends: guestd's worker cleans up after it
    guests.wait(lambda: guests.record(bad).get("status") == "stopped", what="the broken guest's record")
    guests.wait(lambda: not _cgroups(cgs[bad]), what="the broken guest's cgroup to go")
    assert _pid_alive(pids[good]) and guests.record(good)["status"] == "running"
    os.kill(pids[good], signal.SIGKILL)
    guests.wait(lambda: guests.record(good).get("status") == "stopped", what="the healthy guest's record")
    guests.wait(lambda: not _cgroups(cgs[good]), what="the healthy guest's cgroup to go")
    guests("destroy", bad)
