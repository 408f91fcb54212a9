"""berth's own nftables table: outbound NAT for the guests' subnet and published ports (DNAT).

One table (``BERTH_NFT_TABLE``) may serve several bridges: each bridge has its own chains in it
(``prerouting-BRIDGE``, ``output-BRIDGE``, ``postrouting-BRIDGE``, and ``forward-BRIDGE`` and
``spoof-BRIDGE``, the guests' anti-spoofing, in the ``bridge`` family table of the same name), so a bridge's rules are replaced or removed without
touching another's.  :func:`ruleset` builds one bridge's chains as ``nft -j`` JSON from its
running guests (pure); :func:`apply` replaces that bridge's chains atomically (one ``nft -j -f -``
transaction: add, flush, delete, add again, so it works whether they exist or not) and
:func:`remove_bridge` removes them with the bridge's last guest, and the tables with the last
bridge.  The caller serialises them per table (:func:`berth.net.guest`).  No rule ever goes
outside berth's table.

Every apply and removal also drops the chains of a berth before per-bridge chains (unprefixed,
one set for the whole table, which may hold any bridge's rules): while :func:`legacy` finds
them, the caller passes the other bridges' rules (``others``) to be loaded in the same
transaction, so no bridge's guests are left without NAT or published ports by the upgrade.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from typing import Any

from berth.errors import NetworkError, UnsupportedError

FAMILY = "inet"  # one table for IPv4 and IPv6
LEGACY_FAMILY = "ip"  # berth's table before the guests had IPv6: replaced, never made again
#: (family, hook, type, priority) of each bridge's base chains, by chain kind.
CHAINS = {
    "prerouting": (FAMILY, "prerouting", "nat", -100),
    "output": (FAMILY, "output", "nat", -100),
    "postrouting": (FAMILY, "postrouting", "nat", 100),
    "forward": ("bridge", "forward", "filter", 0),
    "spoof": ("bridge", "prerouting", "filter", -300),
}
ARP_PROBE = str(ipaddress.IPv4Address(0))  # the sender address of an ARP probe (RFC 5227)
#: A guest's port on the bridge: (host end of its veth, its MAC, its IPv4 address, its IPv6 address).
Port = tuple[str, str, str, "str | None"]


def chain_name(kind: str, bridge: str) -> str:
    """The chain of ``bridge`` for ``kind`` (no two bridges share one: no kind is a prefix of another)."""
    return f"{kind}-{bridge}"


def _chain(table: str, kind: str, name: str) -> dict[str, Any]:
    family, hook, typ, prio = CHAINS[kind]
    return {
        "family": family,
        "table": table,
        "name": name,
        "type": typ,
        "hook": hook,
        "prio": prio,
        "policy": "accept",
    }


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def _prefix(cidr: str) -> dict[str, Any]:
    net = ipaddress.ip_network(cidr)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def ruleset(
    table: str,
    bridge: str,
    subnet: str,
    publishes: list[tuple[str, int, int, str]],
    isolated: list[str] | tuple[str, ...] = (),
    subnet6: str | None = None,
    ports: list[Port] | tuple[Port, ...] = (),
) -> dict[str, Any]:
    """The tables for a bridge: ``publishes`` is (guest address, host port, guest port, proto) with
    an IPv4 or IPv6 guest address (a port is published on both when the guest has both),
    ``isolated`` the host ends of the veths of guests that may not talk to other guests.  The
    ``inet`` table holds the IPv4 and the IPv6 rules.

    * ``prerouting`` and ``output`` (nat): a packet for a local address of the host (``fib daddr
      type local``, 127.0.0.1 included; not ::1, which IPv6 keeps on the loopback device) on a
      published port goes to the guest: to its IPv4 address, or its IPv6 address over IPv6.
    * ``postrouting`` (nat): the guests' traffic leaving by another interface is masqueraded; so is
      loopback-sourced traffic DNAT'ed onto the bridge (the guest must answer the bridge's address).
      The host's own traffic from an address in the subnet is not: an ``ip:`` guest's address that
      berth put on the bridge (its egress filter, which runs after NAT, would drop the rewritten
      packet: the guest could reach nothing but the bridge), or the gateway's.
    * a ``bridge`` family table of the same name, chain ``forward``: frames from or to an isolated
      guest's port are dropped between bridge ports (bridge port isolation alone only separates
      isolated ports from each other); the host, reached through the bridge device, stays reachable.
    """
    t = {"family": FAMILY, "table": table}
    ch = {kind: chain_name(kind, bridge) for kind in CHAINS}
    items: list[dict[str, Any]] = [{"table": {"family": FAMILY, "name": table}}]
    for kind in ("prerouting", "output", "postrouting"):
        items.append({"chain": _chain(table, kind, ch[kind])})
    for addr, host_port, guest_port, proto in sorted(
        publishes, key=lambda p: (p[1], p[3], ipaddress.ip_address(p[0]).version)
    ):
        fam = "ip6" if ipaddress.ip_address(addr).version == 6 else "ip"
        expr = [
            _match({"meta": {"key": "nfproto"}}, "ipv6" if fam == "ip6" else "ipv4"),
            _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
            # ::1 may not leave the loopback device (IPv6 has no route_localnet): not DNAT'ed, a
            # connection to it is refused rather than lost
            *([_match(_payload("ip6", "daddr"), "::1", "!=")] if fam == "ip6" else []),
            _match(_payload(proto, "dport"), host_port),
            {"dnat": {"family": fam, "addr": addr, "port": guest_port}},
        ]
        for kind in ("prerouting", "output"):
            items.append(
                {"rule": {**t, "chain": ch[kind], "comment": f"publish {host_port}/{proto}", "expr": expr}}
            )
    nets = [("ip", subnet)]
    if subnet6 is not None:
        nets.append(("ip6", subnet6))
    for fam, net in nets:
        items.append(
            {
                "rule": {
                    **t,
                    "chain": ch["postrouting"],
                    "comment": "guests out",
                    "expr": [
                        _match(_payload(fam, "saddr"), _prefix(net)),
                        _match({"meta": {"key": "oifname"}}, bridge, "!="),
                        # not from an address of the host's own (an ip: guest's): see above
                        _match({"fib": {"result": "type", "flags": ["saddr"]}}, "local", "!="),
                        {"masquerade": None},
                    ],
                }
            }
        )
    items.append(
        {
            "rule": {
                **t,
                "chain": ch["postrouting"],
                "comment": "published, from loopback",
                "expr": [
                    _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")),
                    _match({"meta": {"key": "oifname"}}, bridge),
                    {"masquerade": None},
                ],
            }
        }
    )
    b = {"family": "bridge", "table": table}
    items.append({"table": {"family": "bridge", "name": table}})
    items.append({"chain": _chain(table, "forward", ch["forward"])})
    for port in sorted(isolated):
        for key in ("iifname", "oifname"):
            items.append(
                {
                    "rule": {
                        **b,
                        "chain": ch["forward"],
                        "comment": "isolated",
                        "expr": [_match({"meta": {"key": key}}, port), {"drop": None}],
                    }
                }
            )
    items.append({"chain": _chain(table, "spoof", chain_name("spoof", bridge))})
    items += spoof_rules(table, chain_name("spoof", bridge), ports)
    return {"nftables": [{"add": item} for item in items]}


def link_local(mac: str) -> str:
    """The IPv6 link-local address the kernel gives a device with ``mac`` (EUI-64, RFC 4291)."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:6]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def spoof_rules(table: str, chain: str, ports: list[Port] | tuple[Port, ...]) -> list[dict[str, Any]]:
    """Anti-spoofing of the guests' ports: a frame that enters the bridge from a guest's veth is let
    in only with the guest's MAC as its source and, by EtherType, the guest's own sender address:

    * IPv4: its address; ARP: its MAC and its address as the sender (or ``0.0.0.0``, an ARP probe);
    * IPv6: its address, its link-local address (from its MAC, :func:`link_local`) or ``::``
      (duplicate address detection);
    * anything else from a guest's port (another EtherType, VLAN-tagged frames) is dropped, and
      so is an IPv6 router advertisement or redirect, whatever its source: the other guests (and
      a host's own bridge, which berth leaves accepting them) take none from a guest.

    A neighbour advertisement is let in only for the guest's own address or link-local (the
    caches learn its target), and nothing from a guest to 127.0.0.0/8.  So a guest cannot take
    another guest's or the host's address over (ARP or neighbour spoofing) nor send with a
    forged source.  One set lookup for the frame of an allowed
    guest's (the key: input port, source MAC, sender address); frames from other ports (a host
    bridge's own) pass untouched."""
    if not ports:
        return []
    c = {"family": "bridge", "table": table, "chain": chain}
    iif = {"meta": {"key": "iifname"}}
    ether = _payload("ether", "saddr")
    v4 = [{"concat": [veth, mac, ip]} for veth, mac, ip, _ in sorted(ports)]
    arp = [{"concat": [veth, mac, mac, a]} for veth, mac, ip, _ in sorted(ports) for a in (ip, ARP_PROBE)]
    v6 = [
        {"concat": [veth, mac, a]}
        for veth, mac, _, ip6 in sorted(ports)
        for a in (*([ip6] if ip6 else []), link_local(mac), "::")
    ]
    sender = {
        "ip": [_payload("ip", "saddr")],
        "arp": [_payload("arp", "saddr ether"), _payload("arp", "saddr ip")],
        "ip6": [_payload("ip6", "saddr")],
    }
    rules = []
    guests = {"set": sorted({p[0] for p in ports})}
    # Nothing from a guest to the host's 127.0.0.0/8 (berth's bridges have route_localnet for
    # the published ports' DNAT from 127.0.0.1: a guest's frame addressed there would reach the
    # host's loopback-only services, the CVE-2020-8558 pattern; R14).
    expr = [
        _match(_payload("ether", "type"), "ip"),
        _match(iif, guests),
        _match(_payload("ip", "daddr"), _prefix("127.0.0.0/8")),
        {"drop": None},
    ]
    rules.append({"rule": {**c, "comment": "guest to the host's loopback", "expr": expr}})
    # A neighbour advertisement only for the guest's own addresses: the neighbour caches learn
    # its target, not its source (R14: an NA from a guest's own link-local for another guest's
    # address took that address over).  The target by offset (nft 1.0.6 has no icmpv6 taddr).
    target = {"payload": {"base": "th", "offset": 64, "len": 128}}
    for veth, mac, _, ip6 in sorted(ports):
        own = [f"0x{int(ipaddress.IPv6Address(a)):032x}" for a in (*([ip6] if ip6 else []), link_local(mac))]
        expr = [
            _match(iif, veth),
            _match(_payload("ether", "type"), "ip6"),
            _match({"meta": {"key": "l4proto"}}, "ipv6-icmp"),
            _match(_payload("icmpv6", "type"), "nd-neighbor-advert"),
            _match(target, {"set": own}, "!="),
            {"drop": None},
        ]
        rules.append({"rule": {**c, "comment": "guest's advert of another's address", "expr": expr}})
    for proto, allowed in (("ip", v4), ("ip6", v6), ("arp", arp)):
        if proto == "ip6":  # no router advertisement nor redirect from a guest, from any address
            expr = [
                _match({"meta": {"key": "l4proto"}}, "ipv6-icmp"),
                _match(_payload("icmpv6", "type"), {"set": ["nd-router-advert", "nd-redirect"]}),
                _match(iif, guests),
                {"drop": None},
            ]
            rules.append({"rule": {**c, "comment": "guest's router advertisement", "expr": expr}})
        key = {"concat": [iif, ether, *sender[proto]]}
        # the EtherType by hand: nft adds no dependency for a payload inside a concatenation
        expr = [_match(_payload("ether", "type"), proto), _match(key, {"set": allowed}), {"accept": None}]
        rules.append({"rule": {**c, "comment": f"guest's own {proto}", "expr": expr}})
    drop = [_match(iif, guests), {"drop": None}]
    rules.append({"rule": {**c, "comment": "spoofed", "expr": drop}})
    return rules


