"""Plug a guest in and take it out again: the small API the CLI and the guest manager call.

* :func:`check` — before the guest is created: the address and published ports are free.
* :func:`setup` — from ``on_created``: the guest's host objects (bridge, veth, nft table, HTB,
  BPF address filter), recorded in the store *before* they are made so :func:`gc` finds them.
* :func:`teardown` — from ``on_exit``: everything the guest got; the bridge, IFB and the bridge's
  nft chains go with its last guest, the nft table (shared by the bridges that name it) with the
  last bridge.
* :func:`gc` — after a crash: tears down every recorded guest whose init is gone.
* :func:`set_rate` — live change of a running guest's bandwidth; :func:`info` — its class tree.

A veth's host end is named ``{prefix}v{n}`` with ``n`` unique among all the bridges of the store
(the guest's class index on its bridge when that is free, as before): two bridges' first guests
do not both get ``v0``.  The name is picked and the link made under the store's veth lock,
recorded before it is made; a name the kernel refuses (another store, a stray link) is never
taken down by the failed start's cleanup.  A bridge the host had before berth's first guest on
it stays when the last one goes, without the gateway addresses berth added to it.

A guest sends only from its own MAC and addresses (the bridge's ``spoof`` chain,
:func:`berth.net.nft.spoof_rules`, rebuilt with the bridge's other chains as guests come and
go); the bridge berth makes takes no router advertisement from them
(:func:`berth.net.bridge.refuse_ra`); a subnet overlapping the host's routes or addresses, or a
bridge name the host gives to another kind of link, is refused by :func:`check`, before
anything is made (and again when the bridge is there at start); the gateway address berth
added for a guest's ``--subnet`` goes with the last guest of that subnet.

A published host port is one guest's in the whole store (checked, on every bridge, and recorded
under the store's ports lock).  A guest's eth0 has a MAC derived from its IPv4 address
(:func:`berth.net.veth.mac_for`) and the host's neighbour entries for its addresses are dropped
at setup: a restarted guest is reachable at once.  The bridge berth makes has a MAC of its own
(:func:`berth.net.bridge.mac_for`): the guests' entries for their gateway stay right while
other guests' veths come and go.  The host ends of the veths keep the kernel's random MACs: with
the bridge's fixed they no longer decide it, and no guest's gateway is one of them (the bridge
device answers for the gateway addresses, with its own MAC).

The first apply or removal of a bridge's chains on a table that still has the chains of a berth
before per-bridge chains drops those and rebuilds every other bridge's of the store in the same
transaction (:func:`_migrated`): no bridge's guests lose their NAT or published ports to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from berth.errors import NetworkError, UsageError
from berth.net import addr as ipam
from berth.net import nft
from berth.net.options import NetOptions, Publish
from berth.policy.htb import NetRequest, htb_tree

AF_INET, AF_INET6 = 2, 10


def _starttime(pid: int) -> str | None:
    """The start time of a live ``pid`` (tells it from a later process given the same pid);
    ``None`` once it has ended, a zombie too: a guest's init killed by a crash or by gc is one
    until the host's pid 1 reaps it, and its network must go with it then (not at the next gc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X", "x") else fields[19]
    except (OSError, IndexError):
        return None


def check(store: str, name: str, opts: NetOptions) -> None:
    """Refuse, before anything exists, an address or a published port another guest holds, a
    bridge name the host gives to a link that is not a bridge, a subnet that overlaps the host's
    routes or addresses (:func:`berth.net.bridge.check_subnet_free`)."""
    if opts.mode not in ("bridge", "ip"):
        return
    _check_host(store, opts)
    with ipam.Leases(store, opts.bridge).locked() as db:
        if opts.mode == "bridge":
            lease = db.leases.get(name)
            if opts.ip is not None and not (lease and lease.get("ip") == opts.ip):
                ipam.pick(opts.subnet, db.taken_addrs(but=name), opts.ip)
            if opts.ip6 is not None and opts.subnet6 and not (lease and lease.get("ip6") == opts.ip6):
                ipam.pick(opts.subnet6, db.taken_addrs(but=name, key="ip6"), opts.ip6)
            with _flock(_ports_lock(db)):
                _check_ports(db, name, opts.publish)
        else:
            _check_addrs_free(db, name, opts.addrs)


