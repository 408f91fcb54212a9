"""Pure parts of the network hardening: the subnet checks, the anti-spoofing rules of a bridge's
guest ports, the raw-socket refusal of ``ip:`` mode (BPF program and capabilities)."""

from __future__ import annotations

import pytest

from berth.cli import run as runcli
from berth.errors import UsageError
from berth.linux.bpf import unpack
from berth.net import ipisolate, nft
from berth.net.options import parse_subnet


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0.0.0.0/0", "too large"),
        ("10.0.0.0/7", "too large"),
        ("0.0.0.0/8", "0.0.0.0/8"),
        ("127.0.0.0/16", "127.0.0.0/8"),
        ("169.254.0.0/24", "169.254.0.0/16"),
        ("224.1.0.0/24", "224.0.0.0/4"),
        ("240.0.0.0/24", "240.0.0.0/4"),
        ("255.255.255.248/29", "240.0.0.0/4"),
    ],
)
def test_subnets_that_cannot_be_the_guests_are_refused(text: str, why: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_subnet(text)
    assert e.value.field == "subnet" and why in str(e.value)


@pytest.mark.parametrize("text", ["10.0.0.0/8", "10.243.7.0/24", "192.168.5.0/29", "100.64.0.0/10"])
def test_private_subnets_are_fine(text: str) -> None:
    assert parse_subnet(text) == text


def test_link_local_is_the_kernels_eui64() -> None:
    assert nft.link_local("02:42:0a:f3:01:02") == "fe80::42:aff:fef3:102"


def _spoof(ports: list[nft.Port]) -> list[dict]:
    rules = nft.ruleset("t", "brA", "10.1.0.0/24", [], [], "fd00:1::/64", ports)["nftables"]
    return [
        i["add"]["rule"] for i in rules if "rule" in i["add"] and i["add"]["rule"]["chain"] == "spoof-brA"
    ]


def test_spoof_rules_allow_only_each_ports_own_addresses() -> None:
    rules = _spoof(
        [
            ("tv1", "02:42:0a:01:00:03", "10.1.0.3", None),
            ("tv0", "02:42:0a:01:00:02", "10.1.0.2", "fd00:1::2"),
        ]
    )
    by = {r["comment"]: r["expr"] for r in rules}
    assert list(by) == [
        "guest to the host's loopback",
        "guest's advert of another's address",
        "guest's own ip",
        "guest's router advertisement",
        "guest's own ip6",
        "guest's own arp",
        "spoofed",
    ]
    for proto in (
        "ip",
        "ip6",
        "arp",
    ):  # the EtherType checked (nft adds no dependency inside a concatenation)
        assert by[f"guest's own {proto}"][0] == {
            "match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "type"}}, "right": proto}
        }
    lo = by["guest to the host's loopback"]
    assert lo[-2]["match"]["right"] == {"prefix": {"addr": "127.0.0.0", "len": 8}} and lo[-1] == {
        "drop": None
    }
    adverts = [r["expr"] for r in rules if r["comment"] == "guest's advert of another's address"]
    assert [a[0]["match"]["right"] for a in adverts] == ["tv0", "tv1"]  # one rule a port
    own = adverts[0][-2]["match"]
    assert own["op"] == "!=" and own["left"] == {"payload": {"base": "th", "offset": 64, "len": 128}}
    assert own["right"]["set"] == [
        "0xfd000001000000000000000000000002",  # its address
        "0xfe800000000000000042" + "0aff" + "fe010002",  # its link-local (from its MAC)
    ]
    ra = by["guest's router advertisement"]
    assert ra[1]["match"]["right"] == {"set": ["nd-router-advert", "nd-redirect"]} and ra[-1] == {
        "drop": None
    }
    v4 = by["guest's own ip"][1]["match"]["right"]["set"]
    assert v4 == [
        {"concat": ["tv0", "02:42:0a:01:00:02", "10.1.0.2"]},
        {"concat": ["tv1", "02:42:0a:01:00:03", "10.1.0.3"]},
    ]
    v6 = [e["concat"] for e in by["guest's own ip6"][1]["match"]["right"]["set"]]
    assert ["tv0", "02:42:0a:01:00:02", "fd00:1::2"] in v6 and ["tv0", "02:42:0a:01:00:02", "::"] in v6
    assert ["tv1", "02:42:0a:01:00:03", "fe80::42:aff:fe01:3"] in v6 and len(v6) == 5  # tv1 has no IPv6
    arp = [e["concat"] for e in by["guest's own arp"][1]["match"]["right"]["set"]]
    assert ["tv0", "02:42:0a:01:00:02", "02:42:0a:01:00:02", "0.0.0.0"] in arp and len(arp) == 4
    assert by["spoofed"] == [
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["tv0", "tv1"]}}},
        {"drop": None},
    ]
    assert _spoof([]) == []  # no guest: the chain is there, empty


def test_sock_create_program_refuses_sock_raw_only() -> None:
    (prog,) = [p for p in ipisolate.programs(["10.9.0.2"]) if p[1] == "berth_sockraw"]
    insns = unpack(prog[2])
    assert insns[0].off == ipisolate.OFF_SOCK_TYPE
    assert insns[1].imm == ipisolate.SOCK_RAW
    assert [i.imm for i in insns if i.code == 0xB4] == [1, 0]  # allow, then (jumped to) deny


def _opts(net: str, cap_add: list[str] | None = None, cap_drop: list[str] | None = None) -> dict:
    return {"net": net, "cap_add": cap_add or [], "cap_drop": cap_drop or []}


def test_ip_mode_drops_net_raw_unless_asked_for() -> None:
    assert "CAP_NET_RAW" in runcli._caps(_opts("bridge"))
    assert "CAP_NET_RAW" not in runcli._caps(_opts("ip:10.9.0.2"))
    assert "CAP_NET_RAW" in runcli._caps(_opts("ip:10.9.0.2", ["net_raw"]))
    assert "CAP_NET_RAW" in runcli._caps(_opts("ip:10.9.0.2", ["CHOWN,NET_RAW"]))
    assert "CAP_NET_RAW" in runcli._caps(_opts("ip:10.9.0.2", ["ALL"]))
