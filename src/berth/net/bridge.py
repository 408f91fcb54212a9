"""The host bridge the guests' veths are plugged into (pyroute2, imported by the caller)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Collection
from typing import Any

from berth.errors import NetworkError, UsageError

AF_INET, AF_INET6 = 2, 10
IFA_F_NODAD = 0x02


#: ``/sys/class/net/DEV/addr_assign_type`` of a MAC set by hand (NET_ADDR_SET): a bridge with one
#: keeps it; any other bridge takes the lowest MAC of its ports, and changes it as ports come and go.
NET_ADDR_SET = 3


def mac_for(name: str) -> str:
    """The MAC of the bridge berth makes named ``name``: locally administered, unicast, from a
    hash of the name (a bridge made again has the one its guests have cached).  Fixed, because a
    bridge without a MAC of its own takes its lowest port's: a guest's veth added or removed
    changed it, and the running guests' neighbour entries for their gateway then pointed to a MAC
    the bridge no longer had until they resolved it again.  First octet ``06``: never a guest's
    (``02:42:…``, :func:`berth.net.veth.mac_for`) nor Docker's."""
    digest = hashlib.sha256(f"berth-bridge:{name}".encode()).digest()
    return "06:" + ":".join(f"{b:02x}" for b in digest[:5])


def fix_mac(ipr: Any, idx: int, name: str) -> None:
    """Give berth's bridge ``name`` (index ``idx``) its own MAC (:func:`mac_for`) if it has none set
    (one berth made before the bridges had theirs); a host's own bridge is never passed here."""
    try:
        with open(f"/sys/class/net/{name}/addr_assign_type", encoding="ascii") as f:
            if int(f.read()) == NET_ADDR_SET:
                return
    except (OSError, ValueError):
        return
    ipr.link("set", index=idx, address=mac_for(name))


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def check_link(ipr: Any, name: str) -> None:
    """Refuse a bridge name the host gives to a link that is not a bridge (``eth0``, ``lo``), in
    one line naming the field: before anything is made for the guest."""
    idx = link_index(ipr, name)
    kind = kind_of(ipr, idx) if idx is not None else "bridge"
    if kind != "bridge":
        raise UsageError(
            "bridge", f"{name} is {'a ' + kind if kind else 'a'} link of the host (index {idx}), not a bridge"
        )


# Route types that lead to no link: blackhole, unreachable, prohibit (RTN_* of rtnetlink).
_NOT_A_LINK = frozenset({6, 7, 8})


def check_subnet_free(ipr: Any, subnet: str, bridge: str, ours: Collection[str] = ()) -> None:
    """Refuse a subnet (IPv4 or IPv6) that overlaps a route of the host that is not the bridge's
    own, or an address of the host: on another link, or on the bridge unless it is berth's
    (``ours``: ``ADDR/LEN`` berth added there) or the subnet's own gateway (berth adds nothing
    then).  Else berth's gateway address could take over a network the host is on (its LAN,
    its default gateway's address)."""
    net = ipaddress.ip_network(subnet)
    field = "subnet6" if net.version == 6 else "subnet"
    own = link_index(ipr, bridge)
    family = AF_INET6 if net.version == 6 else AF_INET
    for route in ipr.get_routes(family=family, table=254):
        dst = route.get_attr("RTA_DST")
        if dst is None:
            continue  # the default route overlaps everything; it is not a conflict
        other = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
        if other.is_link_local or other.is_multicast:
            continue
        if other.prefixlen < net.prefixlen and (
            route.get_attr("RTA_GATEWAY") is not None or route["type"] in _NOT_A_LINK
        ):
            # less specific and through a gateway (a VPN's 0.0.0.0/1, 128.0.0.0/1, fc00::/7),
            # or a blackhole: the bridge's own route wins for the subnet, as over the default
            # route; only a network the host is on directly (or a narrower route) conflicts (R14)
            continue
        if other.overlaps(net) and (own is None or route.get_attr("RTA_OIF") != own):
            raise UsageError(field, f"{subnet} overlaps the host's route to {other}")
    gateway = f"{net.network_address + 1}/{net.prefixlen}"
    mine = {str(ipaddress.ip_interface(a)) for a in ours} | {gateway}
    for a in ipr.get_addr(family=family):
        iface = ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        if iface.is_link_local or not iface.network.overlaps(net):
            continue
        if a["index"] != own or (str(iface) not in mine and f"{iface.ip}/32" not in mine):
            raise UsageError(field, f"{subnet} overlaps the host's address {iface}")


