"""A guest's network request as plain data, parsed and checked without touching the host.

Everything here is pure: the CLI turns its flags into :class:`NetOptions` with :func:`parse`,
and bad input is a one-line :class:`~berth.errors.UsageError` before anything is created.
"""

from __future__ import annotations

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
    ip: str | None = None  # bridge mode: the address asked for (--ip)
    addrs: tuple[str, ...] = ()  # ip: mode: the guest's own addresses
    publish: tuple[Publish, ...] = ()
    isolate: bool = False
    rate_bps: int | None = None
    ceil_bps: int | None = None
    share: int | None = None
    prefix: str = DEFAULT_PREFIX
    bridge: str = f"{DEFAULT_PREFIX}0"
    subnet: str = DEFAULT_SUBNET
    nft_table: str = DEFAULT_PREFIX
    link_rate_bps: int = 10_000_000_000
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
    def ifb(self) -> str:
        """The IFB device that shapes what the guests send (one per bridge)."""
        return f"{self.bridge}ifb"

    def veth(self, index: int) -> str:
        """The host end of guest ``index``'s veth pair."""
        return f"{self.prefix}v{index}"


def parse_publish(text: str) -> Publish:
    """``8080:80``, ``8080:80/tcp``, ``5353:53/udp``."""
    ports, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise UsageError("publish", f"{text!r}: protocol must be tcp or udp")
    host, sep, guest = ports.partition(":")
    if not sep:
        raise UsageError("publish", f"{text!r}: expected HOST_PORT:GUEST_PORT[/tcp|udp]")
    nums = []
    for part in (host, guest):
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise UsageError("publish", f"{text!r}: {part!r} is not a port from 1 to 65535")
        nums.append(int(part))
    return Publish(nums[0], nums[1], proto)


def _ipv4(field_name: str, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise UsageError(field_name, f"{text!r} is not an IPv4 address") from None


def parse_subnet(text: str) -> str:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise UsageError("subnet", f"{text!r}: {exc}") from None
    if net.prefixlen > 29:
        raise UsageError("subnet", f"{text!r}: too small (at most /29)")
    return str(net)


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
    BERTH_BRIDGE, BERTH_SUBNET, BERTH_NFT_TABLE, BERTH_NET_LINK_RATE)."""
    env = dict(os.environ) if env is None else env
    prefix = check_name("BERTH_NET_PREFIX", env.get("BERTH_NET_PREFIX") or DEFAULT_PREFIX, "x" * 0)
    bridge = bridge or env.get("BERTH_BRIDGE") or f"{prefix}0"
    check_name("bridge", bridge, f"{bridge}ifb")
    check_name("BERTH_NET_PREFIX", prefix, f"{prefix}v99999g")
    table = check_name("BERTH_NFT_TABLE", env.get("BERTH_NFT_TABLE") or DEFAULT_PREFIX, "")
    net = parse_subnet(subnet or env.get("BERTH_SUBNET") or DEFAULT_SUBNET)
    link = parse_rate("BERTH_NET_LINK_RATE", env.get("BERTH_NET_LINK_RATE") or DEFAULT_LINK_RATE)
    o = NetOptions(prefix=prefix, bridge=bridge, subnet=net, nft_table=table, link_rate_bps=link)

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

    want = None
    if ip is not None:
        addr = _ipv4("ip", ip)
        network = ipaddress.IPv4Network(net)
        if addr not in network:
            raise UsageError("ip", f"{ip} is outside the subnet {net}")
        if addr in (network.network_address, network.broadcast_address, network.network_address + 1):
            raise UsageError("ip", f"{ip} is reserved in {net} (network, gateway or broadcast)")
        want = str(addr)

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
        addrs=addrs,
        publish=ports,
        isolate=isolate,
        rate_bps=rate_bps,
        ceil_bps=ceil_bps,
        share=share_n if share_n is not None else (DEFAULT_NET_SHARE if (rate_bps or ceil_bps) else None),
    )
