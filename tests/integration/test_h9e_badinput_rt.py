"""Bad input on the real kernel: one line on stderr naming the field, exit status 125, nothing
left (state dirs, cgroups, guests in the store); ``berth list`` listing the other guests when
one's config.toml is broken; ``berth-runtime delete`` taking the state dir a killed create left.

berth-runtime through test_oci_lifecycle's ``rt`` (its own --root and cgroupsPath, both checked
empty at teardown); berth's guest manager through test_guests' ``guests`` (its teardown checks
the store, cgroups, mounts and loop devices); ``berth run`` through conftest's ``berth``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_guests import Guests, guests  # noqa: F401 - the fixture
from test_oci_lifecycle import Runtime, rt  # noqa: F401 - the fixture

from helpers import cgroup_roots

DEEP = "[" * 100_000 + "]" * 100_000


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{proc.stderr}"
    return lines[0]


def _nothing_left(r: Runtime) -> None:
    assert not r.root.exists() or not [n for n in os.listdir(r.root) if not n.startswith(".")]
    assert not [top / r.cgroup.strip("/") for top in cgroup_roots() if (top / r.cgroup.strip("/")).exists()]


def _userns_nomap(cfg: dict) -> None:
    cfg["linux"]["namespaces"].append({"type": "user"})


def _netns_path(path: str):
    def mutate(cfg: dict) -> None:
        for ns in cfg["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = path

    return mutate


@pytest.mark.parametrize(
    ("mutate", "want"),
    [
        (None, "config.json: invalid JSON at line 1 column"),
        (_userns_nomap, "linux.uidMappings: a user namespace needs uid and gid mappings"),
        (_netns_path("/etc/passwd"), "].path: '/etc/passwd' is not a namespace file"),
        (
            _netns_path("/proc/self/ns/uts"),
            "].path: '/proc/self/ns/uts' is a uts namespace, not a network one",
        ),
        (lambda c: c["root"].update(path="/nonexistent-h9e"), "root.path: '/nonexistent-h9e' does not exist"),
        (
            lambda c: c["linux"].update(resources={"cpu": {"cpus": "0-999999"}}),
            "linux.resources.cpu.cpus: CPU ",
        ),
        (lambda c: c["process"].update(env=["PATH=/bin", "FOO"]), "process.env[1]: 'FOO' has no '='"),
        (
            lambda c: c.update(annotations={"org.berth.rlimits": "bogus"}),
            "annotations.org.berth.rlimits: 'bogus'",
        ),
    ],
    ids=[
        "deep-json",
        "userns-nomap",
        "netns-file",
        "netns-uts",
        "root-missing",
        "cpus",
        "env",
        "rlimits-ann",
    ],
)
def test_runtime_create_refuses_with_one_line_and_leaves_nothing(
    rt: Runtime,  # noqa: F811
    unique: str,
    mutate,
    want,
) -> None:
    cfg = rt.config(["true"])
    if mutate is None:
        text = json.dumps(cfg)[:-1] + ', "x-ext": ' + DEEP + "}"
        rt.write(text)
    else:
        mutate(cfg)
        rt.write(cfg)
    for verb in ("create", "run"):
        proc = rt(verb, "--bundle", str(rt.bundle), unique, check=False, stdin=subprocess.DEVNULL)
        assert proc.returncode == 125, proc
        line = _one_line(proc)
        assert want in line, line
        assert "Traceback" not in proc.stderr
        _nothing_left(rt)


def test_runtime_update_and_exec_with_deep_json(rt: Runtime, unique: str, tmp_path: Path) -> None:  # noqa: F811
    rt.write(rt.config(["sleep", "100"]))
    rt.create(unique)
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    proc = rt("update", "--resources", str(deep), unique, check=False)
    assert proc.returncode == 125, proc
    assert _one_line(proc).startswith("berth-runtime: resources: ")
    assert "nested too deeply" in proc.stderr
    deep.write_text('{"args": ' + DEEP + "}")
    proc = rt("exec", "--process", str(deep), unique, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 125, proc
    assert _one_line(proc).startswith("berth-runtime: process: ")
    proc = rt("update", "--cpuset-cpus", "0-999999", unique, check=False)
    assert proc.returncode == 125, proc
    assert "linux.resources.cpu.cpus: CPU " in _one_line(proc)
    assert rt.state(unique)["status"] == "created"
    rt("delete", "--force", unique)


def test_runtime_delete_takes_what_a_killed_create_left(rt: Runtime, unique: str) -> None:  # noqa: F811
    # what a create killed after reserving its state dir leaves: the dir and its exec.fifo
    d = rt.root / unique
    d.mkdir(parents=True)
    os.mkfifo(d / "exec.fifo")
    gone = rt("state", unique, check=False)
    assert gone.returncode == 125
    assert "does not exist" in gone.stderr
    proc = rt("delete", unique, check=False)
    assert proc.returncode == 0, proc
    assert not d.exists()
    assert "removed the state directory an aborted create left" in rt.log.read_text()
    # the id is free again
    rt.write(rt.config(["true"]))
    rt.create(unique)
    assert rt.state(unique)["status"] == "created"
    rt("delete", "--force", unique)
    _nothing_left(rt)


def test_runtime_create_sweeps_a_killed_index_save(rt: Runtime, unique: str) -> None:  # noqa: F811
    from berth.runtime.resources import INDEX

    p = subprocess.Popen(["true"])
    p.wait()
    rt.root.mkdir(parents=True, exist_ok=True)
    stale = rt.root / f"{INDEX}.{p.pid}.tmp"  # a save SIGKILLed before its rename
    stale.write_text('{"seen":')
    rt.write(rt.config(["true"]))
    rt.create(unique)
    assert not stale.exists()
    rt("delete", "--force", unique)


# -- berth ------------------------------------------------------------------------------------------


def test_list_shows_the_others_and_the_broken_one(guests: Guests) -> None:  # noqa: F811
    good, bad = guests.name("ok"), guests.name("bad")
    guests("create", good, "--cmd", "sleep 1000")
    guests("create", bad, "--cmd", "sleep 1000")
    cfg = guests.store / "guests" / bad / "config.toml"
    for broken in ("", "cmd = [\n"):
        cfg.write_text(broken)
        proc = guests("list")
        rows = {ln.split()[0]: ln.split()[1] for ln in proc.stdout.splitlines()[1:]}
        assert rows[good] == "stopped"
        assert rows[bad] == "broken"
        line = _one_line(proc)
        assert line.startswith(f"berth list: guest '{bad}': {cfg}: ")
        listed = {r["name"]: r for r in json.loads(guests("list", "--json").stdout)}
        assert listed[good]["state"] == "stopped"
        assert listed[bad]["state"] == "broken"
        assert str(cfg) in listed[bad]["error"]
    info = guests("info", bad, check=False)
    assert info.returncode == 125
    assert str(cfg) in _one_line(info)
    guests("destroy", bad)  # a broken guest can still be removed
    assert guests.mine() == [good]


def test_create_seccomp_profile_nested_too_deeply(guests: Guests, tmp_path: Path) -> None:  # noqa: F811
    prof = tmp_path / "deep.json"
    prof.write_text(DEEP)
    proc = guests("create", guests.name("sc"), "--security-opt", f"seccomp={prof}", check=False)
    assert proc.returncode == 125, proc
    line = _one_line(proc)
    assert line.startswith("berth: security-opt: ")
    assert "nested too deeply" in line
    assert "internal error" not in line
    assert guests.mine() == []


def test_create_disk_below_the_floor(guests: Guests) -> None:  # noqa: F811
    proc = guests("create", guests.name("dk"), "--disk", "1K", "--cmd", "sleep 1", check=False)
    assert proc.returncode == 125, proc
    assert "disk: '1K' is below the smallest disk, 1M" in _one_line(proc)
    assert guests.mine() == []


def test_create_ulimit_lowered_warns_once(guests: Guests) -> None:  # noqa: F811
    n = guests.name("ul")
    proc = guests("create", n, "--ulimit", "nofile=-1:-1", "--cmd", "sleep 1")
    assert _one_line(proc).startswith("berth: warning: rlimit RLIMIT_NOFILE unlimited:unlimited lowered to ")
    guests("destroy", n)


def test_run_throttle_on_a_character_device(berth, busybox_rootfs: Path) -> None:
    res = berth("--rm", "--device-write-bps", "/dev/null:1M", "--rootfs", str(busybox_rootfs), "--", "true")
    assert res.returncode == 125, res
    assert res.error_line() == (
        "berth: device-write-bps: /dev/null is a character device: I/O throttles take a block device (a disk)"
    )