def _check_host(store: str, opts: NetOptions) -> None:
    """The host's side of :func:`check`: nothing is made, the bridge's file not even opened."""
    from pyroute2 import IPRoute

    from berth.net import bridge

    with IPRoute() as ipr:
        bridge.check_link(ipr, opts.bridge)
        # (ip: mode puts the subnet on the bridge only for an address the host lacks: checked then)
        if opts.mode == "bridge":
            ours = _ours(ipam.Leases(store, opts.bridge).path)
            for net in (opts.subnet, opts.subnet6):
                if net is not None:
                    bridge.check_subnet_free(ipr, net, opts.bridge, ours)


def _check_addrs_free(db: ipam.Leases, name: str, addrs: tuple[str, ...] | list[str]) -> None:
    """Refuse an ``ip:`` guest an address another guest on the bridge holds: a running ``ip:``
    guest's, or a bridge guest's lease (a persistent one while the guest is stopped too): berth
    would put it on the bridge, the host's then, and the bridge guest would lose it."""
    taken = db.taken_addrs(but=name)
    for a in addrs:
        if a in taken:
            raise UsageError("net", f"address {a} is taken by another guest")


def _ours(path: str) -> set[str]:
    """The addresses (``ADDR/LEN``) berth put on the bridge whose file is ``path``: the gateways
    (``bridge_addrs``) and ``ip:`` guests' own (read without the lock: the file is replaced whole)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        out = {str(a) for a in data.get("bridge_addrs") or []}
        for rec in (data.get("active") or {}).values():
            out |= {f"{a}/32" for a in rec.get("added") or []}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()
    return out


def _check_ports(db: ipam.Leases, name: str, publish: tuple[Publish, ...]) -> None:
    """Refuse a host port a running guest of the store publishes, on any bridge (each bridge's
    chains would DNAT it: the later guest would take the port over).  Called under the store's
    ports lock (:func:`_ports_lock`)."""
    taken = {}
    for rec_name, rec in _store_active(db):
        if rec_name == name or not isinstance(rec, dict):
            continue
        for q in rec.get("publish") or []:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                taken[(int(q["host_port"]), str(q["proto"]))] = rec_name
    for p in publish:
        owner = taken.get((p.host_port, p.proto))
        if owner is not None:
            raise UsageError("publish", f"host port {p.host_port}/{p.proto} is already published by {owner}")


def _ports_lock(db: ipam.Leases) -> str:
    """The store-wide lock under which a guest's published ports are checked and recorded (taken
    under one bridge's lock, never the other way round)."""
    return os.path.join(db.dir, "ports.lock")


def setup(container: Any, opts: NetOptions, store: str, *, handoff: bool = False) -> dict[str, Any]:
    """Give the guest its network; returns its record (address, veth, ports…).

    ``handoff`` (bridge mode, a guest CRIU restores with its own network namespace): the veth's
    guest end (the record's ``peer``) is left here, unconfigured, for CRIU to move into the
    namespace it restores (``--external netdev[eth0]:PEER``: CRIU can, through its helper in the
    host's user namespace, where it cannot create a pair across the two); ``container.pid`` is
    the restoring process until :func:`adopt` names the restored init."""
    if opts.mode not in ("bridge", "ip"):
        return {}
    name = container.id
    pid = container.pid
    try:
        with ipam.Leases(store, opts.bridge).locked() as db:
            if opts.mode == "bridge":
                return _setup_bridge(db, name, pid, opts, handoff=handoff)
            if handoff:
                raise NetworkError("a handed-off veth is for bridge mode only")
            return _setup_ip(db, name, pid, container, opts)
    except BaseException:
        with contextlib.suppress(Exception):
            teardown(name, opts, store, cgroup_dir=_cgroup_dir(container))
        raise


