"""Pure parts of berth.net: flag parsing, address allocation, the nft rule set, BPF programs."""

from __future__ import annotations

import pytest

from berth.errors import UsageError
from berth.linux.bpf import unpack
from berth.net import addr, htb, ipisolate, nft
from berth.net.options import DEFAULT_MTU, default_subnet6, parse, parse_ip, parse_publish

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


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[::1]:8080:80", "::1 cannot be published"),
        ("::1:8080:80/udp", "::1 cannot be published"),
        ("127.0.0.1:8080:80", "a host address is not supported"),
        ("[fd00::2]:8080:80", "a host address is not supported"),
    ],
)
def test_publish_with_a_host_address_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_publish(text)
    assert e.value.field == "publish" and why in str(e.value) and "\n" not in str(e.value)


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


def test_guest_index_bounded_by_the_filter_priorities() -> None:
    """Every index pick_index gives keeps the guest's IPv4 filter priority below the IPv6 ones
    and those within 16 bits; one more is refused with the field named."""
    from berth.policy.htb import GUEST_MINOR_BASE

    top = addr.MAX_INDEX
    assert htb.FILTER_PRIO_BASE + GUEST_MINOR_BASE + top < htb.FILTER_PRIO6_BASE
    assert htb.FILTER_PRIO6_BASE + GUEST_MINOR_BASE + top <= 0xFFFF
    assert addr.pick_index(set(range(top))) == top
    with pytest.raises(UsageError, match="bridge.*places"):
        addr.pick_index(set(range(top + 1)))


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


def test_running_ip_guests_addresses_are_taken_on_the_bridge(tmp_path) -> None:
    """A running ip: guest's address (the host has it on the bridge) is no bridge guest's to
    lease; it is free again once the ip: guest is gone, and its own lookup leaves it out."""
    with addr.Leases(str(tmp_path), "br").locked() as db:
        db.active["i"] = {"mode": "ip", "addrs": ["10.0.0.2", "192.0.2.9"]}
        db.active["b"] = {"mode": "bridge", "ip": "10.0.0.5"}  # (its lease holds it, not this)
        assert db.taken_addrs() == {"10.0.0.2", "192.0.2.9"}
        assert db.taken_addrs(but="i") == set()
        assert db.taken_addrs(key="ip6") == set()
        assert db.lease("a", "10.0.0.0/24", None, persist=False)["ip"] == "10.0.0.3"
        with pytest.raises(UsageError, match="10.0.0.2 is taken"):
            db.lease("c", "10.0.0.0/24", "10.0.0.2", persist=False)
        assert db.taken_addrs(but="i") == {"10.0.0.3"}  # the lease of a
        del db.active["i"]
        assert db.lease("c", "10.0.0.0/24", None, persist=False)["ip"] == "10.0.0.2"


