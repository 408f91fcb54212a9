"""Live migration between two berth "hosts" on one machine: two stores, two state roots, two
cgroup parents, two network namespaces joined by a veth (the stream goes over it), all made here."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_checkpoint import (
    GUEST,
    Host,
    check_special_files,
    check_tmpfs_files,
    criu_or_skip,
    make_host,
    put_special_files,
    put_tmpfs_files,
    start_guest,
    wait,
)

PORT = 7711


@pytest.fixture
def hosts(tmp_path: Path, prefix: str, unique: str, berth_env: dict[str, str]):
    criu_or_skip()
    a = make_host(tmp_path, prefix, f"{unique}a", berth_env["BERTH_ROOT"])
    b = make_host(tmp_path, prefix, f"{unique}b", berth_env["BERTH_ROOT"])
    ns_a, ns_b = f"{unique}na", f"{unique}nb"
    made = []
    try:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
        va, vb = f"{unique}va", f"{unique}vb"
        subprocess.run(
            ["ip", "link", "add", va, "netns", ns_a, "type", "veth", "peer", vb, "netns", ns_b], check=True
        )
        for ns, dev, addr in ((ns_a, va, "10.213.0.1/24"), (ns_b, vb, "10.213.0.2/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        a.netns, b.netns = ns_a, ns_b  # type: ignore[attr-defined]
        yield a, b
    finally:
        a.cleanup()
        b.cleanup()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def in_ns(ns: str, h: Host, *args: str) -> list[str]:
    from test_checkpoint import BERTH

    return ["nsenter", f"--net=/run/netns/{ns}", BERTH, *args]


# What B's receiver allows by default: the guests here run in the host's user namespace (as
# start_guest makes them), which a receiver refuses without it (berth.guests.hostpower).
HOST_USERNS = ("--allow-host-userns",)


def receiver(b: Host, fault: str = "", allow: tuple[str, ...] = HOST_USERNS) -> subprocess.Popen:
    env = {**b.env, "BERTH_FAULT": fault}
    p = subprocess.Popen(
        in_ns(b.netns, b, "receive", "--listen", f"10.213.0.2:{PORT}", *allow),  # type: ignore[attr-defined]
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert "listening" in line, (line, p.stderr.read() if p.poll() is not None else "")
    return p


def migrate(
    a: Host, name: str, *extra: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        in_ns(a.netns, a, "migrate", name, "--to", f"10.213.0.2:{PORT}", "--timeout", "30", *extra),  # type: ignore[attr-defined]
        env={**a.env, **(env_extra or {})}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def b_has_nothing(b: Host, name: str) -> None:
    guests = b.store / "guests"
    left = [n for n in (guests.iterdir() if guests.is_dir() else []) if name in n.name]
    assert not left, left
    assert not b.record(name).get("pid")
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"{b.parent}/{name}"))


def test_live_migration_keeps_processes_and_connection(hosts: tuple[Host, Host], unique: str) -> None:
    a, b = hosts
    name = f"{unique}-m"
    start_guest(a, name)
    files = put_tmpfs_files(a, name)
    r = receiver(b)
    out = migrate(a, name)
    rc = r.wait(60)
    err = r.stderr.read() if r.stderr else ""
    assert out.returncode == 0 and rc == 0, f"{out.stderr}\nreceiver: {err}"
    assert "downtime" in out.stdout
    check_tmpfs_files(b, name, files)
    rec = b.record(name)
    assert rec["status"] == "running" and rec["pid"]
    n = len(b.replies(name))
    c = b.count(name)
    wait(lambda: b.count(name) > c + 3, what="the counter to continue on B")
    wait(lambda: len(b.replies(name)) > n + 3, what="the connection to answer on B")
    # A has nothing of it left.
    assert not (a.store / "guests" / name).exists()
    assert not a.record(name)
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"{a.parent}/{name}"))
    b("destroy", "--force", name)


def test_upper_keeps_caps_setid_owners_and_xattrs(hosts: tuple[Host, Host], unique: str) -> None:
    """The guest's upper layer on B: a file with capabilities, set-id files, files of a non-root
    owner with a user.* attribute, as they were on A (owner, then mode, then attributes: a chown
    after the attributes cleared security.capability and the set-id bits); seen in B's upper
    layer and through the restored guest's root."""
    a, b = hosts
    name = f"{unique}-cap"
    a.create_plain(name, GUEST)
    put_special_files(a.upper(name))
    a("start", name)
    wait(lambda: len(a.replies(name)) >= 3, what="the guest's client to get replies")
    r = receiver(b)
    out = migrate(a, name)
    rc = r.wait(60)
    err = r.stderr.read() if r.stderr else ""
    assert out.returncode == 0 and rc == 0, f"{out.stderr}\nreceiver: {err}"
    check_special_files(b.upper(name))
    check_special_files(Path(f"/proc/{b.record(name)['pid']}/root"))
    b("destroy", "--force", name)