def _cgroup_dir(container: Any) -> str | None:
    cg = container.cgroup()
    return cg.unified_dir() if cg is not None else None


def _record(name: str, pid: int, opts: NetOptions) -> dict[str, Any]:
    return {
        "mode": opts.mode,
        "pid": pid,
        "starttime": _starttime(pid),
        "subnet": opts.subnet,
        "subnet6": opts.subnet6,
        "nft_table": opts.nft_table,
        "prefix": opts.prefix,
        "link_rate_bps": opts.link_rate_bps,
    }


def _setup_bridge(
    db: ipam.Leases, name: str, pid: int, opts: NetOptions, *, handoff: bool = False
) -> dict[str, Any]:
    from pyroute2 import IPRoute

    from berth.net import bridge, veth

    lease = db.lease(name, opts.subnet, opts.ip, persist=opts.persist, subnet6=opts.subnet6, want6=opts.ip6)
    rec = {
        **_record(name, pid, opts),
        "ip": lease["ip"],
        "ip6": lease.get("ip6"),
        "index": lease["index"],
        "isolate": opts.isolate,
        "publish": [
            {"host_port": p.host_port, "guest_port": p.guest_port, "proto": p.proto} for p in opts.publish
        ],
        "rate_bps": opts.rate_bps,
        "ceil_bps": opts.ceil_bps,
        "share": opts.share,
    }
    if handoff:
        rec["handoff"] = True  # not the guest's pid yet: no /etc written through it
        rec["resolv_written"] = True  # the restored guest has its own (in its upper layer)
    with _flock(_ports_lock(db)):
        _check_ports(db, name, opts.publish)
        db.active[name] = rec
        db.save()  # recorded before anything is made: gc can always find it (and the ports, taken)
    with IPRoute() as ipr:
        br = _ensure_bridge(ipr, db, opts)
        rec["mtu"] = bridge.mtu_of(ipr, br)
        with _flock(os.path.join(db.dir, "veth.lock")):
            host = _pick_veth(ipr, db, opts, int(lease["index"]))
            rec["veth"] = host
            if handoff:
                rec["peer"] = f"{host}g"
            db.save()  # the name recorded before the link is made: gc finds it
            try:
                veth.create(
                    ipr,
                    host,
                    br,
                    None if handoff else pid,
                    isolate=opts.isolate,
                    mtu=rec["mtu"],
                    mac=veth.mac_for(lease["ip"]),
                )
            except veth.NotCreated:
                del rec["veth"]  # not ours: the cleanup must leave it alone
                rec.pop("peer", None)
                db.save()
                raise
        _forget_neighbours(ipr, br, lease["ip"], lease.get("ip6"))
        if not handoff:
            prefixlen = int(opts.subnet.split("/")[1])
            v6 = None
            if opts.subnet6 is not None and opts.gateway6 is not None and lease.get("ip6"):
                v6 = (lease["ip6"], int(opts.subnet6.split("/")[1]), opts.gateway6)
            veth.configure_guest(pid, f"{host}g", lease["ip"], prefixlen, opts.gateway, v6)
        db.save()
        _apply_nft(db, opts)
        _apply_htb(ipr, db, opts)
    _write_etc(db, opts)
    return rec


def _forget_neighbours(ipr: Any, br: int, *addrs: str | None) -> None:
    """Drop the host's neighbour entries for the guest's addresses on the bridge: one left by an
    earlier guest with the address (another MAC: one made before berth derived it, or restored
    by CRIU with the MAC it recorded) would send the host's packets there until it expires."""
    for a in addrs:
        if a:
            with contextlib.suppress(Exception):
                ipr.neigh("del", dst=a, ifindex=br, family=AF_INET6 if ":" in a else AF_INET)