def _nft_path() -> str | None:
    """The nft command: on PATH, else where Debian puts it (guestd may run with a PATH without
    /usr/sbin)."""
    return shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)


def _nft(payload: dict[str, Any], what: str) -> str:
    nft = _nft_path()
    if nft is None:
        raise UnsupportedError(
            "nft: not installed (apt install nftables): needed for NAT and published ports"
        )
    proc = subprocess.run([nft, "-j", "-f", "-"], input=json.dumps(payload), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.strip().startswith("^")]
        raise NetworkError(f"nft: {what}: {lines[0] if lines else 'failed'}")
    return proc.stdout


def _replace_ops(table: str, bridge: str) -> list[dict[str, Any]]:
    """Ops that leave ``bridge``'s chains (and the chains of berth before they were per bridge,
    which held one bridge's rules for the whole table) gone, whether they existed or not."""
    ops: list[dict[str, Any]] = []
    for family in (FAMILY, "bridge"):
        ops.append({"add": {"table": {"family": family, "name": table}}})
    for kind in CHAINS:
        for name in (chain_name(kind, bridge), kind):
            spec = _chain(table, kind, name)
            ref = {"family": spec["family"], "table": table, "name": name}
            ops += [{"add": {"chain": spec}}, {"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
    return ops


def _rebuild_ops(table: str, others: dict[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Ops that replace each bridge's chains in ``others`` ({bridge: :func:`ruleset`}) with its rules."""
    ops: list[dict[str, Any]] = []
    for other, rules in sorted((others or {}).items()):
        ops += _replace_ops(table, other) + rules["nftables"]
    return ops


def apply(rules: dict[str, Any], bridge: str, others: dict[str, dict[str, Any]] | None = None) -> None:
    """Replace ``bridge``'s chains with those in ``rules`` (:func:`ruleset`) in one transaction;
    the other bridges' chains in the table stay as they are, but those in ``others`` ({bridge:
    rules}), replaced in the same transaction (the chains of a berth before per-bridge chains,
    dropped here, may have held their rules: :func:`legacy`)."""
    tables = [i["add"]["table"] for i in rules["nftables"] if "table" in i["add"]]
    name = tables[0]["name"]
    legacy = {"family": LEGACY_FAMILY, "name": name}
    head = [{"add": {"table": legacy}}, {"delete": {"table": legacy}}, *_replace_ops(name, bridge)]
    ops = head + rules["nftables"] + _rebuild_ops(name, others)
    _nft({"nftables": ops}, f"load table {name} (bridge {bridge})")


def legacy(table: str) -> bool:
    """Whether berth's table ``table`` still has what a berth before per-bridge chains left: the
    unprefixed chains (``prerouting``…, one set for every bridge naming the table) or the ``ip``
    table.  Any apply or removal drops them: the caller then rebuilds every bridge's chains."""
    nft = _nft_path()
    if nft is None:
        return False
    proc = subprocess.run([nft, "-j", "list", "chains"], capture_output=True, text=True)
    if proc.returncode != 0:
        return False
    for item in json.loads(proc.stdout or "{}").get("nftables", []):
        c = item.get("chain") or {}
        fam = c.get("family")
        if c.get("table") == table and (
            fam == LEGACY_FAMILY or (fam in (FAMILY, "bridge") and c.get("name") in CHAINS)
        ):
            return True
    return False


def chains(table: str) -> list[str]:
    """The chains in berth's tables named ``table`` (``inet`` and ``bridge``: the legacy ``ip``
    table goes with them); [] when there are none."""
    nft = _nft_path()
    if nft is None:
        return []
    out: list[str] = []
    for family in (FAMILY, "bridge"):
        proc = subprocess.run([nft, "-j", "list", "table", family, table], capture_output=True, text=True)
        if proc.returncode != 0:
            continue  # no such table
        for item in json.loads(proc.stdout).get("nftables", []):
            if "chain" in item:
                out.append(f"{family} {item['chain']['name']}")
    return out


def remove_bridge(table: str, bridge: str, others: dict[str, dict[str, Any]] | None = None) -> None:
    """Remove ``bridge``'s chains from the table (and replace those of the bridges in ``others``
    in the same transaction, as :func:`apply` does), and the tables once no chain is left in them
    (another bridge's chains keep them)."""
    if not any(exists(table, family) for family in (FAMILY, "bridge", LEGACY_FAMILY)):
        return
    # The legacy ``ip`` table goes too, as in :func:`apply`: left, :func:`legacy` would stay true
    # and a later apply on another bridge would rebuild this one's chains from a stale file.
    legacy = {"family": LEGACY_FAMILY, "name": table}
    ops = [{"add": {"table": legacy}}, {"delete": {"table": legacy}}]
    ops += _replace_ops(table, bridge) + _rebuild_ops(table, others)
    _nft({"nftables": ops}, f"remove bridge {bridge} from table {table}")
    if not chains(table):
        delete(table)


def delete(table: str) -> None:
    """Remove berth's tables, every bridge's chains with them (nothing if they are not there)."""
    ops: list[dict[str, Any]] = []
    for family in (FAMILY, LEGACY_FAMILY, "bridge"):
        tbl = {"family": family, "name": table}
        ops += [{"add": {"table": tbl}}, {"delete": {"table": tbl}}]
    _nft({"nftables": ops}, f"delete table {table}")


def exists(table: str, family: str = FAMILY) -> bool:
    nft = _nft_path()
    if nft is None:
        return False
    proc = subprocess.run([nft, "list", "table", family, table], capture_output=True, text=True)
    return proc.returncode == 0