@pytest.mark.parametrize("point", ["receive:precopy", "receive:transfer", "receive:restore"])
def test_receiver_killed_guest_stays_on_source(hosts: tuple[Host, Host], unique: str, point: str) -> None:
    a, b = hosts
    name = f"{unique}-f"
    start_guest(a, name)
    r = receiver(b, fault=point)
    out = migrate(a, name)
    r.wait(60)
    assert out.returncode != 0, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    rec = a.record(name)
    assert rec["status"] == "running" and rec["pid"], rec
    c, n = a.count(name), len(a.replies(name))
    wait(lambda: a.count(name) > c + 3, what="the guest to run on A")
    wait(lambda: len(a.replies(name)) > n + 2, what="the connection to answer on A")
    time.sleep(0.2)
    b_has_nothing(b, name)
    a("destroy", "--force", name)


def images_left(name: str) -> list[Path]:
    return list(Path("/dev/shm").glob(f".migrate-{name}-*"))


@pytest.mark.parametrize("point", ["migrate:spawned", "migrate:dumped", "migrate:sent"])
def test_sender_killed_before_commit_guest_runs_on_source(
    hosts: tuple[Host, Host], unique: str, point: str
) -> None:
    """berth migrate killed after the dump (the guest's processes gone, its images whole here):
    the receiver drops what it got once the stream ends without the commit, even a guest it had
    restored; the next command on the source restores the guest there from the images, its
    processes and connection as they were."""
    a, b = hosts
    name = f"{unique}-k"
    start_guest(a, name)
    r = receiver(b)
    out = migrate(a, name, env_extra={"BERTH_FAULT": point})
    assert out.returncode == -9, out
    r.wait(60)
    assert r.returncode != 0, "the receiver kept a guest the source never committed"
    if point == "migrate:sent":  # it had restored the guest, and waited for the commit
        assert "committed" in (r.stderr.read() if r.stderr else "")
    b_has_nothing(b, name)
    assert (a.store / "guests" / name / ".migrate.pending").exists()
    if point == "migrate:spawned":  # killed while its CRIU dumps: that CRIU goes on to its end
        import json

        criu = json.loads((a.store / "guests" / name / ".migrate.pending").read_text())["criu_pid"]
        wait(lambda: not Path(f"/proc/{criu}").exists(), timeout=60, what="the migrate's CRIU to end")
        a("list")  # the next command settles it: resumed by CRIU, or restored from the whole dump
    elif point == "migrate:dumped":
        # Killed holding the guest's lock, after CRIU ended the guest: guestd's exit worker for
        # its init, which waited for that lock, settles it (no command needed).
        wait(lambda: a.record(name).get("restored_from"), timeout=30, what="guestd to restore it on A")
    else:
        a("list")  # the next command settles it (unless guestd's exit worker came late and does)
        wait(lambda: a.record(name).get("restored_from"), timeout=30, what="the guest restored on A")
    rec = a.record(name)
    assert rec["status"] == "running" and rec["pid"], rec
    c, n = a.count(name), len(a.replies(name))
    wait(lambda: a.count(name) > c + 3, what="the guest to run on A")
    wait(lambda: len(a.replies(name)) > n + 2, what="its connection to answer on A")
    assert not (a.store / "guests" / name / ".migrate.pending").exists()
    assert not images_left(name)
    b_has_nothing(b, name)
    a("destroy", "--force", name)