def _ensure_bridge(ipr: Any, db: ipam.Leases, opts: NetOptions) -> int:
    """The bridge (:func:`berth.net.bridge.ensure`), noting in the bridge's file whether berth made
    it: one the host had before berth's first guest on it is not berth's to remove."""
    from berth.net import bridge

    existed = bridge.link_index(ipr, opts.bridge) is not None
    if not existed:
        db.data["bridge_made"] = True
        db.save()  # before it is made: gc removes it
    elif len(db.active) <= 1 and "bridge_made" not in db.data:
        db.data["bridge_made"] = False
        db.save()
    if existed and db.data.get("bridge_made") is False and "route_localnet_was" not in db.data:
        # ensure() sets route_localnet on it: the host's own bridge gets its value back with
        # berth's last guest there
        with contextlib.suppress(OSError):
            with open(f"/proc/sys/net/ipv4/conf/{opts.bridge}/route_localnet", encoding="ascii") as f:
                db.data["route_localnet_was"] = f.read().strip()
            db.save()
    added: list[str] = []
    ours = {str(a) for a in db.data.get("bridge_addrs") or []}
    ours |= {f"{a}/32" for r in db.active.values() for a in r.get("added") or []}
    try:
        idx = int(bridge.ensure(ipr, opts.bridge, opts.subnet, opts.mtu, opts.subnet6, added, ours))
        if existed and db.data.get("bridge_made") is True:
            bridge.fix_mac(ipr, idx, opts.bridge)  # one berth made before its bridges had their own MAC
            bridge.refuse_ra(opts.bridge)  # (one made before berth set it)
        return idx
    finally:
        if added:  # berth's own addresses on the bridge: they go with its last guest
            have = db.data.setdefault("bridge_addrs", [])
            have += [a for a in added if a not in have]
            db.save()


def _set_route_localnet(bridge: str, value: str) -> None:
    """Give a host's own bridge back the route_localnet it had before berth's guests."""
    path = f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"
    with contextlib.suppress(OSError), open(path, "w", encoding="ascii") as f:
        f.write(value)


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


#: The highest ``n`` of a veth ``{prefix}v{n}`` (options.check_name keeps ``{prefix}v99999g`` short enough).
MAX_VETH = 99999


def _other_bridges(db: ipam.Leases) -> list[tuple[str, dict[str, Any]]]:
    """(bridge, its running guests' records) for every other bridge of the store than ``db``'s,
    in name order; their files are read without their locks (they are replaced whole by rename),
    and one that cannot be read or is malformed is left out."""
    try:
        files = sorted(f for f in os.listdir(db.dir) if f.endswith(".json"))
    except OSError:
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    for f in files:
        path = os.path.join(db.dir, f)
        if path == db.path:
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                active = json.load(fh).get("active")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(active, dict):
            out.append((f[: -len(".json")], active))
    return out


def _store_active(db: ipam.Leases) -> list[tuple[str, Any]]:
    """(name, record) of the running guests of the store on every bridge: ``db``'s own, and the
    other bridges' (:func:`_other_bridges`)."""
    recs: list[tuple[str, Any]] = []
    for _, active in _other_bridges(db):
        recs += active.items()
    recs += db.active.items()
    return recs


def _store_veths(db: ipam.Leases) -> set[str]:
    """The veth names (host ends and peers) the store's guests hold, on every bridge."""
    held: set[str] = set()
    for _, r in _store_active(db):
        if isinstance(r, dict) and r.get("veth"):
            held.update((str(r["veth"]), f"{r['veth']}g"))
    return held


def _pick_veth(ipr: Any, db: ipam.Leases, opts: NetOptions, index: int) -> str:
    """A veth name no guest of the store on any bridge holds and no link of the host has (host
    end and peer): ``{prefix}v{index}`` when free (one bridge: the names are as they always
    were), else the lowest free ``{prefix}v{n}``.  Called under the store's veth lock."""
    held = _store_veths(db)

    def free(n: int) -> bool:
        host = opts.veth(n)
        return (
            host not in held
            and f"{host}g" not in held
            and not ipr.link_lookup(ifname=host)
            and not ipr.link_lookup(ifname=f"{host}g")
        )

    for n in itertools.chain((index,), range(MAX_VETH + 1)):
        if free(n):
            return opts.veth(n)
    raise NetworkError(f"veth: no free name {opts.veth(0)}…{opts.veth(MAX_VETH)} left (BERTH_NET_PREFIX)")


