"""A guest's veth pair: the host end on the bridge, the other end as ``eth0`` in the guest's netns.

What runs inside the guest's network namespace runs in a forked child (the caller never moves);
the child opens its own netlink socket there and reports a failure as one line on a pipe.
"""

from __future__ import annotations

import os
from typing import Any

from berth.errors import NetworkError
from berth.linux import ns

AF_INET6 = 10
IFA_F_NODAD = 0x02


def create(ipr: Any, host: str, bridge_idx: int, pid: int, *, isolate: bool, mtu: int = 1500) -> None:
    """Make the pair with ``mtu`` on both ends, plug the host end into the bridge and move the
    peer into ``pid``'s netns."""
    peer = f"{host}g"
    try:
        ipr.link("add", ifname=host, kind="veth", peer=peer)
    except Exception as exc:
        raise NetworkError(f"veth {host}: cannot create: {exc}") from None
    (hidx,) = ipr.link_lookup(ifname=host)
    (pidx,) = ipr.link_lookup(ifname=peer)
    ipr.link("set", index=hidx, mtu=mtu)
    ipr.link("set", index=pidx, mtu=mtu)
    ipr.link("set", index=pidx, net_ns_pid=pid)
    ipr.link("set", index=hidx, master=bridge_idx)
    if isolate:
        ipr.brport("set", index=hidx, isolated=1)
    ipr.link("set", index=hidx, state="up")


def remove(ipr: Any, host: str) -> None:
    """Delete the pair (its peer goes with it); nothing if it is gone already."""
    found = ipr.link_lookup(ifname=host)
    if found:
        try:
            ipr.link("del", index=found[0])
        except Exception as exc:
            if "No such device" not in str(exc):
                raise


def configure_guest(
    pid: int,
    peer: str,
    address: str,
    prefixlen: int,
    gateway: str,
    v6: tuple[str, int, str] | None = None,
) -> None:
    """Inside ``pid``'s netns: ``peer`` becomes eth0 with ``address``, lo and eth0 up, default route;
    with ``v6`` (address, prefix length, gateway) the same for IPv6, without duplicate address
    detection (the address is berth's to give: it works at once)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            ns.setns(nsfd, ns.Clone.NEWNET)
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                (idx,) = ipr.link_lookup(ifname=peer)
                ipr.link("set", index=idx, ifname="eth0")
                ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
                if v6 is not None:
                    # /proc/sys/net is the netns of the process that opens it: this child's, the guest's
                    with open("/proc/sys/net/ipv6/conf/eth0/accept_dad", "w", encoding="ascii") as f:
                        f.write("0")
                    ipr.addr("add", index=idx, address=v6[0], prefixlen=v6[1], flags=IFA_F_NODAD)
                ipr.link("set", index=idx, state="up")
                lo = ipr.link_lookup(ifname="lo")
                if lo:
                    ipr.link("set", index=lo[0], state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
                if v6 is not None:
                    ipr.route("add", dst="::/0", gateway=v6[2], family=AF_INET6)
            os._exit(0)
        except BaseException as exc:
            try:
                os.write(w, f"{type(exc).__name__}: {exc}".encode()[:4000])
            finally:
                os._exit(1)
    os.close(w)
    os.close(nsfd)
    msg = b""
    while chunk := os.read(r, 4096):
        msg += chunk
    os.close(r)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise NetworkError(f"guest eth0 ({address}): {msg.decode(errors='replace') or 'configuring failed'}")
