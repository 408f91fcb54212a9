"""The receiving host's policy (berth.guests.hostpower): ``berth receive`` refuses a migrated
guest whose config gives it power over the host (privileged, the host's user namespace or
network, extra capabilities, a looser seccomp) before it makes anything, with one line naming
the config key and the flag that allows it, which the sender gets too; with that flag the same
config is accepted.  A real ``berth migrate`` of a guest in the host's user namespace is refused
so, and the guest runs on at the source."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_migrate
from test_checkpoint import Host, criu_or_skip, make_host, start_guest, wait
from test_migrate import b_has_nothing, migrate, receiver
from test_migrate_hostile import SPEC, TOKEN, Peer, Receiver, nothing_left

hosts = test_migrate.hosts  # the two-host fixture

BASE = 'template = "busybox"\ncmd = ["sh"]\nnet = "none"\nlxcfs = false\ninit = false\n'
AUTO = BASE + 'userns = "auto"\n'
# (config, the key refused, its flag)
HOSTILE = [
    (AUTO + "privileged = true\n", "privileged", "--allow-privileged"),
    (BASE + 'userns = "host"\n', "userns", "--allow-host-userns"),
    (BASE, "userns", "--allow-host-userns"),  # no userns: the host's
    (AUTO.replace('net = "none"', 'net = "host"'), "net", "--allow-host-net"),
    (AUTO.replace('net = "none"', 'net = "ip:10.213.91.5"'), "net", "--allow-host-net"),
    (AUTO + 'cap_add = ["SYS_ADMIN"]\n', "cap_add", "--allow-cap-add"),
    (AUTO + 'security_opt = ["seccomp=unconfined"]\n', "security_opt", "--allow-security-opt"),
]


@pytest.fixture
def host(tmp_path: Path, prefix: str, unique: str, berth_env: dict[str, str]):
    h = make_host(tmp_path, prefix, f"{unique}r", berth_env["BERTH_ROOT"])
    yield h
    h.cleanup()


def _hello(r: Receiver, name: str, cfg: str) -> dict:
    p = Peer(r.port)
    try:
        p.hello(name=name, config=cfg, spec=SPEC, live=False, net=None)
        return p.reply()
    finally:
        p.close()


def test_host_power_refused_unless_allowed(host: Host, tmp_path: Path, unique: str) -> None:
    criu_or_skip()  # the receiver checks for a working CRIU before it accepts
    token = tmp_path / "token"
    token.write_bytes(TOKEN)
    strict = Receiver(host, token, allow=())
    try:
        for i, (cfg, key, flag) in enumerate(HOSTILE):
            v = _hello(strict, f"{unique}-s{i}", cfg)
            assert v["ok"] is False, (key, v)
            assert v["error"].startswith(f"{key}: ") and flag in v["error"], v
            line = strict.line()
            assert f"{key}: " in line and flag in line and "\n" not in line, line
            nothing_left(host, unique)
        assert strict.alive(), strict.err
    finally:
        strict.stop()
    # With the flags: accepted, as before the policy (in the host's user namespace here: an id
    # range is reserved only for a sender's spec that maps one).
    loose = Receiver(host, token, allow=tuple(sorted({f for _c, _k, f in HOSTILE})))
    try:
        for i, (cfg, key, _flag) in enumerate(HOSTILE):
            v = _hello(loose, f"{unique}-l{i}", cfg.replace('userns = "auto"', 'userns = "host"'))
            assert v == {"ok": True}, (key, v)
            assert "broke" in loose.line()  # the peer left: what the receiver began is undone
            nothing_left(host, unique)
    finally:
        loose.stop()
    nothing_left(host, unique)


def test_sender_told_and_guest_runs_on(hosts: tuple[Host, Host], unique: str) -> None:
    """A real sender: its guest (the host's user namespace) refused by a receiver without
    --allow-host-userns; the sender prints that one line and its guest runs on; B keeps nothing."""
    a, b = hosts
    name = f"{unique}-pol"
    start_guest(a, name)
    r = receiver(b, allow=())
    out = migrate(a, name)
    rc = r.wait(60)
    err = r.stderr.read() if r.stderr else ""
    assert out.returncode != 0 and rc != 0, (out, err)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "userns: " in lines[0] and "--allow-host-userns" in lines[0], out.stderr
    assert "--allow-host-userns" in err, err
    rec = a.record(name)
    assert rec["status"] == "running" and rec["pid"], rec
    c = a.count(name)
    wait(lambda: a.count(name) > c + 3, what="the guest to run on A")
    b_has_nothing(b, name)
    assert not list(Path("/dev/shm").glob(f".incoming-{name}*"))
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(b.store) not in mounts, "a mount of B's store was left"
    a("destroy", "--force", name)