def adopt(store: str, name: str, opts: NetOptions, pid: int) -> None:
    """The guest's record follows its restored init ``pid`` (gc tells a live guest by it); after
    a ``handoff``, the guests' /etc/hosts are written again (the restored one's too)."""
    with ipam.Leases(store, opts.bridge).locked() as db:
        rec = db.active.get(name)
        if rec is None:
            return
        was_handoff = bool(rec.pop("handoff", False))
        rec.pop("peer", None)
        rec.update(pid=pid, starttime=_starttime(pid))
        if was_handoff:
            _write_etc(db, opts)
        db.save()


def _setup_ip(db: ipam.Leases, name: str, pid: int, container: Any, opts: NetOptions) -> dict[str, Any]:
    from pyroute2 import IPRoute

    from berth.net import ipisolate

    _check_addrs_free(db, name, opts.addrs)
    rec = {**_record(name, pid, opts), "addrs": list(opts.addrs), "added": []}
    db.active[name] = rec
    db.save()
    with IPRoute() as ipr:
        local = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}
        missing = [a for a in opts.addrs if a not in local]
        if missing:
            br = _ensure_bridge(ipr, db, opts)
            for a in missing:
                ipr.addr("add", index=br, address=a, prefixlen=32)
                rec["added"].append(a)
                db.save()
    ipisolate.attach(_cgroup_dir(container), list(opts.addrs))
    return rec


def teardown(name: str, opts: NetOptions, store: str, *, cgroup_dir: str | None = None) -> None:
    """Remove what guest ``name`` has on the host (a no-op for a guest that has nothing)."""
    if opts.mode not in ("bridge", "ip"):
        return
    with ipam.Leases(store, opts.bridge).locked() as db:
        _teardown_locked(db, name, opts, cgroup_dir)


def _opts_of(rec: dict[str, Any], opts: NetOptions) -> NetOptions:
    return replace(
        opts,
        subnet=rec.get("subnet", opts.subnet),
        subnet6=rec.get("subnet6", opts.subnet6),
        nft_table=rec.get("nft_table", opts.nft_table),
        prefix=rec.get("prefix", opts.prefix),
        link_rate_bps=rec.get("link_rate_bps", opts.link_rate_bps),
    )


def _teardown_locked(db: ipam.Leases, name: str, opts: NetOptions, cgroup_dir: str | None) -> None:
    from pyroute2 import IPRoute

    from berth.net import bridge, htb, ipisolate, veth

    rec = db.active.pop(name, None)
    db.release(name)
    errors: list[str] = []
    if rec is not None:
        opts = _opts_of(rec, opts)
    with IPRoute() as ipr:
        if rec is not None and rec.get("veth"):
            try:
                veth.remove(ipr, rec["veth"], bridge=opts.bridge)
            except Exception as exc:
                errors.append(f"veth {rec['veth']}: {exc}")
        for a in (rec or {}).get("added", []):
            idx = ipr.link_lookup(ifname=opts.bridge)
            if idx:
                with contextlib.suppress(Exception):
                    ipr.addr("del", index=idx[0], address=a, prefixlen=32)
        if rec is not None and rec.get("mode") == "ip":
            with contextlib.suppress(OSError):
                ipisolate.detach(cgroup_dir)
        if not db.active:
            with contextlib.suppress(Exception):
                _nft_remove(db, opts)
            with contextlib.suppress(Exception):
                bridge.remove(ipr, opts.ifb)
            if db.data.get("bridge_made", True):  # (a file from before the flag: berth's bridge)
                try:
                    bridge.remove(ipr, opts.bridge)
                except Exception as exc:  # still berth's: the next last guest (or gc) removes it
                    errors.append(f"bridge {opts.bridge}: {exc}")
                else:
                    db.data.pop("bridge_made", None)
                    db.data.pop("bridge_addrs", None)
            else:  # the host's own bridge stays, without berth's shaping and gateway addresses
                with contextlib.suppress(Exception):
                    htb.remove_root(ipr, opts.bridge)
                was = db.data.pop("route_localnet_was", None)
                if was in ("0", "1"):
                    _set_route_localnet(opts.bridge, was)
                try:
                    bridge.remove_addrs(ipr, opts.bridge, list(db.data.get("bridge_addrs", [])))
                except Exception as exc:
                    errors.append(f"bridge {opts.bridge} addresses: {exc}")
                else:
                    db.data.pop("bridge_made", None)
                    db.data.pop("bridge_addrs", None)
        else:
            try:
                _drop_unused_addrs(ipr, db, opts.bridge)
                _apply_nft(db, opts)
                _apply_htb(ipr, db, opts)
            except Exception as exc:
                errors.append(str(exc))
            if not _bridge_guests(db):
                with contextlib.suppress(Exception):
                    _nft_remove(db, opts)
                with contextlib.suppress(Exception):
                    htb.remove_root(ipr, opts.bridge)
    db.save()
    if rec is not None and rec.get("mode") == "bridge":
        _write_etc(db, opts)
    if errors:
        raise NetworkError(f"network teardown of {name}: {'; '.join(errors)}")