def test_ruleset_shape() -> None:
    rules = nft.ruleset("bt", "btbr0", "10.9.0.0/24", [("10.9.0.2", 8080, 80, "tcp")], ["btv1"])
    items = [i["add"] for i in rules["nftables"]]
    tables = [(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i]
    assert tables == [("inet", "bt"), ("bridge", "bt")]
    dnat = [i["rule"] for i in items if "rule" in i and any("dnat" in e for e in i["rule"]["expr"])]
    assert {r["chain"] for r in dnat} == {"prerouting-btbr0", "output-btbr0"}
    assert all(r["table"] == "bt" for i in items for r in [i.get("rule") or {"table": "bt"}])
    drops = [
        i["rule"]
        for i in items
        if "rule" in i and i["rule"]["table"] == "bt" and i["rule"].get("comment") == "isolated"
    ]
    assert len(drops) == 2


def test_bpf_programs_assemble() -> None:
    progs = ipisolate.programs(["10.9.0.2", "10.9.0.200"])
    assert len(progs) == 9  # six sock_addr hooks, the raw-socket refusal (sock_create), two packet filters
    for _hook, name, code in progs:
        insns = unpack(code)
        assert name.startswith("berth_")
        assert insns[-1].code == 0x95  # exit
    # the bind program compares against both addresses, the high one zero-extended
    bind = unpack(progs[0][2])
    imms = {i.imm & 0xFFFFFFFF for i in bind}
    assert ipisolate._be32("10.9.0.200") in imms


# -- MTU and IPv6 ----------------------------------------------------------------------------------


def test_mtu_default_and_env() -> None:
    assert parse("bridge", env=ENV).mtu == DEFAULT_MTU == 65535
    assert parse("bridge", env={**ENV, "BERTH_NET_MTU": "9000"}).mtu == 9000
    for bad in ("1000", "65536", "big", "-1"):
        with pytest.raises(UsageError) as e:
            parse("bridge", env={**ENV, "BERTH_NET_MTU": bad})
        assert e.value.field == "BERTH_NET_MTU"


def test_default_subnet6_is_a_stable_ula_per_bridge() -> None:
    a = default_subnet6("bt1br0")
    assert a == default_subnet6("bt1br0") != default_subnet6("bt2br0")
    assert a.startswith("fd") and a.endswith("::/64")
    o = parse("bridge", env=ENV)
    assert o.subnet6 == a
    assert o.gateway6 == a.replace("::/64", "::1")
    assert parse("bridge", env={**ENV, "BERTH_SUBNET6": "none"}).subnet6 is None
    assert parse("bridge", env={**ENV, "BERTH_SUBNET6": "fd00:0:0:7::/64"}).subnet6 == "fd00:0:0:7::/64"


@pytest.mark.parametrize("text", ["fd00::/40", "fd00::/127", "fd00::1/64", "ff02::/64", "nonsense", "::/64"])
def test_bad_subnet6(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse("bridge", env={**ENV, "BERTH_SUBNET6": text})
    assert e.value.field == "subnet6"


def test_ip_takes_v4_v6_or_both() -> None:
    env = {**ENV, "BERTH_SUBNET6": "fd00:99::/64"}
    o = parse("bridge", ip="fd00:99::5", env=env)
    assert (o.ip, o.ip6, o.ip_flag) == (None, "fd00:99::5", "fd00:99::5")
    o = parse("bridge", ip="10.99.1.7, fd00:99::0:5", env=env)
    assert (o.ip, o.ip6, o.ip_flag) == ("10.99.1.7", "fd00:99::5", "10.99.1.7,fd00:99::5")
    assert parse_ip(o.ip_flag or "", o.subnet, o.subnet6) == (o.ip, o.ip6)


@pytest.mark.parametrize(
    ("ip", "env6", "reason"),
    [
        ("fd00:99::zz", "fd00:99::/64", "not an IPv4 or IPv6 address"),
        ("fd00:98::5", "fd00:99::/64", "outside the subnet"),
        ("fd00:99::1", "fd00:99::/64", "reserved"),
        ("fd00:99::", "fd00:99::/64", "reserved"),
        ("fd00:99::5,fd00:99::6", "fd00:99::/64", "more than one IPv6"),
        ("10.99.1.5,10.99.1.6", "fd00:99::/64", "more than one IPv4"),
        ("fd00:99::5", "none", "no IPv6"),
    ],
)
def test_bad_ip6(ip: str, env6: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason) as e:
        parse("bridge", ip=ip, env={**ENV, "BERTH_SUBNET6": env6})
    assert e.value.field == "ip"


def test_pick6_and_leases_keep_the_ipv6_address(tmp_path) -> None:
    assert addr.pick("fd00:1::/64", set()) == "fd00:1::2"
    assert addr.pick("fd00:1::/64", {"fd00:1::2"}) == "fd00:1::3"
    with pytest.raises(UsageError, match="taken"):
        addr.pick("fd00:1::/64", {"fd00:1::9"}, "fd00:1::9")
    with pytest.raises(UsageError, match="not a usable"):
        addr.pick("fd00:1::/64", set(), "10.0.0.5")
    v4, v6 = "10.0.0.0/24", "fd00:1::/64"
    with addr.Leases(str(tmp_path), "br").locked() as db:
        kept = db.lease("a", v4, None, persist=True, subnet6=v6)
        assert kept["ip6"] == "fd00:1::2"
        other = db.lease("b", v4, None, persist=False, subnet6=v6, want6="fd00:1::9")
        assert other["ip6"] == "fd00:1::9"
        with pytest.raises(UsageError, match="taken"):
            db.lease("c", v4, None, persist=False, subnet6=v6, want6="fd00:1::9")
        db.release("a")
        db.release("b")
        db.save()
    with addr.Leases(str(tmp_path), "br").locked() as db:
        assert db.lease("d", v4, None, persist=False, subnet6=v6)["ip6"] == "fd00:1::3"
        assert db.lease("a", v4, None, persist=True, subnet6=v6) == kept
        # a lease made without IPv6 (before the guests had it) gets an address added
        db.lease("e", v4, None, persist=True)
        assert "ip6" not in db.leases["e"]
        assert db.lease("e", v4, None, persist=True, subnet6=v6)["ip6"] == "fd00:1::4"


def test_ruleset_publishes_on_ipv4_and_ipv6() -> None:
    rules = nft.ruleset(
        "bt", "btbr0", "10.9.0.0/24", [("10.9.0.2", 8080, 80, "tcp"), ("fd00:9::2", 8080, 80, "tcp")],
        subnet6="fd00:9::/64",
    )  # fmt: skip
    items = [i["add"] for i in rules["nftables"]]
    dnat = [e["dnat"] for i in items if "rule" in i for e in i["rule"]["expr"] if "dnat" in e]
    assert {(d["family"], d["addr"]) for d in dnat} == {("ip", "10.9.0.2"), ("ip6", "fd00:9::2")}
    masq = [i["rule"] for i in items if "rule" in i and i["rule"].get("comment") == "guests out"]
    assert [r["expr"][0]["match"]["left"]["payload"]["protocol"] for r in masq] == ["ip", "ip6"]
    # ::1 is never DNAT'ed (it cannot leave the loopback device)
    v6rules = [
        i["rule"]
        for i in items
        if "rule" in i and any(e.get("dnat", {}).get("family") == "ip6" for e in i["rule"]["expr"])
    ]
    assert all(any(e.get("match", {}).get("right") == "::1" for e in r["expr"]) for r in v6rules)


def test_masquerade_leaves_the_hosts_own_addresses_alone() -> None:
    """The bridge guests' traffic out is masqueraded, not the host's own from an address in the
    subnet (an ip: guest's on the bridge: its egress filter dropped the rewritten packets)."""
    rules = nft.ruleset("bt", "btbr0", "10.9.0.0/24", [], subnet6="fd00:9::/64")
    masq = [
        i["add"]["rule"] for i in rules["nftables"] if i["add"].get("rule", {}).get("comment") == "guests out"
    ]
    assert len(masq) == 2
    for r in masq:
        fib = [e["match"] for e in r["expr"] if "fib" in e.get("match", {}).get("left", {})]
        assert fib == [
            {"op": "!=", "left": {"fib": {"result": "type", "flags": ["saddr"]}}, "right": "local"}
        ]
        assert "masquerade" in r["expr"][-1]


def test_u32_keys_for_ipv6() -> None:
    assert htb._keys6("fd00:9::2", htb.SRC6_OFFSET) == [
        "0xfd000009/0xffffffff+8",
        "0x00000000/0xffffffff+12",
        "0x00000000/0xffffffff+16",
        "0x00000002/0xffffffff+20",
    ]