def test_destroy_drops_what_a_migrate_cut_short_kept(hosts: tuple[Host, Host], unique: str) -> None:
    """A guest whose migrate was killed after its dump, destroyed before any other command:
    its images go with it (nothing of it left in /dev/shm), and it is not restored first."""
    a, b = hosts
    name = f"{unique}-d"
    a.create_plain(name, "sleep 1000")
    a("start", name)
    # No guestd on A from here: its exit worker would settle (restore) the guest on its own.
    os.kill(int((a.run / ".guests" / "guestd.pid").read_text()), signal.SIGKILL)
    r = receiver(b)
    out = migrate(a, name, env_extra={"BERTH_FAULT": "migrate:sent"})
    assert out.returncode == -9, out
    r.wait(60)
    assert images_left(name)
    a("destroy", "--force", name)
    assert not images_left(name)
    assert not (a.store / "guests" / name).exists()
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"{a.parent}/{name}"))
    b_has_nothing(b, name)


def test_sender_killed_after_commit_guest_runs_on_destination_only(
    hosts: tuple[Host, Host], unique: str
) -> None:
    """berth migrate killed once it told the receiver to keep the guest, before it removed its
    own copy: the guest runs on B; A's next command leaves its copy stopped, not restored."""
    a, b = hosts
    name = f"{unique}-c"
    start_guest(a, name)
    r = receiver(b)
    out = migrate(a, name, env_extra={"BERTH_FAULT": "migrate:committed"})
    assert out.returncode == -9, out
    rc = r.wait(60)
    assert rc == 0, r.stderr.read() if r.stderr else ""
    rec_b = b.record(name)
    assert rec_b["status"] == "running" and rec_b["pid"], rec_b
    c = b.count(name)
    wait(lambda: b.count(name) > c + 3, what="the guest to run on B")
    listing = a("list")
    assert name in listing.stdout
    rec = a.record(name)
    assert rec["status"] == "stopped" and not rec.get("pid") and rec.get("migrated_to"), rec
    assert not images_left(name)
    assert not (a.store / "guests" / name / ".migrate.pending").exists()
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"{a.parent}/{name}"))
    again = a("start", name, check=False)  # the stale copy would be a second guest with its address
    assert again.returncode != 0 and "was migrated to" in again.stderr, again
    assert not a.record(name).get("pid")
    a("destroy", "--force", name)
    b("destroy", "--force", name)


def guestd_up(h: Host) -> None:
    """``h``'s guestd started and listening (as a berth command that needs it starts it)."""
    code = (
        "import os; from berth.guests import client; from berth.guests.store import Store; "
        "client.spawn(Store(os.environ['BERTH_ROOT'], os.environ['BERTH_RUN'], os.environ['BERTH_CGROUP_PARENT']))"
    )
    subprocess.run([sys.executable, "-c", code], env=h.env, check=True, timeout=30)
    wait(lambda: (h.run / ".guests" / "guestd.sock").exists(), what="guestd to listen")


@pytest.mark.parametrize("fault", ["receive:restored", "receive:restored+parent"])
def test_receiver_killed_before_the_commit_drops_the_guest(
    hosts: tuple[Host, Host], unique: str, fault: str
) -> None:
    """The receiver's worker killed once the guest runs on B, before the sender's commit (and
    berth receive with it: then guestd on B, which follows the worker, drops the guest there,
    with no command about it), and the sender resumes it on A; it runs on A only."""
    a, b = hosts
    name = f"{unique}-r"
    start_guest(a, name)
    guestd_up(b)  # (as on a host where guests were started or received before)
    r = receiver(b, fault=fault)
    out = migrate(a, name)
    r.wait(60)
    assert out.returncode != 0, out
    rec = a.record(name)
    assert rec["status"] == "running" and rec["pid"], rec
    c = a.count(name)
    wait(lambda: a.count(name) > c + 3, what="the guest to run on A")
    # Dropped on B without a command about it: by berth receive, or, killed with it, by guestd
    # (it follows the receive's worker from the restore on).
    wait(lambda: not (b.store / "guests" / name).exists(), what="the guest to be dropped on B")
    b_has_nothing(b, name)
    a("destroy", "--force", name)


