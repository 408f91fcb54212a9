"""Guests on two bridges that share the name prefix and the nft table (the default setup: one
``BERTH_NET_PREFIX`` and ``BERTH_NFT_TABLE``, ``--bridge``/``--subnet`` per guest).

Each guest's veth name is unique on the host, each bridge has its own chains in the shared table:
starting, stopping, destroying, crashing (+ gc) or failing to start a guest on one bridge leaves
the other bridge's guest its veth, address, rules and published port.  Traffic goes only from
the host to the guests' own addresses (directly, and through 127.0.0.1 on a published port).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import test_guests
from test_guest_net import (
    NetGuests,
    _nothing_left,
    net,  # noqa: F401  (the fixture)
)
from test_net import _free_port, _links

from helpers import free_subnet


@dataclass
class Side:
    """One guest on its own bridge, publishing ``port`` to its port 80 (which answers ``hello``)."""

    name: str
    bridge: str
    subnet: str
    port: int
    hello: str


def _two(g: NetGuests, prefix: str) -> tuple[Side, Side]:
    a_net = free_subnet()
    b_net = free_subnet()
    while b_net == a_net:
        b_net = free_subnet()
    port_a = _free_port()
    port_b = _free_port()
    while port_b == port_a:
        port_b = _free_port()
    a = Side(g.name("a"), f"{prefix}brA", a_net, port_a, "hello-a")
    b = Side(g.name("b"), f"{prefix}brB", b_net, port_b, "hello-b")
    for s in (a, b):
        g(
            "create", s.name, "--net", "bridge", "--bridge", s.bridge, "--subnet", s.subnet,
            "-p", f"{s.port}:80", "--cmd", f"nc -ll -p 80 -e echo {s.hello}",
        )  # fmt: skip
    return a, b


def _rec(g: NetGuests, s: Side) -> dict:
    try:
        return json.loads((g.store / "net" / f"{s.bridge}.json").read_text())["active"].get(s.name) or {}
    except FileNotFoundError:
        return {}


def _master(link: str) -> str | None:
    out = subprocess.run(["ip", "-o", "link", "show", "dev", link], capture_output=True, text=True).stdout
    words = out.split()
    return words[words.index("master") + 1] if "master" in words else None


def _chain(table: str, chain: str) -> str:
    r = subprocess.run(["nft", "list", "chain", "inet", table, chain], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


def _get(addr: str, port: int, timeout: float = 10) -> bytes:
    """What ``addr:port`` says (the guests answer and close), retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((addr, port), timeout=3) as sk:
                data = b""
                while chunk := sk.recv(4096):
                    data += chunk
                if data:
                    return data.strip()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing from {addr}:{port}")
        time.sleep(0.1)


def _assert_up(g: NetGuests, s: Side, prefix: str) -> str:
    """``s`` runs with its veth on its bridge, its address, its rules and its published port; its veth."""
    rec = _rec(g, s)
    veth, ip = rec["veth"], rec["ip"]
    assert veth.startswith(f"{prefix}v"), rec
    assert _master(veth) == s.bridge, (veth, _master(veth))
    assert f"inet {ip}/" in g("exec", s.name, "--", "ip", "-4", "addr", "show", "eth0").stdout
    assert f"dport {s.port} dnat ip to {ip}:80" in _chain(prefix, f"prerouting-{s.bridge}")
    assert f"ip saddr {s.subnet}" in _chain(prefix, f"postrouting-{s.bridge}")
    assert _get(ip, 80) == s.hello.encode()  # the host to the guest's address
    assert _get("127.0.0.1", s.port) == s.hello.encode()  # the published port
    return str(veth)


def _assert_gone(g: NetGuests, s: Side, prefix: str, veth: str) -> None:
    """``s``'s network is gone: its record, veth, bridge and chains (the table may stay)."""
    assert _rec(g, s) == {}
    assert not _links(veth + "@") and not _links(f"{s.bridge}:"), _links(prefix)
    for kind in ("prerouting", "output", "postrouting"):
        assert _chain(prefix, f"{kind}-{s.bridge}") == ""


@pytest.mark.parametrize("first", ["a", "b"])
def test_two_bridges_same_prefix_and_table(net: NetGuests, prefix: str, first: str) -> None:  # noqa: F811
    g = net
    a, b = _two(g, prefix)
    one, two = (a, b) if first == "a" else (b, a)
    g("start", one.name)
    g("start", two.name)
    v1, v2 = _assert_up(g, one, prefix), _assert_up(g, two, prefix)
    assert v1 != v2
    # Stop the first started: the second keeps everything.
    g("stop", "--timeout", "2", one.name)
    _assert_gone(g, one, prefix, v1)
    assert _assert_up(g, two, prefix) == v2
    # Back again, then the second stops: the first keeps everything.
    g("start", one.name)
    v1 = _assert_up(g, one, prefix)
    g("stop", "--timeout", "2", two.name)
    _assert_gone(g, two, prefix, v2)
    assert _assert_up(g, one, prefix) == v1
    g("start", two.name)
    v2 = _assert_up(g, two, prefix)
    # Destroyed one after the other (the later started first): the other keeps its network.
    g("destroy", "--force", two.name)
    _assert_gone(g, two, prefix, v2)
    assert _assert_up(g, one, prefix) == v1
    g("destroy", "--force", one.name)
    _nothing_left(prefix)