def _drop_unused_addrs(ipr: Any, db: ipam.Leases, name: str) -> None:
    """Take off bridge ``name`` the gateway addresses berth added for a subnet no running guest
    of the bridge uses any more (the guest that gave another subnet with ``--subnet`` is gone)."""
    from berth.net import bridge

    used = {
        ipaddress.ip_network(n) for r in db.active.values() for n in (r.get("subnet"), r.get("subnet6")) if n
    }
    have = list(db.data.get("bridge_addrs") or [])
    unused = [a for a in have if ipaddress.ip_interface(a).network not in used]
    if unused:
        bridge.remove_addrs(ipr, name, unused)
        db.data["bridge_addrs"] = [a for a in have if a not in unused]
        db.save()


def _bridge_guests(db: ipam.Leases) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in db.active.items() if r.get("mode") == "bridge"}


def _rules(
    table: str, bridge: str, subnet: str, subnet6: str | None, guests: dict[str, Any]
) -> dict[str, Any]:
    """``bridge``'s chains (:func:`berth.net.nft.ruleset`) for its running ``guests``."""
    publishes = [
        (a, int(p["host_port"]), int(p["guest_port"]), p["proto"])
        for r in guests.values()
        for p in r.get("publish", [])
        for a in (r["ip"], r.get("ip6"))
        if a
    ]
    isolated = [r["veth"] for r in guests.values() if r.get("isolate") and r.get("veth")]
    ports = [_port(r) for r in guests.values() if r.get("veth") and r.get("ip")]
    return nft.ruleset(table, bridge, subnet, publishes, isolated, subnet6, ports)


def _port(rec: dict[str, Any]) -> nft.Port:
    """A bridge guest's port for the anti-spoofing rules (:func:`berth.net.nft.spoof_rules`): its
    veth, the MAC berth gave its eth0 (:func:`berth.net.veth.mac_for`), its addresses."""
    from berth.net import veth

    return (str(rec["veth"]), veth.mac_for(str(rec["ip"])), str(rec["ip"]), rec.get("ip6") or None)


def _apply_nft(db: ipam.Leases, opts: NetOptions) -> None:
    guests = _bridge_guests(db)
    if not guests:
        return
    rules = _rules(opts.nft_table, opts.bridge, opts.subnet, opts.subnet6, guests)
    with _flock(_nft_lock(db, opts.nft_table)):
        nft.apply(rules, opts.bridge, _migrated(db, opts.nft_table))


