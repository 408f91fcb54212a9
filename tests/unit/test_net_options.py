"""Pure parts of berth.net: flag parsing, address allocation, the nft rule set, BPF programs."""

from __future__ import annotations

import pytest

from berth.errors import UsageError
from berth.linux.bpf import unpack
from berth.net import addr, ipisolate, nft
from berth.net.options import parse, parse_publish

ENV = {"BERTH_NET_PREFIX": "bt1", "BERTH_BRIDGE": "bt1br0", "BERTH_SUBNET": "10.99.1.0/24"}


def test_bridge_options() -> None:
    o = parse("bridge", ip="10.99.1.7", publish=["8080:80", "53:53/udp"], rate="100mbit", env=ENV)
    assert o.ip == "10.99.1.7"
    assert o.gateway == "10.99.1.1"
    assert o.ifb == "bt1br0ifb"
    assert o.veth(3) == "bt1v3"
    assert [str(p) for p in o.publish] == ["8080:80/tcp", "53:53/udp"]
    assert o.rate_bps == 100_000_000
    assert o.shaped


@pytest.mark.parametrize(
    ("mode", "kw", "field"),
    [
        ("bogus", {}, "net"),
        ("bridge", {"ip": "10.99.2.1"}, "ip"),
        ("bridge", {"ip": "10.99.1.1"}, "ip"),
        ("bridge", {"rate": "fast"}, "net-rate"),
        ("bridge", {"rate": "2mbit", "ceil": "1mbit"}, "net-ceil"),
        ("bridge", {"share": "0"}, "net-share"),
        ("bridge", {"publish": ["1:2", "1:3"]}, "publish"),
        ("none", {"publish": ["1:2"]}, "publish"),
        ("ip:", {}, "net"),
        ("ip:127.0.0.1", {}, "net"),
        ("host", {"rate": "1mbit"}, "net-rate"),
    ],
)
def test_bad_options(mode: str, kw: dict, field: str) -> None:
    with pytest.raises(UsageError) as e:
        parse(mode, env=ENV, **kw)
    assert e.value.field == field


@pytest.mark.parametrize("text", ["80", "0:80", "80:70000", "a:b", "80:80/sctp"])
def test_bad_publish(text: str) -> None:
    with pytest.raises(UsageError):
        parse_publish(text)


def test_long_bridge_name_refused() -> None:
    with pytest.raises(UsageError):
        parse("bridge", bridge="averyverylongbr", env=ENV)


def test_pick_addresses() -> None:
    assert addr.pick("10.0.0.0/29", set()) == "10.0.0.2"
    assert addr.pick("10.0.0.0/29", {"10.0.0.2"}) == "10.0.0.3"
    with pytest.raises(UsageError, match="taken"):
        addr.pick("10.0.0.0/29", {"10.0.0.4"}, "10.0.0.4")
    with pytest.raises(UsageError, match="no free"):
        addr.pick("10.0.0.0/30", {"10.0.0.2"})
    assert addr.pick_index({0, 1, 3}) == 2


def test_leases_persist(tmp_path) -> None:
    with addr.Leases(str(tmp_path), "br").locked() as db:
        kept = db.lease("a", "10.0.0.0/24", None, persist=True)
        db.lease("b", "10.0.0.0/24", None, persist=False)
        db.release("a")
        db.release("b")
        db.save()
    with addr.Leases(str(tmp_path), "br").locked() as db:
        assert db.lease("c", "10.0.0.0/24", None, persist=False)["ip"] == "10.0.0.3"
        assert db.lease("a", "10.0.0.0/24", None, persist=True) == kept


def test_ruleset_shape() -> None:
    rules = nft.ruleset("bt", "btbr0", "10.9.0.0/24", [("10.9.0.2", 8080, 80, "tcp")], ["btv1"])
    items = [i["add"] for i in rules["nftables"]]
    tables = [(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i]
    assert tables == [("ip", "bt"), ("bridge", "bt")]
    dnat = [i["rule"] for i in items if "rule" in i and any("dnat" in e for e in i["rule"]["expr"])]
    assert {r["chain"] for r in dnat} == {"prerouting", "output"}
    assert all(r["table"] == "bt" for i in items for r in [i.get("rule") or {"table": "bt"}])
    drops = [
        i["rule"]
        for i in items
        if "rule" in i and i["rule"]["table"] == "bt" and i["rule"].get("comment") == "isolated"
    ]
    assert len(drops) == 2


def test_bpf_programs_assemble() -> None:
    progs = ipisolate.programs(["10.9.0.2", "10.9.0.200"])
    assert len(progs) == 6
    for _hook, name, code in progs:
        insns = unpack(code)
        assert name.startswith("berth_")
        assert insns[-1].code == 0x95  # exit
    # the bind program compares against both addresses, the high one zero-extended
    bind = unpack(progs[0][2])
    imms = {i.imm & 0xFFFFFFFF for i in bind}
    assert ipisolate._be32("10.9.0.200") in imms