def test_failed_start_beside_a_running_guest(net: NetGuests, prefix: str, monkeypatch) -> None:  # noqa: F811
    """A veth name that cannot be had (here: the running guest's, as a race with a start outside
    the store would give) fails the start in one line naming the link and what holds it, and its
    cleanup takes nothing of the running guest's."""
    from berth import net as berth_net
    from berth.errors import NetworkError
    from berth.net import guest

    g = net
    a, b = _two(g, prefix)
    g("start", a.name)
    va = _assert_up(g, a, prefix)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    # b's start, in this process: a sleeping process in its own network namespace is its init.
    init = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:

        class Stub:
            id = b.name
            pid = init.pid

            def cgroup(self) -> None:
                return None

        time.sleep(0.2)  # unshare has made the namespace
        opts = berth_net.parse(
            "bridge", bridge=b.bridge, subnet=b.subnet, publish=[f"{b.port}:80"], env=g.env
        )
        monkeypatch.setattr(guest, "_pick_veth", lambda *_: va)
        with pytest.raises(NetworkError) as e:
            berth_net.setup(Stub(), opts, g.env["BERTH_ROOT"])
    finally:
        init.kill()
        init.wait()
    msg = str(e.value)
    assert (
        "\n" not in msg
        and f"veth {va}: cannot create: the name is taken by a veth link on bridge {a.bridge}" in msg
    )
    assert "(17," not in msg
    assert _assert_up(g, a, prefix) == va
    assert subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout == tables
    _assert_gone(g, b, prefix, f"{prefix}vnone")
    # The same guest's real start works beside it, with a veth of its own.
    monkeypatch.undo()
    g("start", b.name)
    vb = _assert_up(g, b, prefix)
    assert vb != va and _assert_up(g, a, prefix) == va
    g("destroy", "--force", a.name, b.name)
    _nothing_left(prefix)


def test_gc_after_a_crash_keeps_the_other_bridge(net: NetGuests, prefix: str) -> None:  # noqa: F811
    g = net
    a, b = _two(g, prefix)
    g("start", a.name, b.name)
    va, vb = _assert_up(g, a, prefix), _assert_up(g, b, prefix)
    # The supervisor and b's init die with SIGKILL: nobody unplugs b.
    pid = g.record(b.name)["pid"]
    test_guests.kill_daemons(g.run_root)
    os.kill(pid, signal.SIGKILL)
    g.wait(lambda: not test_guests._pid_alive(pid), what="b's init to die")
    assert _chain(prefix, f"prerouting-{b.bridge}")  # left by the crash
    out = g("gc").stdout
    assert b.name in out and a.name not in out, out
    _assert_gone(g, b, prefix, vb)
    assert _assert_up(g, a, prefix) == va
    g("destroy", "--force", a.name)
    _nothing_left(prefix)