def _migrated(db: ipam.Leases, table: str) -> dict[str, dict[str, Any]]:
    """Called under the table's lock: when ``table`` still has the chains of a berth before
    per-bridge chains (:func:`berth.net.nft.legacy`), which the apply or removal drops and which
    may hold another bridge's rules, every other bridge of the store with running guests on the
    table, with its rules ({bridge: ruleset}) to load in the same transaction (its guests keep
    their NAT and published ports); else {}.  The other bridges' files are read without their
    locks (:func:`_other_bridges`): a bridge whose guests change meanwhile applies its own
    rules again, after, under this same lock."""
    others: dict[str, dict[str, Any]] = {}
    for bridge, active in _other_bridges(db):
        guests = {
            n: r
            for n, r in active.items()
            if isinstance(r, dict) and r.get("mode") == "bridge" and r.get("nft_table") == table
        }
        if guests:
            r0 = next(iter(guests.values()))
            try:
                others[bridge] = _rules(table, bridge, r0["subnet"], r0.get("subnet6"), guests)
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
    return others if others and nft.legacy(table) else {}


def _nft_lock(db: ipam.Leases, table: str) -> str:
    """The lock that serialises the bridges sharing nft ``table``: one bridge's removal (the
    table goes once no bridge has chains in it) never drops another's rules being loaded."""
    return os.path.join(db.dir, f"nft-{table}.lock")


def _nft_remove(db: ipam.Leases, opts: NetOptions) -> None:
    """The bridge's chains out of its nft table; the table with the last bridge that uses it."""
    with _flock(_nft_lock(db, opts.nft_table)):
        nft.remove_bridge(opts.nft_table, opts.bridge, _migrated(db, opts.nft_table))


def _apply_htb(ipr: Any, db: ipam.Leases, opts: NetOptions) -> None:
    from berth.net import htb

    shaped = {
        n: r
        for n, r in _bridge_guests(db).items()
        if r.get("rate_bps") is not None or r.get("ceil_bps") is not None or r.get("share") is not None
    }
    if not shaped:
        htb.remove_root(ipr, opts.ifb)
        htb.remove_root(ipr, opts.bridge)
        return
    from berth.net import bridge

    br = bridge.link_index(ipr, opts.bridge)
    mtu = bridge.mtu_of(ipr, br) if br is not None else opts.mtu
    plan = htb_tree(
        opts.link_rate_bps,
        [
            NetRequest(n, int(r["index"]), r.get("rate_bps"), r.get("ceil_bps"), int(r.get("share") or 100))
            for n, r in shaped.items()
        ],
        mtu=min(65535, mtu + 14),  # HTB counts the Ethernet header
    )
    ifb = htb.ensure_ifb(ipr, opts.ifb, mtu)
    addrs = {n: (r["ip"], int(r["index"])) for n, r in shaped.items()}
    addrs6 = {n: r["ip6"] for n, r in shaped.items() if r.get("ip6")}
    htb.apply_tree(ipr, opts.ifb, plan, addrs, htb.SRC_OFFSET, addrs6, htb.SRC6_OFFSET)
    htb.apply_tree(ipr, opts.bridge, plan, addrs, htb.DST_OFFSET, addrs6, htb.DST6_OFFSET)
    for r in shaped.values():
        if not r.get("redirected"):
            htb.redirect_ingress(ipr, r["veth"], ifb)
            r["redirected"] = True
    db.save()


def set_rate(
    store: str,
    name: str,
    opts: NetOptions,
    *,
    rate_bps: int | None = None,
    ceil_bps: int | None = None,
    share: int | None = None,
) -> None:
    """Change a running bridge guest's bandwidth now (``berth set``)."""
    from pyroute2 import IPRoute

    with ipam.Leases(store, opts.bridge).locked() as db:
        rec = db.active.get(name)
        if rec is None or rec.get("mode") != "bridge":
            raise UsageError("name", f"{name!r} is not a running guest on bridge {opts.bridge}")
        old = dict(rec)
        rec.update(rate_bps=rate_bps, ceil_bps=ceil_bps, share=share if share is not None else 100)
        try:
            with IPRoute() as ipr:
                _apply_htb(ipr, db, _opts_of(rec, opts))
        except BaseException:
            rec.clear()
            rec.update(old)
            raise
        db.save()


def info(store: str, name: str, opts: NetOptions) -> dict[str, Any]:
    """The guest's record and the HTB classes on the IFB (``berth info``)."""
    from pyroute2 import IPRoute

    from berth.net import htb

    with ipam.Leases(store, opts.bridge).locked() as db:
        rec = dict(db.active.get(name) or {})
    if rec.get("rate_bps") is not None or rec.get("ceil_bps") is not None or rec.get("share") is not None:
        with IPRoute() as ipr:
            rec["htb"] = htb.show(ipr, opts.ifb)
    return rec