def ensure(
    ipr: Any,
    name: str,
    subnet: str,
    mtu: int = 1500,
    subnet6: str | None = None,
    added: list[str] | None = None,
    ours: Collection[str] = (),
) -> int:
    """The bridge ``name`` with the subnets' gateway addresses, up; created if missing (with ``mtu``
    and its own MAC, :func:`mac_for`; an existing bridge keeps its MTU, see :func:`mtu_of`, and
    its MAC).  Its index.  A link of that name that is not a bridge is refused, in one line
    naming it.  The gateway addresses it adds are appended to ``added`` (``ADDR/LEN``): those,
    and only those, are berth's to remove from a host's bridge.  The subnets must not overlap
    the host's routes or addresses (:func:`check_subnet_free`, ``ours`` the addresses berth put
    on the bridge), whether the bridge is made here or was there already."""
    idx = link_index(ipr, name)
    check_link(ipr, name)
    check_subnet_free(ipr, subnet, name, ours)
    if subnet6 is not None:
        check_subnet_free(ipr, subnet6, name, ours)
    if idx is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=mac_for(name))
        except Exception as exc:
            code = getattr(exc, "code", None)
            why = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
            raise NetworkError(f"bridge {name}: cannot create: {why}") from None
        idx = link_index(ipr, name)
        if idx is None:
            raise NetworkError(f"bridge {name}: vanished after creation")
        refuse_ra(name)  # before it is up: no guest's advertisement is ever taken
    net = ipaddress.IPv4Network(subnet)
    gw = str(net.network_address + 1)
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
    if gw not in have:
        ipr.addr("add", index=idx, address=gw, prefixlen=net.prefixlen)
        if added is not None:
            added.append(f"{gw}/{net.prefixlen}")
    if subnet6 is not None:
        net6 = ipaddress.IPv6Network(subnet6)
        gw6 = str(net6.network_address + 1)
        if gw6 not in {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=AF_INET6)}:
            # no duplicate address detection: the address is berth's, usable at once
            try:
                ipr.addr("add", index=idx, address=gw6, prefixlen=net6.prefixlen, flags=IFA_F_NODAD)
            except Exception as exc:
                raise NetworkError(
                    f"bridge {name}: cannot add {gw6}/{net6.prefixlen}: {exc} (BERTH_SUBNET6=none: no IPv6)"
                ) from None
            if added is not None:
                added.append(f"{gw6}/{net6.prefixlen}")
    ipr.link("set", index=idx, state="up")
    _sysctl(name, "route_localnet", "1")  # published ports reachable from the host via 127.0.0.1
    return idx


def kind_of(ipr: Any, idx: int) -> str | None:
    """A link's kind (``bridge``, ``veth``…; None for a physical one)."""
    links = ipr.get_links(idx)
    info = links[0].get_attr("IFLA_LINKINFO") if links else None
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def mtu_of(ipr: Any, idx: int) -> int:
    """A link's MTU.  The veths take the bridge's: a frame the bridge passes to a port with a
    smaller MTU is dropped, and an MTU set on the bridge no longer follows its ports."""
    (link,) = ipr.get_links(idx)
    return int(link.get_attr("IFLA_MTU"))


def remove_addrs(ipr: Any, name: str, addrs: list[str]) -> None:
    """Take the addresses ``ADDR/LEN`` (those :func:`ensure` added) off bridge ``name`` (gone ones
    are skipped)."""
    idx = link_index(ipr, name)
    if idx is None:
        return
    for a in addrs:
        iface = ipaddress.ip_interface(a)
        try:
            ipr.addr(
                "del",
                index=idx,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                family=AF_INET6 if iface.version == 6 else AF_INET,
            )
        except Exception as exc:
            if "Cannot assign" not in str(exc) and getattr(exc, "code", None) != 99:
                raise


def remove(ipr: Any, name: str) -> None:
    idx = link_index(ipr, name)
    if idx is not None:
        try:
            ipr.link("del", index=idx)
        except Exception as exc:
            if "No such device" not in str(exc):
                raise


def ports(ipr: Any, name: str) -> list[str]:
    """Names of the links plugged into the bridge."""
    idx = link_index(ipr, name)
    if idx is None:
        return []
    return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links() if link.get_attr("IFLA_MASTER") == idx]


#: Per-device IPv6 settings of a bridge berth made: the host takes no router advertisement, no
#: address autoconfiguration and no redirect from the guests (any guest with CAP_NET_RAW can send
#: them): else a guest's advertisement gives the host addresses, routes, a default route.
NO_RA = (("accept_ra", "0"), ("autoconf", "0"), ("accept_redirects", "0"))


def refuse_ra(name: str) -> None:
    """Set :data:`NO_RA` on berth's bridge ``name`` (never on a host's own bridge: its router
    advertisements are the host's business; nothing when the host has no IPv6)."""
    for key, value in NO_RA:
        path = f"/proc/sys/net/ipv6/conf/{name}/{key}"
        if os.path.exists(path):
            with open(path, "w", encoding="ascii") as f:
                f.write(value)


def _sysctl(dev: str, key: str, value: str) -> None:
    """A per-device IPv4 sysctl of a device berth made (never a host-wide one)."""
    with open(f"/proc/sys/net/ipv4/conf/{dev}/{key}", "w", encoding="ascii") as f:
        f.write(value)