def test_destroy_on_the_destination_is_refused_while_the_receive_waits_for_the_commit(
    hosts: tuple[Host, Host], unique: str
) -> None:
    """The receiver's worker held once the guest runs on B, before the sender's commit: berth
    destroy of it on B is refused (one line; the receive would keep a guest that is gone), and
    the migration then ends as usual."""
    import json

    a, b = hosts
    name = f"{unique}-w"
    start_guest(a, name)
    r = receiver(b, fault="receive:restored+stop")
    mark = b.store / "guests" / name / ".receive.pending"
    sender = subprocess.Popen(
        in_ns(a.netns, a, "migrate", name, "--to", f"10.213.0.2:{PORT}", "--timeout", "30"),  # type: ignore[attr-defined]
        env=a.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    held = 0
    try:

        def stopped() -> bool:
            nonlocal held
            try:
                held = json.loads(mark.read_text())["by"]
                return Path(f"/proc/{held}/stat").read_text().rpartition(")")[2].split()[0] == "T"
            except (OSError, ValueError, KeyError):
                return False

        wait(stopped, what="the receiver's worker to stop before the commit")
        refused = b("destroy", "--force", name, check=False)
        assert refused.returncode != 0, refused
        assert len(refused.stderr.strip().splitlines()) == 1 and "being received" in refused.stderr, refused
        assert (b.store / "guests" / name).is_dir()
        os.kill(held, signal.SIGCONT)
        out, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err
        assert r.wait(60) == 0
    finally:
        if held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(held, signal.SIGCONT)  # (a failure above: never left stopped)
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    rec = b.record(name)
    assert rec["status"] == "running" and rec["pid"], rec
    c = b.count(name)
    wait(lambda: b.count(name) > c + 3, what="the guest to run on B")
    assert not (a.store / "guests" / name).exists()
    b("destroy", "--force", name)


def test_receiver_killed_after_it_kept_the_guest(hosts: tuple[Host, Host], unique: str) -> None:
    """The receiver's worker killed once it kept the guest, before it said so: the guest runs
    on B; A cannot tell whether B kept it, so its copy stays stopped with the images, and
    berth migrate says where they are (one line)."""
    import shutil

    a, b = hosts
    name = f"{unique}-u"
    start_guest(a, name)
    r = receiver(b, fault="receive:committed")
    try:
        out = migrate(a, name)
        r.wait(60)
        assert out.returncode != 0, out
        assert len(out.stderr.strip().splitlines()) == 1 and "did not confirm" in out.stderr, out.stderr
        rec_b = b.record(name)
        assert rec_b["status"] == "running" and rec_b["pid"], rec_b
        c = b.count(name)
        wait(lambda: b.count(name) > c + 3, what="the guest to run on B")
        rec = a.record(name)
        assert rec["status"] == "stopped" and not rec.get("pid") and rec.get("migrated_to"), rec
        left = images_left(name)
        assert len(left) == 1 and str(left[0]) in out.stderr, (left, out.stderr)
        assert not (a.store / "guests" / name / ".migrate.pending").exists()
        # What the message says to do, had B not kept it: the guest back on A, as it was.
        b("destroy", "--force", name)
        a("restore", name, "--image", str(left[0]))
        c = a.count(name)
        wait(lambda: a.count(name) > c + 3, what="the guest restored on A from the images kept")
    finally:
        for d in images_left(name):
            shutil.rmtree(d, ignore_errors=True)
    a("destroy", "--force", name)


# A bridged guest: an echo server on its bridge address and a client inside it connected to that
# address (not loopback), so the connection needs the address in place when it is restored.
BRIDGED = (
    "i=0; (while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done) & "
    "nc -ll -p 7300 -e cat & sleep 0.3; ip=$(ip -4 -o addr show eth0 | sed 's/.*inet \\([0-9.]*\\).*/\\1/'); "
    "(while true; do echo ping $(cat /count); sleep 0.2; done) | nc $ip 7300 > /replies & wait"
)


def answers_on_b(a: Host, b: Host, name: str, ip: str, bridge: str) -> None:
    """After a migration: the guest's own connection to its address answers on B, B's lease
    holds that address, a client in B's namespace reaches it there, and A has nothing of it."""
    import json

    n = len(b.replies(name))
    wait(lambda: len(b.replies(name)) > n + 3, what="the guest's own connection to answer on B")
    with open(b.store / "net" / f"{bridge}.json") as f:
        assert json.load(f)["active"][name]["ip"] == ip
    probe = (
        f"import socket; s = socket.create_connection(({ip!r}, 7300), timeout=5); "
        "s.sendall(b'hi\\n'); print(s.recv(16).decode().strip())"
    )
    p = subprocess.run(["ip", "netns", "exec", b.netns, sys.executable, "-c", probe],  # type: ignore[attr-defined]
                       capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert p.stdout.strip() == "hi", p
    assert not (a.store / "guests" / name).exists()


def test_bridged_guest_keeps_its_address(hosts: tuple[Host, Host], unique: str) -> None:
    """Each "host" has its own bridge (same name and subnet) in its own network namespace; the
    guest answers on the same address on B, and its own connection to that address survives."""
    import json

    a, b = hosts
    for h in (a, b):
        h.env.update(
            BERTH_NET_PREFIX=unique[:6],
            BERTH_BRIDGE=f"{unique[:8]}br",
            BERTH_NFT_TABLE=f"{unique}nft",
            BERTH_SUBNET="10.213.77.0/24",
        )
    name = f"{unique}-br"

    def on(h: Host, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            in_ns(ns, h, *args), env=h.env, capture_output=True, text=True, timeout=60, check=False
        )
        assert not check or p.returncode == 0, f"{args} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    ns_a, ns_b = a.netns, b.netns  # type: ignore[attr-defined]
    try:
        on(a, ns_a, "create", name, "--net", "bridge", "--userns", "host", "--no-lxcfs", "--no-init",
           "--", "sh", "-c", BRIDGED)  # fmt: skip
        on(a, ns_a, "start", name)
        with open(a.store / "net" / f"{unique[:8]}br.json") as f:
            ip = json.load(f)["active"][name]["ip"]
        wait(lambda: len(a.replies(name)) >= 3, what="the guest's client to get replies on A")
        r = receiver(b)
        out = migrate(a, name)
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert out.returncode == 0 and rc == 0, f"{out.stderr}\nreceiver: {err}"
        answers_on_b(a, b, name, ip, f"{unique[:8]}br")
    finally:
        on(b, ns_b, "destroy", "--force", name, check=False)
        on(a, ns_a, "destroy", "--force", name, check=False)


def test_bridged_default_guest_migrates(hosts: tuple[Host, Host], unique: str) -> None:
    """A guest as ``berth create`` makes it by default (bridged, its own user namespace, lxcfs,
    tini) migrates: same address on B, its own connection survives, its id range is reserved in
    B's pool (refused there while another guest holds it), A keeps nothing."""
    import json

    import test_guests

    from berth.runtime import userns

    a, b = hosts
    point = test_guests.userns_ready(a.env)
    test_guests.userns_ready(b.env)
    for h in (a, b):
        h.env.update(
            BERTH_NET_PREFIX=unique[:6],
            BERTH_BRIDGE=f"{unique[:8]}br",
            BERTH_NFT_TABLE=f"{unique}nft",
            BERTH_SUBNET="10.213.78.0/24",
        )
    name = f"{unique}-du"
    ns_a, ns_b = a.netns, b.netns  # type: ignore[attr-defined]

    def on(h: Host, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            in_ns(ns, h, *args), env=h.env, capture_output=True, text=True, timeout=60, check=False
        )
        assert not check or p.returncode == 0, f"{args} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    try:
        on(a, ns_a, "create", name, "--", "sh", "-c", BRIDGED)
        on(a, ns_a, "start", name)
        rng = userns.allocations(str(a.store))[name]
        with open(a.store / "net" / f"{unique[:8]}br.json") as f:
            ip = json.load(f)["active"][name]["ip"]
        wait(lambda: len(a.replies(name)) >= 3, what="the guest's client to get replies on A")
        # B's pool holds the guest's range under another name: refused up front, nothing kept.
        userns.allocate(str(b.store), "squatter", rng, userns.HostIds.read())
        r = receiver(b, allow=())  # a default guest: no --allow flag needed
        out = migrate(a, name)
        r.wait(60)
        assert out.returncode != 0 and "overlaps" in out.stderr, out
        assert a.record(name)["status"] == "running"
        b_has_nothing(b, name)
        assert name not in userns.allocations(str(b.store))
        userns.release(str(b.store), "squatter")
        # The receiver killed after it plugged the guest's veth in ahead: B keeps none of it.
        r = receiver(b, fault="receive:transfer", allow=())
        out = migrate(a, name)
        r.wait(60)
        assert out.returncode != 0 and a.record(name)["status"] == "running", out
        b_has_nothing(b, name)
        links = subprocess.run(["ip", "-n", ns_b, "-o", "link"], capture_output=True, text=True).stdout
        assert f"{unique[:6]}v" not in links, links
        lease_file = b.store / "net" / f"{unique[:8]}br.json"
        leases = json.loads(lease_file.read_text()) if lease_file.exists() else {}
        assert name not in leases.get("active", {})
        assert name not in leases.get("leases", {}), leases  # its persistent lease too (R11's F4)
        assert name not in userns.allocations(str(b.store))
        r = receiver(b, allow=())
        out = migrate(a, name)
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert out.returncode == 0 and rc == 0, f"{out.stderr}\nreceiver: {err}"
        assert userns.allocations(str(b.store))[name] == rng
        assert name not in userns.allocations(str(a.store))
        # Its dir on B as create makes it (test_store_perms): its root's group may search it.
        gdir = b.store / "guests" / name
        assert (gdir.stat().st_mode & 0o7777, gdir.stat().st_gid) == (0o710, rng[0])
        assert {(gdir / f).stat().st_mode & 0o777 for f in ("config.toml", "spec.json")} == {0o600}
        answers_on_b(a, b, name, ip, f"{unique[:8]}br")
    finally:
        on(b, ns_b, "destroy", "--force", name, check=False)
        on(a, ns_a, "destroy", "--force", name, check=False)
        userns.release(str(b.store), "squatter")
        test_guests.lxcfs_stop(point)
    assert name not in userns.allocations(str(b.store))


def test_ip_mode_guest_migrates_with_its_address(hosts: tuple[Host, Host], unique: str) -> None:
    """An ip: mode guest (the host's network stack, VServer-style) migrates: its address leaves
    A and is on B, where its server answers on it; its counter continues."""
    a, b = hosts
    addr = "10.213.79.5"
    for h in (a, b):
        h.env.update(
            BERTH_NET_PREFIX=unique[:6], BERTH_BRIDGE=f"{unique[:8]}br", BERTH_NFT_TABLE=f"{unique}nft"
        )
    name = f"{unique}-ip"
    ns_a, ns_b = a.netns, b.netns  # type: ignore[attr-defined]
    script = (
        "i=0; (while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done) & "
        f"mkdir -p /www && echo served > /www/index.html && httpd -f -p {addr}:7300 -h /www & wait"
    )

    def has(ns: str) -> bool:
        out = subprocess.run(
            ["ip", "-n", ns, "-o", "addr"], capture_output=True, text=True, check=True
        ).stdout
        return f" {addr}/" in out

    def get(ns: str) -> str:
        probe = (
            "import urllib.request; "
            f"print(urllib.request.urlopen('http://{addr}:7300/index.html', timeout=5).read().decode().strip())"
        )
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe],
                           capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        return p.stdout.strip() or p.stderr.strip()[-200:]

    try:
        # unscoped: CRIU cannot checkpoint a guest under berth's Landlock scope (berth.runtime.scope)
        p = subprocess.run(in_ns(ns_a, a, "create", name, "--net", f"ip:{addr}", "--userns", "host",
                                 "--security-opt", "landlock=unconfined", "--no-lxcfs", "--", "sh", "-c", script),
                           env=a.env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert p.returncode == 0, p
        p = subprocess.run(
            in_ns(ns_a, a, "start", name), env=a.env, capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, p
        wait(lambda: get(ns_a) == "served", what="the guest's server on A")
        assert has(ns_a) and not has(ns_b)
        r = receiver(b, allow=(*HOST_USERNS, "--allow-host-net", "--allow-security-opt"))
        out = migrate(a, name)
        rc = r.wait(60)
        err = r.stderr.read() if r.stderr else ""
        assert out.returncode == 0 and rc == 0, f"{out.stderr}\nreceiver: {err}"
        assert has(ns_b) and not has(ns_a)
        assert get(ns_b) == "served"
        c = b.count(name)
        wait(lambda: b.count(name) > c + 3, what="the counter to continue on B")
        assert not (a.store / "guests" / name).exists()
        # CRIU's lock of the guest's connections on A's network (an nftables table that the
        # restore on B cannot unlock) went with the guest.
        tables = subprocess.run(["ip", "netns", "exec", ns_a, "nft", "list", "tables"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "CRIU-" not in tables, tables
    finally:
        for h, ns in ((b, ns_b), (a, ns_a)):
            subprocess.run(
                in_ns(ns, h, "destroy", "--force", name), env=h.env, capture_output=True, timeout=60
            )
    assert not has(ns_a) and not has(ns_b)