def gc(store: str, opts: NetOptions) -> list[str]:
    """Tear down every guest on ``opts.bridge`` whose init is gone; the names cleaned up."""
    if not os.path.exists(os.path.join(store, "net", f"{opts.bridge}.json")):
        return []
    done = []
    with ipam.Leases(store, opts.bridge).locked() as db:
        for name, rec in list(db.active.items()):
            # (no start time recorded: its init was a zombie already when the lease was written)
            start = rec.get("starttime")
            if not rec.get("pid") or start is None or _starttime(int(rec["pid"])) != start:
                with contextlib.suppress(NetworkError):
                    _teardown_locked(db, name, opts, None)
                done.append(name)
    return done


# -- /etc/hosts and /etc/resolv.conf in the guests ----------------------------------------------


def _resolvers() -> list[str]:
    out = []
    try:
        with open("/etc/resolv.conf", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith(("127.", "::1")):
                    out.append(parts[1])
    except OSError:
        pass
    return out


def _write_etc(db: ipam.Leases, opts: NetOptions) -> None:
    """Every running bridge guest's /etc/hosts names all the others; resolv.conf the host's servers."""
    guests = _bridge_guests(db)
    table = "".join(f"{r['ip']}\t{n}\n" for n, r in sorted(guests.items()))
    # IPv6 after IPv4: a resolver that reads the file in order still tries IPv4 first
    table += "".join(f"{r['ip6']}\t{n}\n" for n, r in sorted(guests.items()) if r.get("ip6"))
    resolv = "".join(f"nameserver {ns}\n" for ns in _resolvers()) or f"nameserver {opts.gateway}\n"
    for r in guests.values():
        pid = int(r["pid"])
        if r.get("handoff") or _starttime(pid) != r.get("starttime"):
            continue
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + table
        _write_in_guest(pid, "hosts", hosts)
        if not r.get("resolv_written"):
            _write_in_guest(pid, "resolv.conf", resolv)
            r["resolv_written"] = True


def _mnt_id(fd: int) -> int:
    """The id of the mount ``fd`` is on (/proc/self/fdinfo: no call into its file system)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(f"no mnt_id for fd {fd}")


def _write_in_guest(pid: int, fname: str, text: str) -> None:
    """Write /etc/<fname> through /proc/PID/root without following a symlink the guest made, nor
    a mount it made (a guest with CAP_SYS_ADMIN could bind any file it sees, or a FUSE mount,
    over /etc or /etc/hosts: berth, as the host's root, would write into that, or hang on it):
    /etc and the file must be on the guest's root mount, else the guest does without."""
    try:
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        etc = os.open("etc", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
        try:
            mnt = _mnt_id(root)
            fd = _open_regular(fname, etc, mnt) if _mnt_id(etc) == mnt else None
            if fd is not None:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
        finally:
            os.close(etc)
    except OSError:
        pass  # a read-only root or no /etc: the guest does without
    finally:
        os.close(root)


def _open_regular(fname: str, etc: int, mnt: int) -> int | None:
    """``etc/fname`` opened for writing, truncated; ``None`` when the guest made it something other
    than a regular file.  Opening a FIFO the guest put there would block (every bridge guest's
    start after it waits on its lock) and opening a device node runs that device's open (a tty,
    another pty): so the name is looked at through an O_PATH fd and only a regular file is opened,
    through that fd, never by the name again; and only if it is on mount ``mnt`` (looked at
    before anything asks its file system)."""
    try:
        return os.open(
            fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=etc
        )
    except FileExistsError:
        pass
    path = os.open(fname, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=etc)
    try:
        if _mnt_id(path) != mnt or not stat.S_ISREG(os.fstat(path).st_mode):
            return None
        return os.open(f"/proc/self/fd/{path}", os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    finally:
        os.close(path)
