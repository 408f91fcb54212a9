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
from test_checkpoint import GUEST, Host, criu_or_skip, make_host, start_guest, wait
from test_migrate import b_has_nothing, migrate, receiver
from test_migrate_hostile import SPEC, TOKEN, Peer, Receiver, nothing_left

from berth.errors import EXIT_REFUSED

hosts = test_migrate.hosts  # the two-host fixture

BASE = 'template = "busybox"\ncmd = ["sh"]\nnet = "none"\nlxcfs = false\ninit = false\n'
AUTO = BASE + 'userns = "auto"\n'
BRIDGED = AUTO.replace('net = "none"', 'net = "bridge"')
# (config, the key refused, its flag)
HOSTILE = [
    (AUTO + "privileged = true\n", "privileged", "--allow-privileged"),
    (BASE + 'userns = "host"\n', "userns", "--allow-host-userns"),
    (BASE, "userns", "--allow-host-userns"),  # no userns: the host's
    (AUTO.replace('net = "none"', 'net = "host"'), "net", "--allow-host-net"),
    (AUTO.replace('net = "none"', 'net = "ip:10.213.91.5"'), "net", "--allow-host-net"),
    (AUTO + 'cap_add = ["SYS_ADMIN"]\n', "cap_add", "--allow-cap-add"),
    (AUTO + 'security_opt = ["seccomp=unconfined"]\n', "security_opt", "--allow-security-opt"),
    # R11's F3: this host's ssh port; F2: a bridge of the host's own (a LAN), a subnet (a route)
    (BRIDGED + 'publish = ["22:22/tcp"]\n', "publish", "--allow-publish"),
    (BRIDGED + 'bridge = "h7ilan0"\nsubnet = "10.242.9.0/24"\n', "bridge", "--allow-bridge"),
    (BRIDGED + 'subnet = "10.242.8.0/24"\n', "subnet", "--allow-bridge"),
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
    assert out.returncode != 0 and rc == EXIT_REFUSED, (out, err)  # not 125: a decision, not a failure
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


# A sender that holds the token: its HELLO claims a default guest (the decoy's config and spec:
# its own user namespace, no network), its CRIU images are those of a privileged guest in the
# host's user namespace, and its berth.json claims the decoy's id range (so that berth.json's
# check passes).  What CRIU makes of those images is caught before the processes run.
EVIL_SENDER = r"""
import json, os, sys
from berth.cli._args import store as mkstore
from berth.guests import migrate as M, transfer

name, decoy, to = sys.argv[1:4]
st = mkstore()
cfg = open(st.config(decoy)).read()
spec = open(os.path.join(st.dir(decoy), "spec.json")).read()
start, size = M.incoming_ids(json.loads(spec))
orig = transfer.Stream.send_json
done = []


def send_json(self, obj, *a, **k):
    if not done and isinstance(obj, dict) and "config" in obj:
        done.append(1)
        obj = dict(obj, config=cfg, spec=spec)
    return orig(self, obj, *a, **k)


transfer.Stream.send_json = send_json
odump = M._dump


def _dump(store, n, sp, c, images, criu, **kw):
    meta = odump(store, n, sp, c, images, criu, **kw)
    meta["userns"] = {"uid_map": f"0 {start} {size}\n", "gid_map": f"0 {start} {size}\n",
                      "idmap_lower": False, "userxattr": False}
    with open(os.path.join(images, "berth.json"), "w") as f:
        json.dump(meta, f)
    return meta


M._dump = _dump
try:
    M.migrate(st, name, to, token=None, timeout=30)
except Exception as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"""


def test_hostile_images_caught_before_they_run(hosts: tuple[Host, Host], unique: str) -> None:
    """F1: the images of a privileged host-userns guest under a default guest's HELLO, to a
    receiver with no --allow flag: the restored processes are checked (stopped) against the
    spec built there and killed (not in the guest's user namespace, or not its id map); the
    sender is told in one line; B keeps nothing."""
    import subprocess
    import sys

    import test_guests

    from berth.runtime import userns

    a, b = hosts
    point = test_guests.userns_ready(a.env)
    test_guests.userns_ready(b.env)
    evil, decoy = f"{unique}-ev", f"{unique}-dc"
    try:
        a("create", decoy, "--net", "none", "--no-lxcfs", "--", "sleep", "100000")
        a("create", evil, "--net", "none", "--userns", "host", "--privileged", "--no-lxcfs", "--no-init",
          "--", "sh", "-c", "while :; do sleep 1; done")  # fmt: skip
        a("start", evil)
        r = receiver(b, allow=())
        p = subprocess.run(
            ["nsenter", f"--net=/run/netns/{a.netns}", sys.executable, "-c", EVIL_SENDER,  # type: ignore[attr-defined]
             evil, decoy, f"10.213.0.2:{test_migrate.PORT}"],
            env=a.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert p.returncode != 0 and rc != 0, (p, err)
        assert "not what its spec here gives it" in p.stderr and "restored task" in p.stderr, p.stderr
        assert "user namespace" in p.stderr or "uid_map" in p.stderr, p.stderr
        assert "not what its spec here gives it" in err, err
        # (A cannot resume it: its own images' berth.json names the decoy's user namespace now.)
        b_has_nothing(b, evil)
        assert evil not in userns.allocations(str(b.store))
        assert not list(Path("/dev/shm").glob(f".incoming-{evil}*"))
    finally:
        a("destroy", "--force", evil, check=False)
        a("destroy", "--force", decoy, check=False)
        test_guests.lxcfs_stop(point)


def test_default_guest_migrates_without_flags(hosts: tuple[Host, Host], unique: str) -> None:
    """R11's F8: a guest as `berth create` makes it (its own user namespace, tini; no network
    and no lxcfs here: the bridged one with lxcfs is test_migrate's
    test_bridged_default_guest_migrates) migrates to a receiver given no --allow flag, and runs
    on there."""
    import test_guests

    a, b = hosts
    point = test_guests.userns_ready(a.env)
    test_guests.userns_ready(b.env)
    name = f"{unique}-dn"
    try:
        a("create", name, "--net", "none", "--no-lxcfs", "--", "sh", "-c", GUEST)  # else berth's defaults
        a("start", name)
        wait(lambda: len(a.replies(name)) >= 3, what="the guest's client to get replies")
        r = receiver(b, allow=())
        out = migrate(a, name)
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert out.returncode == 0 and rc == 0, f"{out.stderr}\nreceiver: {err}"
        rec = b.record(name)
        assert rec["status"] == "running" and rec["pid"], rec
        c = b.count(name)
        wait(lambda: b.count(name) > c + 3, what="the counter to continue on B")
        assert not (a.store / "guests" / name).exists()
    finally:
        b("destroy", "--force", name, check=False)
        a("destroy", "--force", name, check=False)
        test_guests.lxcfs_stop(point)


# A sender whose images name, as their CRIU run id (a second copy of the inventory's field 13:
# protobuf and CRIU take the last), a connection lock table the receiver's host already has.
LOCK_SENDER = r"""
import os, sys
from berth.cli._args import store as mkstore
from berth.guests import migrate as M

name, to, run_id = sys.argv[1:4]
odump = M._dump


def _dump(store, n, sp, c, images, criu, **kw):
    meta = odump(store, n, sp, c, images, criu, **kw)
    path = os.path.join(images, "inventory.img")
    data = open(path, "rb").read()
    size = int.from_bytes(data[4:8], "little")
    extra = b"\x6a" + bytes([len(run_id)]) + run_id.encode()
    data = data[:4] + (size + len(extra)).to_bytes(4, "little") + data[8 : 8 + size] + extra + data[8 + size :]
    open(path, "wb").write(data)
    return meta


M._dump = _dump
try:
    M.migrate(mkstore(), name, to, token=None, timeout=30)
except Exception as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"""


def test_receiver_drops_only_a_lock_table_it_made(hosts: tuple[Host, Host], unique: str) -> None:
    """R11's F5: the images name the run id of a table the receiving host has (inet CRIU-<id>,
    someone else's lock): the receive succeeds and that table is still there."""
    import subprocess
    import sys

    a, b = hosts
    name, run_id = f"{unique}-lk", f"{unique}lock"
    table = f"CRIU-{run_id}"
    nft_b = ["ip", "netns", "exec", b.netns, "nft"]  # type: ignore[attr-defined]
    subprocess.run([*nft_b, "add", "table", "inet", table], check=True)
    try:
        start_guest(a, name)
        r = receiver(b)
        p = subprocess.run(
            ["nsenter", f"--net=/run/netns/{a.netns}", sys.executable, "-c", LOCK_SENDER,  # type: ignore[attr-defined]
             name, f"10.213.0.2:{test_migrate.PORT}", run_id],
            env=a.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert p.returncode == 0 and rc == 0, (p, err)
        assert b.record(name)["status"] == "running"
        tables = subprocess.run([*nft_b, "list", "tables"], capture_output=True, text=True, check=True).stdout
        assert f"inet {table}" in tables, tables
    finally:
        subprocess.run([*nft_b, "delete", "table", "inet", table], check=False)
        b("destroy", "--force", name, check=False)
        a("destroy", "--force", name, check=False)
