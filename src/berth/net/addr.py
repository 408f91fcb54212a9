"""Addresses: a guest's IPv4 address (and IPv6 address) and class index on a bridge, allocated under a lock and kept
in the store (``<store>/net/<bridge>.json``) so a guest gets the same address each time it starts.

The file holds ``leases`` (name → address and index, for life when the guest is persistent) and
``active`` (name → what a running guest has on the host: veth, ports, bandwidth, pid), which is
also what :func:`berth.net.gc` reads after a crash.  The allocation itself (:func:`pick`) is pure.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from typing import Any

from berth.errors import UsageError
from berth.policy import htb as htb_policy


def pick(subnet: str, taken: set[str], want: str | None = None) -> str:
    """The address for a guest (IPv4 or IPv6, after the subnet): ``want`` if free, else the lowest
    free host after the gateway (the subnet's first host)."""
    net = ipaddress.ip_network(subnet)
    gateway = net.network_address + 1
    if want is not None:
        addr = ipaddress.ip_address(want)
        reserved = {net.network_address, gateway}
        if net.version == 4:
            reserved.add(net.broadcast_address)
        if addr.version != net.version or addr not in net or addr in reserved:
            raise UsageError("ip", f"{want} is not a usable address in {subnet}")
        if str(addr) in taken:
            raise UsageError("ip", f"{want} is taken by another guest")
        return str(addr)
    for host in net.hosts():
        if host != gateway and str(host) not in taken:
            return str(host)
    raise UsageError("subnet6" if net.version == 6 else "subnet", f"no free address left in {subnet}")


#: The highest guest index on one bridge: a guest's index gives its HTB class minor and the
#: priorities of its filters (berth.policy.htb.MAX_INDEX).
MAX_INDEX = htb_policy.MAX_INDEX


def pick_index(taken: set[int]) -> int:
    """The lowest index no other guest holds (veth name and HTB class minor)."""
    i = 0
    while i in taken:
        i += 1
    if i > MAX_INDEX:
        raise UsageError(
            "bridge", f"all {MAX_INDEX + 1} guest places on this bridge are taken (use another bridge)"
        )
    return i


class Leases:
    """The allocation file of one bridge, open under an exclusive lock (use as a context manager)."""

    def __init__(self, store: str, bridge: str) -> None:
        self.dir = os.path.join(store, "net")
        self.path = os.path.join(self.dir, f"{bridge}.json")
        self.data: dict[str, Any] = {"leases": {}, "active": {}}

    @contextlib.contextmanager
    def locked(self) -> Iterator[Leases]:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.data = json.load(f)
            except FileNotFoundError:
                self.data = {"leases": {}, "active": {}}
            yield self
        finally:
            os.close(fd)

    def save(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    @property
    def leases(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("leases", {})

    @property
    def active(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("active", {})

    def taken_addrs(self, but: str | None = None, key: str = "ip") -> set[str]:
        """The addresses guests other than ``but`` hold on the bridge: the leases' (``key``: ``ip``
        or ``ip6``) and, for IPv4, the running ``ip:`` guests' own, which the host has (berth put
        them on the bridge when it lacked them): a bridge guest given one would share it."""
        out = {v[key] for k, v in self.leases.items() if k != but and v.get(key)}
        if key == "ip":
            out |= {
                a
                for k, r in self.active.items()
                if k != but and r.get("mode") == "ip"
                for a in r.get("addrs") or []
            }
        return out

    def taken_indexes(self, but: str | None = None) -> set[int]:
        return {int(v["index"]) for k, v in self.leases.items() if k != but and "index" in v}

    def lease(
        self,
        name: str,
        subnet: str,
        want: str | None,
        *,
        persist: bool,
        subnet6: str | None = None,
        want6: str | None = None,
    ) -> dict[str, Any]:
        """The guest's lease (made now, or the one it kept), with ``want`` honoured or refused; with
        ``subnet6`` also an IPv6 address (``ip6``, ``want6`` or the lowest free), added to a lease
        made before the guest had one."""
        old = self.leases.get(name)
        if old is not None and old.get("subnet") == subnet and (want is None or want == old["ip"]):
            old["persist"] = old.get("persist", False) or persist
            lease = old
        else:
            ip = pick(subnet, self.taken_addrs(but=name), want)
            idx = old["index"] if old is not None else pick_index(self.taken_indexes(but=name))
            lease = {"ip": ip, "index": idx, "subnet": subnet, "persist": persist}
            if old is not None and old.get("subnet6"):
                lease.update(ip6=old["ip6"], subnet6=old["subnet6"])
        if subnet6 is None:
            lease.pop("ip6", None)
            lease.pop("subnet6", None)
        elif not (lease.get("subnet6") == subnet6 and (want6 is None or want6 == lease.get("ip6"))):
            lease["ip6"] = pick(subnet6, self.taken_addrs(but=name, key="ip6"), want6)
            lease["subnet6"] = subnet6
        self.leases[name] = lease
        return lease

    def release(self, name: str) -> None:
        """Forget a lease unless the guest keeps it across restarts."""
        lease = self.leases.get(name)
        if lease is not None and not lease.get("persist"):
            del self.leases[name]

    def published(self, but: str | None = None) -> dict[tuple[int, str], str]:
        """(host port, proto) → the running guest that publishes it."""
        out = {}
        for name, rec in self.active.items():
            if name == but:
                continue
            for p in rec.get("publish", []):
                out[(int(p["host_port"]), p["proto"])] = name
        return out
