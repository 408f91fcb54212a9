"""A guest's network request as plain data, parsed and checked without touching the host.

Everything here is pure: the CLI turns its flags into :class:`NetOptions` with :func:`parse`,
and bad input is a one-line :class:`~berth.errors.UsageError` before anything is created.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field, replace

from berth.errors import UsageError
from berth.policy.htb import DEFAULT_NET_SHARE, MAX_NET_SHARE
from berth.policy.units import format_rate, parse_rate

MODES = ("none", "host", "bridge", "ip:ADDR[,ADDR…]")
DEFAULT_PREFIX = "berth"
DEFAULT_SUBNET = "10.87.0.0/16"
DEFAULT_LINK_RATE = "10gbit"
#: The bridge's and veths' MTU.  Loopback's is 65536; a 64 KiB path between guests and the host
#: halves the per-packet work against 1500 (bench/net.py).  Traffic NAT'ed off the machine leaves
#: by the host's real NIC, whose own MTU (fragmentation, PMTU) applies there.
DEFAULT_MTU = 65535
MIN_MTU = 1280  # IPv6's minimum: the guests also get IPv6 addresses
IFNAMSIZ = 15


@dataclass(frozen=True, slots=True)
class Publish:
    """``-p HOST_PORT:GUEST_PORT[/tcp|udp]``."""

    host_port: int
    guest_port: int
    proto: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_port}:{self.guest_port}/{self.proto}"


@dataclass(frozen=True, slots=True)
class NetOptions:
    """One guest's network: mode, addresses, published ports, isolation and bandwidth, and where
    the host objects go (name prefix, bridge, subnet, nft table)."""

    mode: str = "none"
    ip: str | None = None  # bridge mode: the IPv4 address asked for (--ip)
    ip6: str | None = None  # bridge mode: the IPv6 address asked for (--ip)
    addrs: tuple[str, ...] = ()  # ip: mode: the guest's own addresses
    publish: tuple[Publish, ...] = ()
    isolate: bool = False
    rate_bps: int | None = None
    ceil_bps: int | None = None
    share: int | None = None
    prefix: str = DEFAULT_PREFIX
    bridge: str = f"{DEFAULT_PREFIX}0"
    subnet: str = DEFAULT_SUBNET
    subnet6: str | None = None  # the bridge's IPv6 subnet (ULA); None: the guests get no IPv6
    nft_table: str = DEFAULT_PREFIX
    link_rate_bps: int = 10_000_000_000
    mtu: int = DEFAULT_MTU
    persist: bool = False  # keep the address (and class index) for the guest's next start
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def shaped(self) -> bool:
        """Whether the guest asked for any bandwidth setting (only then is HTB set up)."""
        return self.rate_bps is not None or self.ceil_bps is not None or self.share is not None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The bridge's address: the subnet's first host."""
        return str(self.network.network_address + 1)

    @property
    def gateway6(self) -> str | None:
        """The bridge's IPv6 address: the IPv6 subnet's first host."""
        if self.subnet6 is None:
            return None
        return str(ipaddress.IPv6Network(self.subnet6).network_address + 1)

    @property
    def ip_flag(self) -> str | None:
        """``--ip`` as given back to the parser (``ADDR``, ``ADDR6`` or ``ADDR,ADDR6``)."""
        return ",".join(a for a in (self.ip, self.ip6) if a) or None

    @property
    def ifb(self) -> str:
        """The IFB device that shapes what the guests send (one per bridge)."""
        return f"{self.bridge}ifb"

    def veth(self, index: int) -> str:
        """The host end of veth pair ``index`` (``index`` unique in the store, over all its bridges:
        :func:`berth.net.guest.setup` picks it; a guest's recorded name is what counts)."""
        return f"{self.prefix}v{index}"


def parse_publish(text: str) -> Publish:
    """``8080:80``, ``8080:80/tcp``, ``5353:53/udp``: published on every local address of the host
    (127.0.0.1 too), never on ``::1``.  ``ADDR:HOST_PORT:GUEST_PORT`` is refused, in words: a
    connection to ``::1`` cannot be NAT'ed to a guest (IPv6 has no ``route_localnet``: the
    guest's reply, turned back to ``::1`` as it arrives on the bridge, is dropped: the kernel
    takes ``::1`` on the loopback device only), so ``[::1]:H:G`` would be a port nothing ever answers."""
    ports, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise UsageError("publish", f"{text!r}: protocol must be tcp or udp")
    if ports.count(":") > 1 or ports.startswith("["):
        _refuse_host_address(text, ports)
    host, sep, guest = ports.partition(":")
    if not sep:
        raise UsageError("publish", f"{text!r}: expected HOST_PORT:GUEST_PORT[/tcp|udp]")
    nums = []
    for part in (host, guest):
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise UsageError("publish", f"{text!r}: {part!r} is not a port from 1 to 65535")
        nums.append(int(part))
    return Publish(nums[0], nums[1], proto)


