"""The MAC berth gives the bridges it makes, and the nft ops that rebuild other bridges' chains."""

from __future__ import annotations

from berth.net import bridge, nft


def test_bridge_mac_is_stable_local_unicast_and_not_a_guests() -> None:
    mac = bridge.mac_for("berth0")
    assert mac == bridge.mac_for("berth0")  # a bridge made again has the MAC its guests cached
    assert mac != bridge.mac_for("berth1")
    octets = [int(o, 16) for o in mac.split(":")]
    assert len(octets) == 6 and all(0 <= o <= 255 for o in octets)
    assert octets[0] & 0x02 and not octets[0] & 0x01  # locally administered, unicast
    assert not mac.startswith("02:42:")  # never a guest's eth0 (veth.mac_for) nor Docker's


def test_apply_rebuilds_the_other_bridges_in_the_same_transaction() -> None:
    mine = nft.ruleset("t", "brA", "10.1.0.0/24", [])
    other = nft.ruleset("t", "brB", "10.2.0.0/24", [("10.2.0.2", 8080, 80, "tcp")])
    ops = nft._rebuild_ops("t", {"brB": other})
    deleted = [o["delete"]["chain"]["name"] for o in ops if "delete" in o and "chain" in o["delete"]]
    assert set(deleted) == {f"{k}-brB" for k in nft.CHAINS} | set(nft.CHAINS)  # the old ones too
    assert ops[-len(other["nftables"]) :] == other["nftables"]  # then its rules, after the deletes
    assert nft._rebuild_ops("t", None) == [] and mine["nftables"]
