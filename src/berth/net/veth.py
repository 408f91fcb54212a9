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


class NotCreated(NetworkError):
    """The pair could not be made (nothing was: whatever holds the name is not the caller's)."""


def _errno_text(exc: BaseException) -> str:
    """``File exists`` rather than pyroute2's ``(17, 'File exists')``."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    return str(exc) or type(exc).__name__


def holder(ipr: Any, name: str) -> str | None:
    """What holds the link ``name`` on the host, in words (None: no such link)."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        return None
    try:
        (link,) = ipr.get_links(found[0])
    except Exception:
        return f"link {name} (index {found[0]})"
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    what = f"a {kind} link" if kind else "a link"
    master = link.get_attr("IFLA_MASTER")
    if master:
        mlinks = ipr.get_links(master)
        mname = mlinks[0].get_attr("IFLA_IFNAME") if mlinks else str(master)
        what += f" on bridge {mname}"
    return f"{what} (index {found[0]})"


def mac_for(ipv4: str) -> str:
    """The guest end's MAC for address ``ipv4``: locally administered ``02:42:a:b:c:d`` (as Docker
    does), the same at each start of the guest, so the host's and the other guests' neighbour
    entries for the address stay right across a restart (a random one left them pointing to the
    old MAC for up to ~30 s)."""
    return "02:42:" + ":".join(f"{int(o):02x}" for o in ipv4.split("."))


def create(
    ipr: Any,
    host: str,
    bridge_idx: int,
    pid: int | None,
    *,
    isolate: bool,
    mtu: int = 1500,
    mac: str | None = None,
) -> None:
    """Make the pair with ``mtu`` on both ends (the peer with ``mac`` when given), plug the host
    end into the bridge and move the peer into ``pid``'s netns (``None``: the peer, ``<host>g``,
    stays here for CRIU to move into the network namespace it restores:
    :func:`berth.net.guest.setup`'s ``handoff``; CRIU gives it the MAC it recorded).

    :class:`NotCreated` when the pair could not be made, naming what holds a taken name."""
    peer = f"{host}g"
    try:
        ipr.link("add", ifname=host, kind="veth", peer=peer)
    except Exception as exc:
        for name in (host, peer):
            held = holder(ipr, name)
            if held is not None:
                raise NotCreated(f"veth {name}: cannot create: the name is taken by {held}") from None
        raise NotCreated(f"veth {host}: cannot create: {_errno_text(exc)}") from None
    (hidx,) = ipr.link_lookup(ifname=host)
    (pidx,) = ipr.link_lookup(ifname=peer)
    ipr.link("set", index=hidx, mtu=mtu)
    ipr.link("set", index=pidx, mtu=mtu)
    if mac is not None:
        ipr.link("set", index=pidx, address=mac)
    if pid is not None:
        ipr.link("set", index=pidx, net_ns_pid=pid)
    ipr.link("set", index=hidx, master=bridge_idx)
    if isolate:
        ipr.brport("set", index=hidx, isolated=1)
    ipr.link("set", index=hidx, state="up")


RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_DONE, NLMSG_ERROR = 3, 2
IFLA_IFNAME, IFLA_LINK = 3, 5


def _link_peers() -> dict[int, str]:
    """{the peer's ifindex (IFLA_LINK): name} for this network namespace's links, by one
    RTM_GETLINK dump (a bare netlink socket: pyroute2's import would cost ~0.3 s)."""
    import socket
    import struct

    out: dict[int, str] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as sk:
        req = struct.pack("=LHHLL", 32, RTM_GETLINK, 0x301, 1, 0) + struct.pack("=BxHiII", 0, 0, 0, 0, 0)
        sk.send(req)
        while True:
            data = sk.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=LH", data, off)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR or length < 16:
                    raise OSError("RTM_GETLINK failed")
                if kind == RTM_NEWLINK:
                    name, link = None, None
                    at = off + 32
                    while at + 4 <= off + length:
                        alen, atype = struct.unpack_from("=HH", data, at)
                        if alen < 4:
                            break
                        if atype == IFLA_IFNAME:
                            name = data[at + 4 : at + alen].split(b"\0", 1)[0].decode()
                        elif atype == IFLA_LINK:
                            (link,) = struct.unpack_from("=I", data, at + 4)
                        at += (alen + 3) & ~3
                    if name and link:
                        out[link] = name
                off += (length + 3) & ~3


def peer_name(pid: int, host: str) -> str | None:
    """The name, in ``pid``'s network namespace, of the peer of our veth end ``host`` (the
    guest's eth0, unless the guest renamed it); None if the pair is gone."""
    import socket

    try:
        index = socket.if_nametoindex(host)
    except OSError:
        return None
    r, w = os.pipe2(os.O_CLOEXEC)
    nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(r)
            ns.setns(nsfd, ns.Clone.NEWNET)
            os.write(w, (_link_peers().get(index) or "").encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(nsfd)
    name = os.read(r, 64).decode(errors="replace")
    os.close(r)
    _, status = os.waitpid(child, 0)
    return name if status == 0 and name else None


def remove(ipr: Any, host: str, *, bridge: str | None = None) -> None:
    """Delete the pair (its peer goes with it); nothing if it is gone already.  With ``bridge``,
    a link of that name plugged into another bridge is not ours (its name was given again after
    ours went with its guest's network namespace): it stays."""
    found = ipr.link_lookup(ifname=host)
    if found and bridge is not None:
        try:
            links = ipr.get_links(found[0])
        except Exception as exc:  # gone meanwhile: the kernel removes a pair with its netns
            if "No such device" not in str(exc):
                raise
            return
        master = links[0].get_attr("IFLA_MASTER") if links else None
        own = ipr.link_lookup(ifname=bridge)
        if master and master not in own:
            return
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