def _refuse_host_address(text: str, ports: str) -> None:
    """``-p ADDR:HOST_PORT:GUEST_PORT`` (``[ADDR6]:…`` for IPv6): refused, in one line saying why."""
    addr = ports[1:].partition("]")[0] if ports.startswith("[") else ports.rsplit(":", 2)[0]
    try:
        loopback6 = ipaddress.ip_address(addr) == ipaddress.IPv6Address("::1")
    except ValueError:
        loopback6 = False
    if loopback6:
        raise UsageError(
            "publish",
            f"{text!r}: ::1 cannot be published (IPv6 keeps ::1 on the loopback device: no guest can "
            "answer there); HOST_PORT:GUEST_PORT publishes on 127.0.0.1 and the host's other addresses",
        )
    raise UsageError(
        "publish",
        f"{text!r}: a host address is not supported: HOST_PORT:GUEST_PORT publishes on every address "
        "of the host (127.0.0.1 too, not ::1)",
    )


def _ipv4(field_name: str, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise UsageError(field_name, f"{text!r} is not an IPv4 address") from None


def default_subnet6(bridge: str) -> str:
    """A unique local /64 (RFC 4193) for ``bridge``: ``fd`` and a 40-bit global ID from a hash of
    the bridge's name, subnet 0: the same name always gets the same subnet."""
    gid = hashlib.sha256(f"berth:{bridge}".encode()).digest()[:5]
    return str(ipaddress.IPv6Network((b"\xfd" + gid + bytes(10), 64)))


def parse_subnet6(text: str) -> str | None:
    """``BERTH_SUBNET6``: an IPv6 subnet from /48 to /120, or ``none`` (no IPv6 for the guests)."""
    if text.strip().lower() == "none":
        return None
    try:
        net = ipaddress.IPv6Network(text.strip(), strict=True)
    except ValueError as exc:
        raise UsageError("subnet6", f"{text!r}: {exc}") from None
    if not 48 <= net.prefixlen <= 120:
        raise UsageError("subnet6", f"{text!r}: the prefix must be from /48 to /120")
    if net.is_multicast or net.is_loopback or net.is_link_local or net.network_address.is_unspecified:
        raise UsageError("subnet6", f"{text!r} cannot be a guests' subnet")
    return str(net)


def parse_ip(text: str, subnet: str, subnet6: str | None) -> tuple[str | None, str | None]:
    """``--ip``: an IPv4 address, an IPv6 address or both (``ADDR,ADDR6``), each a usable host of
    its subnet.  Returns (IPv4, IPv6)."""
    addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for part in text.split(","):
        try:
            addrs.append(ipaddress.ip_address(part.strip()))
        except ValueError:
            raise UsageError("ip", f"{part.strip()!r} is not an IPv4 or IPv6 address") from None
    for version in (4, 6):
        if sum(a.version == version for a in addrs) > 1:
            raise UsageError("ip", f"{text!r}: more than one IPv{version} address")
    got: dict[int, str] = {}
    for addr in addrs:
        if addr.version == 4:
            network: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(subnet)
            reserved = {network.network_address, network.broadcast_address, network.network_address + 1}
        else:
            if subnet6 is None:
                raise UsageError("ip", f"{addr} is IPv6 but the guests have no IPv6 (BERTH_SUBNET6=none)")
            network = ipaddress.IPv6Network(subnet6)
            reserved = {network.network_address, network.network_address + 1}
        if addr not in network:
            raise UsageError("ip", f"{addr} is outside the subnet {network}")
        if addr in reserved:
            raise UsageError("ip", f"{addr} is reserved in {network} (network, gateway or broadcast)")
        got[addr.version] = str(addr)
    return got.get(4), got.get(6)


#: Networks no guests' subnet may overlap ("this network", loopback, link-local, multicast, reserved).
NOT_A_SUBNET = tuple(
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
)
MIN_SUBNET_PREFIX = 8  # the largest guests' subnet: a /8


def parse_subnet(text: str) -> str:
    """``--subnet``/``BERTH_SUBNET``: an IPv4 network from /8 to /29 that is none of
    :data:`NOT_A_SUBNET` (whether it is free on the host is :func:`berth.net.bridge.check_subnet_free`'s)."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise UsageError("subnet", f"{text!r}: {exc}") from None
    if net.prefixlen > 29:
        raise UsageError("subnet", f"{text!r}: too small (at most /29)")
    if net.prefixlen < MIN_SUBNET_PREFIX:
        raise UsageError("subnet", f"{text!r}: too large (at least /{MIN_SUBNET_PREFIX})")
    for bad in NOT_A_SUBNET:
        if net.overlaps(bad):
            raise UsageError("subnet", f"{text!r} overlaps {bad}, which cannot be a guests' subnet")
    return str(net)


def parse_mtu(text: str) -> int:
    """``BERTH_NET_MTU``: a whole number from 1280 (IPv6's minimum) to 65535."""
    t = text.strip()
    if not t.isdigit() or not MIN_MTU <= int(t) <= 65535:
        raise UsageError("BERTH_NET_MTU", f"{text!r} is not an MTU from {MIN_MTU} to 65535")
    return int(t)


def check_name(field_name: str, name: str, longest: str) -> str:
    """A Linux interface name or nft table name that still fits once berth adds its suffixes."""
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise UsageError(field_name, f"{name!r}: use letters, digits, '-' and '_'")
    if len(longest) > IFNAMSIZ:
        raise UsageError(field_name, f"{name!r} is too long ({longest!r} would exceed {IFNAMSIZ} characters)")
    return name


def parse(
    mode: str = "none",
    *,
    ip: str | None = None,
    publish: list[str] | tuple[str, ...] = (),
    isolate: bool = False,
    rate: str | None = None,
    ceil: str | None = None,
    share: str | None = None,
    bridge: str | None = None,
    subnet: str | None = None,
    env: dict[str, str] | None = None,
) -> NetOptions:
    """Check the flags of one guest; the defaults come from ``env`` (BERTH_NET_PREFIX,
    BERTH_BRIDGE, BERTH_SUBNET, BERTH_SUBNET6, BERTH_NFT_TABLE, BERTH_NET_LINK_RATE, BERTH_NET_MTU)."""
    env = dict(os.environ) if env is None else env
    prefix = check_name("BERTH_NET_PREFIX", env.get("BERTH_NET_PREFIX") or DEFAULT_PREFIX, "x" * 0)
    bridge = bridge or env.get("BERTH_BRIDGE") or f"{prefix}0"
    check_name("bridge", bridge, f"{bridge}ifb")
    check_name("BERTH_NET_PREFIX", prefix, f"{prefix}v99999g")
    table = check_name("BERTH_NFT_TABLE", env.get("BERTH_NFT_TABLE") or DEFAULT_PREFIX, "")
    net = parse_subnet(subnet or env.get("BERTH_SUBNET") or DEFAULT_SUBNET)
    link = parse_rate("BERTH_NET_LINK_RATE", env.get("BERTH_NET_LINK_RATE") or DEFAULT_LINK_RATE)
    mtu = parse_mtu(env.get("BERTH_NET_MTU") or str(DEFAULT_MTU))
    net6 = parse_subnet6(env.get("BERTH_SUBNET6") or default_subnet6(bridge))
    o = NetOptions(
        prefix=prefix, bridge=bridge, subnet=net, subnet6=net6, nft_table=table, link_rate_bps=link, mtu=mtu
    )

    addrs: tuple[str, ...] = ()
    if mode.startswith("ip:"):
        raw = [a for a in mode[3:].split(",") if a.strip()]
        if not raw:
            raise UsageError("net", "ip: needs at least one address (ip:ADDR[,ADDR…])")
        parsed = []
        for a in raw:
            addr = _ipv4("net", a)
            if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
                raise UsageError("net", f"{a!r} cannot be a guest's own address")
            parsed.append(str(addr))
        addrs = tuple(dict.fromkeys(parsed))
        mode = "ip"
    elif mode not in ("none", "host", "bridge"):
        raise UsageError("net", f"unknown mode {mode!r} ({', '.join(MODES)})")

    rate_bps = parse_rate("net-rate", rate) if rate is not None else None
    ceil_bps = parse_rate("net-ceil", ceil) if ceil is not None else None
    if rate_bps is not None and ceil_bps is not None and ceil_bps < rate_bps:
        raise UsageError("net-ceil", f"{format_rate(ceil_bps)} is below --net-rate {format_rate(rate_bps)}")
    share_n = None
    if share is not None:
        if not share.isdigit() or not 1 <= int(share) <= MAX_NET_SHARE:
            raise UsageError("net-share", f"{share!r} is not a whole number from 1 to {MAX_NET_SHARE}")
        share_n = int(share)

    ports = tuple(parse_publish(p) for p in publish)
    seen: set[tuple[int, str]] = set()
    for p in ports:
        if (p.host_port, p.proto) in seen:
            raise UsageError("publish", f"host port {p.host_port}/{p.proto} given twice")
        seen.add((p.host_port, p.proto))

    want = want6 = None
    if ip is not None:
        want, want6 = parse_ip(ip, net, o.subnet6)

    if mode != "bridge":
        for flag, given in (
            ("ip", ip is not None),
            ("publish", bool(ports)),
            ("net-isolate", isolate),
        ):
            if given:
                raise UsageError(flag, f"needs --net bridge (the mode is {mode!r})")
    if mode not in ("bridge",) and (rate_bps or ceil_bps or share_n):
        raise UsageError("net-rate", f"bandwidth settings need --net bridge (the mode is {mode!r})")
    return replace(
        o,
        mode=mode,
        ip=want,
        ip6=want6,
        addrs=addrs,
        publish=ports,
        isolate=isolate,
        rate_bps=rate_bps,
        ceil_bps=ceil_bps,
        share=share_n if share_n is not None else (DEFAULT_NET_SHARE if (rate_bps or ceil_bps) else None),
    )