def test_hosts_own_links_are_left_alone(net: NetGuests, prefix: str) -> None:  # noqa: F811
    """A bridge the host had before berth's first guest on it stays when the last guest goes; a
    link that is not a bridge is refused as one, in one line, and kept."""
    g = net
    own, other = f"{prefix}brH", f"{prefix}brX"
    subprocess.run(["ip", "link", "add", own, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", other, "type", "veth", "peer", "name", f"{prefix}brXp"], check=True)
    try:
        h, x = g.name("h"), g.name("x")
        g("create", h, "--net", "bridge", "--bridge", own, "--subnet", free_subnet(), "--cmd", "sleep 1000")
        r = g(
            "create", x, "--net", "bridge", "--bridge", other, "--subnet", free_subnet(), "--cmd", "true", check=False
        )  # fmt: skip
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 125 and len(err) == 1, r.stderr
        assert f"bridge: {other} is a veth link of the host" in err[0], r.stderr  # refused at create
        assert not (g.store / "guests" / x).exists() and not list((g.store / "net").glob(f"{other}.json*"))
        localnet = Path(f"/proc/sys/net/ipv4/conf/{own}/route_localnet")
        assert localnet.read_text().strip() == "0"
        g("start", h)
        assert _master(_rec(g, Side(h, own, "", 0, ""))["veth"]) == own
        assert localnet.read_text().strip() == "1"  # published ports reachable via 127.0.0.1
        # berth set no MAC of its own on it (3: NET_ADDR_SET): the host's bridge is as it was
        assert Path(f"/sys/class/net/{own}/addr_assign_type").read_text().strip() != "3"
        g("destroy", "--force", h)
        assert _links(f"{own}:") and _links(f"{other}@"), _links(prefix)
        assert localnet.read_text().strip() == "0"  # the host's bridge gets its own value back
    finally:
        subprocess.run(["ip", "link", "del", own], check=False)
        subprocess.run(["ip", "link", "del", other], check=False)
    _nothing_left(prefix)


def test_a_published_port_is_one_guests_across_bridges(net: NetGuests, prefix: str) -> None:  # noqa: F811
    """A host port a running guest publishes on one bridge is refused to a guest on another (both
    bridges' chains would DNAT it: the later guest would silently take the port over), at create
    and at start, in one line naming ``publish``, the port and the guest holding it."""
    g = net
    a, b = _two(g, prefix)
    g("start", a.name)
    va = _assert_up(g, a, prefix)
    c = g.name("c")
    args = ("--net", "bridge", "--bridge", b.bridge, "--subnet", b.subnet, "-p", f"{a.port}:80")
    r = g("create", c, *args, "--cmd", "sleep 1000", check=False)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(err) == 1, r.stderr
    assert "publish" in err[0] and f"{a.port}/tcp" in err[0] and a.name in err[0], err
    # Made while a was stopped: refused when it starts beside the running a.
    g("stop", "--timeout", "2", a.name)
    g("create", c, *args, "--cmd", "sleep 1000")
    g("start", a.name)
    va = _assert_up(g, a, prefix)
    r = g("start", c, check=False)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(err) == 1, r.stderr
    assert "publish" in err[0] and f"{a.port}/tcp" in err[0] and a.name in err[0], err
    assert _assert_up(g, a, prefix) == va
    assert _rec(g, Side(c, b.bridge, b.subnet, a.port, "")) == {}
    assert f"dport {a.port} " not in _chain(prefix, f"prerouting-{b.bridge}")
    g("destroy", "--force", a.name, b.name, c)
    _nothing_left(prefix)


def test_a_restarted_guest_is_reachable_at_once(net: NetGuests, prefix: str) -> None:  # noqa: F811
    """A guest stopped and started again answers the host at once, on its address and its
    published port: its eth0 has the same MAC (derived from its address) and the host's stale
    neighbour entry for the address is dropped, not left to point to the old guest's for ~30 s."""
    g = net
    a, _ = _two(g, prefix)
    keep = g.name("k")  # keeps the bridge (and the host's neighbour entries on it) up
    g("create", keep, "--net", "bridge", "--bridge", a.bridge, "--subnet", a.subnet, "--cmd", "sleep 1000")
    g("start", keep, a.name)
    _assert_up(g, a, prefix)
    ip = _rec(g, a)["ip"]
    for _ in range(2):
        g("stop", "--timeout", "2", a.name)
        g("start", a.name)
        t0 = time.monotonic()
        assert _get("127.0.0.1", a.port, timeout=2) == a.hello.encode()
        assert _get(ip, 80, timeout=2) == a.hello.encode()
        assert time.monotonic() - t0 < 2
    mac = g("exec", a.name, "--", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == "02:42:" + ":".join(f"{int(o):02x}" for o in ip.split(".")), (mac, ip)
    g("destroy", "--force", a.name, keep)
    _nothing_left(prefix)


def _addrs(link: str) -> set[str]:
    out = subprocess.run(["ip", "-o", "addr", "show", "dev", link], capture_output=True, text=True).stdout
    # (not the link-local address the kernel gives the bridge once it is up)
    words = [ln.split() for ln in out.splitlines()]
    return {w[3] for w in words if w[2] in ("inet", "inet6") and not w[3].startswith("fe80:")}


def test_hosts_bridge_loses_only_berths_addresses(net: NetGuests, prefix: str) -> None:  # noqa: F811
    """The gateway addresses berth put on a bridge the host had go with the last guest (a stop,
    then gc after a crash); the host's own address on it stays."""
    g = net
    own = f"{prefix}brH"
    subprocess.run(["ip", "link", "add", own, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "192.0.2.77/32", "dev", own], check=True)
    try:
        before = _addrs(own)
        subnet = free_subnet()
        h = g.name("h")
        g("create", h, "--net", "bridge", "--bridge", own, "--subnet", subnet, "--cmd", "sleep 1000")
        g("start", h)
        gw = subnet.rsplit(".", 1)[0] + ".1/" + subnet.split("/")[1]
        during = _addrs(own)
        assert gw in during and before < during, during
        g("stop", "--timeout", "2", h)
        assert _addrs(own) == before, (_addrs(own), before)
        # A crash leaves them; gc takes them off.
        g("start", h)
        assert gw in _addrs(own)
        pid = g.record(h)["pid"]
        test_guests.kill_daemons(g.run_root)
        os.kill(pid, signal.SIGKILL)
        g.wait(lambda: not test_guests._pid_alive(pid), what="the init to die")
        g("gc")
        assert _addrs(own) == before, (_addrs(own), before)
        assert _links(f"{own}:")
        g("destroy", "--force", h)
    finally:
        subprocess.run(["ip", "link", "del", own], check=False)
    _nothing_left(prefix)
