"""The running guests keep their way to the host (their gateway: the bridge's address, NAT and
published ports) while other guests come and go and while berth's nft table is upgraded.

* The bridge berth makes has a MAC of its own: it does not follow its lowest port's as guests'
  veths are plugged in and out, so a guest's neighbour entry for its gateway stays right.
* A table left by a berth before per-bridge chains (one unprefixed set of chains) is migrated
  by the next apply on any bridge without dropping another bridge's guests' rules.

Traffic goes only between the host and the test's own guests.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from pathlib import Path

import pytest
from test_guest_net import (
    NetGuests,
    _nothing_left,
    net,  # noqa: F401  (the fixture)
)
from test_net import _free_port
from test_net_bridges import Side, _assert_up, _chain, _get, _rec

from helpers import free_subnet


def _mac(link: str) -> str:
    return Path(f"/sys/class/net/{link}/address").read_text().strip()


def _gateway_mac(g: NetGuests, name: str, gw: str) -> str | None:
    """The MAC of ``name``'s neighbour entry for ``gw`` after one ping to it (resolved), or None
    when the ping is lost."""
    script = f"ping -c 1 -W 1 {gw} >/dev/null && ip neigh show {gw}"
    words = g("exec", name, "--", "sh", "-c", script, check=False).stdout.split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else None


def test_gateway_mac_stays_across_other_guests(net: NetGuests, prefix: str) -> None:  # noqa: F811
    """A guest resolves its gateway while another guest's veth has the lowest MAC of the bridge's
    ports (here made the lowest there can be: the kernel gives veths random ones); that guest's
    stop and a new start leave the bridge's MAC, and the running guest's entry for it, as they
    were: the MAC berth gives it (derived from its name, so a bridge made again has it too)."""
    from berth.net import bridge

    g = net
    br = g.env["BERTH_BRIDGE"]
    gw = str(ipaddress.IPv4Network(g.env["BERTH_SUBNET"]).network_address + 1)
    other, run = g.name("o"), g.name("r")
    for n in (other, run):
        g("create", n, "--net", "bridge", "--no-lxcfs", "--cmd", "sleep 1000")
    g("start", other)
    veth = _rec(g, Side(other, br, "", 0, ""))["veth"]
    subprocess.run(["ip", "link", "set", "dev", veth, "address", "02:00:00:00:00:01"], check=True)
    g("start", run)
    mac = _mac(br)
    assert _gateway_mac(g, run, gw) == mac
    g("stop", "--timeout", "2", other)
    assert _gateway_mac(g, run, gw) == mac == _mac(br)  # (else: lost, to a MAC nobody has)
    g("start", other)
    assert _gateway_mac(g, run, gw) == mac == _mac(br)
    assert mac == bridge.mac_for(br)
    g("destroy", "--force", other, run)
    _nothing_left(prefix)


KINDS = ("prerouting", "output", "postrouting", "forward")


def _old_layout(g: NetGuests, table: str, *sides: Side) -> None:
    """berth's table as a berth before per-bridge chains left it, with the rules of ``sides``'
    running guests: the bridges' own chains gone, their rules in the unprefixed chains."""
    from berth.net import nft

    script = []
    for s in sides:
        r = _rec(g, s)
        rules = nft.ruleset(table, s.bridge, s.subnet, [(r["ip"], s.port, 80, "tcp")])
        text = json.dumps(rules)
        for kind in KINDS:
            text = text.replace(f'"{kind}-{s.bridge}"', f'"{kind}"')
        script += json.loads(text)["nftables"]
        for kind in KINDS:
            family = "bridge" if kind == "forward" else "inet"
            ref = {"family": family, "table": table, "name": f"{kind}-{s.bridge}"}
            script += [{"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
    p = subprocess.run(["nft", "-j", "-f", "-"], input=json.dumps({"nftables": script}), text=True)
    assert p.returncode == 0
    for s in sides:
        assert _chain(table, f"prerouting-{s.bridge}") == ""
        assert _get("127.0.0.1", s.port) == s.hello.encode()  # through the old chains


def _assert_migrated(g: NetGuests, table: str, prefix: str, *sides: Side) -> None:
    for kind in KINDS[:3]:
        assert _chain(table, kind) == ""
    for s in sides:
        _assert_up(g, s, prefix)


def test_old_chains_migrate_without_dropping_another_bridges_rules(net: NetGuests, prefix: str) -> None:  # noqa: F811
    """The unprefixed chains of a berth before per-bridge chains held the rules of the guests of
    two running bridges: the next apply on one bridge (a guest's start), and the removal of its
    chains (its last guest's stop), drop them and rebuild the other bridge's chains too, in the
    same transaction: its guest keeps its published port and NAT."""
    g = net
    subnets = [free_subnet()]
    while len(subnets) < 2:
        subnets += [n for n in [free_subnet()] if n not in subnets]
    ports = [_free_port()]
    while len(ports) < 2:
        ports += [p for p in [_free_port()] if p not in ports]
    a = Side(g.name("a"), f"{prefix}brA", subnets[0], ports[0], "hello-a")
    b = Side(g.name("b"), f"{prefix}brB", subnets[1], ports[1], "hello-b")
    c = g.name("c")
    common = ("--net", "bridge", "--no-lxcfs")
    for s in (a, b):
        args = ("--bridge", s.bridge, "--subnet", s.subnet, "-p", f"{s.port}:80")
        g("create", s.name, *common, *args, "--cmd", f"nc -ll -p 80 -e echo {s.hello}")
    g("create", c, *common, "--bridge", a.bridge, "--subnet", a.subnet, "--cmd", "sleep 1000")
    g("start", a.name, b.name)
    _old_layout(g, prefix, a, b)
    g("start", c)  # an apply on a's bridge
    _assert_migrated(g, prefix, prefix, a, b)
    g("stop", "--timeout", "2", c)
    _old_layout(g, prefix, a, b)
    g("stop", "--timeout", "2", a.name)  # a's bridge's chains removed with its last guest
    _assert_migrated(g, prefix, prefix, b)
    assert _chain(prefix, f"prerouting-{a.bridge}") == ""
    # (not on ::1, which IPv6 keeps on the loopback device: refused at once, not a dead port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("::1", b.port), timeout=2).close()
    g("destroy", "--force", a.name, b.name, c)
    _nothing_left(prefix)


def test_fix_mac_gives_berths_older_bridge_its_own(prefix: str) -> None:
    """A bridge berth made before its bridges had their own MAC (the kernel's random one, which
    follows the ports) gets berth's at the next guest's start (:func:`berth.net.guest`); one
    with a MAC set is left as it is."""
    from pyroute2 import IPRoute

    from berth.net import bridge

    name = f"{prefix}brF"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        assert Path(f"/sys/class/net/{name}/addr_assign_type").read_text().strip() != str(bridge.NET_ADDR_SET)
        with IPRoute() as ipr:
            idx = bridge.link_index(ipr, name)
            assert idx is not None
            bridge.fix_mac(ipr, idx, name)
            assert _mac(name) == bridge.mac_for(name)
            subprocess.run(["ip", "link", "set", "dev", name, "address", "06:00:00:00:00:07"], check=True)
            bridge.fix_mac(ipr, idx, name)
            assert _mac(name) == "06:00:00:00:00:07"
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
