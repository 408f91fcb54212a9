"""Apply an :class:`~berth.policy.htb.HtbPlan` with pyroute2 tc, in both directions:

* what the guests send: each shaped guest's host-side veth has an ``ingress`` qdisc whose u32
  filter redirects everything to the bridge's IFB device; the IFB carries the HTB tree, a u32
  filter per guest on the source address (one for IPv4, one for IPv6) picks the guest's class.
* what the guests receive from the host: the same tree on the bridge device, classified on the
  destination address.

Leaves are pfifo (fq_codel where the kernel has it).  Applying is idempotent: classes are
replaced, classes and filters of guests no longer in the plan are deleted, so a live change
(``berth set``) is just another :func:`apply`.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from berth.errors import NetworkError
from berth.policy.htb import HtbPlan, burst_bytes

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
INGRESS = 0xFFFF0000
FILTER_PRIO_BASE = 100
#: IPv6 filters sit at other priorities: one priority holds filters of one protocol only.
FILTER_PRIO6_BASE = 0x4000
SRC_OFFSET, DST_OFFSET = 12, 16  # IPv4 header: source, destination address
SRC6_OFFSET, DST6_OFFSET = 8, 24  # IPv6 header
LEAF_LIMIT = 1000
#: HTB's rates are 32-bit bytes/s in tc_htb_opt; above it the kernel takes TCA_HTB_RATE64/CEIL64.
_U32 = 0xFFFFFFFF


def _rate64() -> Any:
    """pyroute2's HTB plugin with the kernel's 64-bit rate attributes (Linux 3.13; pyroute2 0.7
    knows only tc_htb_opt's 32-bit bytes/s, so a link of 34.4 Gbit/s or more failed to encode):
    its ``options`` class replaced once by a subclass whose map adds TCA_HTB_DIRECT_QLEN,
    TCA_HTB_RATE64 and TCA_HTB_CEIL64 (the kernel's numbers 5–7), for requests and dumps alike."""
    from pyroute2.netlink.rtnl.tcmsg import sched_htb

    if getattr(sched_htb.options, "berth_rate64", False):
        return sched_htb

    class options(sched_htb.options):
        berth_rate64 = True
        nla_map = (
            (0, "TCA_HTB_UNSPEC", "none"),
            (1, "TCA_HTB_PARMS", "htb_parms"),
            (2, "TCA_HTB_INIT", "htb_glob"),
            (3, "TCA_HTB_CTAB", "ctab"),
            (4, "TCA_HTB_RTAB", "rtab"),
            (5, "TCA_HTB_DIRECT_QLEN", "uint32"),
            (6, "TCA_HTB_RATE64", "uint64"),
            (7, "TCA_HTB_CEIL64", "uint64"),
        )

    # pyroute2 compiles a class's map on first use and keeps it on the class: the subclass must
    # compile its own, not inherit its parent's.
    options._nlmsg_base__compiled_nla = False
    sched_htb.options = options
    return sched_htb


def _replace_class(
    ipr: Any, idx: int, handle: int, parent: int, rate_bps: int, ceil_bps: int, **kw: Any
) -> None:
    """``tc class replace … htb`` for one class; rates of 2^32 bytes/s and more go in the 64-bit
    attributes (as tc does: the 32-bit fields then hold their largest value)."""
    if rate_bps // 8 <= _U32 and ceil_bps // 8 <= _U32:
        ipr.tc(
            "replace-class",
            "htb",
            idx,
            handle,
            parent=parent,
            rate=f"{rate_bps}bit",
            ceil=f"{ceil_bps}bit",
            **kw,
        )
        return
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_NEWTCLASS
    from pyroute2.netlink.rtnl.tcmsg import tcmsg
    from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime

    sched_htb = _rate64()
    rate, ceil = rate_bps // 8, ceil_bps // 8
    opts = sched_htb.get_class_parameters(
        {"rate": f"{min(rate, _U32) * 8}bit", "ceil": f"{min(ceil, _U32) * 8}bit", **kw}
    )
    parms = opts["attrs"][0][1]
    parms["buffer"] = calc_xmittime(rate, kw["burst"])  # the burst's time at the real rates
    parms["cbuffer"] = calc_xmittime(ceil, kw["cburst"])
    if rate > _U32:
        opts["attrs"].append(["TCA_HTB_RATE64", rate])
    if ceil > _U32:
        opts["attrs"].append(["TCA_HTB_CEIL64", ceil])
    msg = tcmsg()
    msg["index"] = idx
    msg["handle"] = handle
    msg["parent"] = parent
    msg["attrs"] = [["TCA_KIND", "htb"], ["TCA_OPTIONS", opts]]
    ipr.nlm_request(
        msg, msg_type=RTM_NEWTCLASS, msg_flags=NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    )


def _idx(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_ifb(ipr: Any, name: str, mtu: int = 1500) -> int:
    """The IFB device ``name`` (with the bridge's ``mtu``), up; created if missing.  Its index."""
    idx = _idx(ipr, name)
    if idx is None:
        try:
            ipr.link("add", ifname=name, kind="ifb")
        except Exception as exc:
            raise NetworkError(f"ifb {name}: cannot create (is the ifb module loaded?): {exc}") from None
        idx = _idx(ipr, name)
        if idx is None:
            raise NetworkError(f"ifb {name}: vanished after creation")
        ipr.link("set", index=idx, txqlen=LEAF_LIMIT)
    ipr.link("set", index=idx, mtu=mtu, state="up")
    return idx


def _key(addr: str, offset: int) -> str:
    value = int(ipaddress.IPv4Address(addr))
    return f"0x{value:08x}/0xffffffff+{offset}"


def _keys6(addr: str, offset: int) -> list[str]:
    """u32 keys matching an IPv6 address at ``offset``: four 32-bit words."""
    packed = ipaddress.IPv6Address(addr).packed
    return [f"0x{packed[i : i + 4].hex()}/0xffffffff+{offset + i}" for i in range(0, 16, 4)]


def _root_is_htb(ipr: Any, idx: int, handle: int) -> bool:
    for q in ipr.get_qdiscs(index=idx):
        if q["parent"] == 0xFFFFFFFF and q["handle"] == handle and q.get_attr("TCA_KIND") == "htb":
            return True
    return False


def _leaves(ipr: Any, idx: int) -> set[int]:
    return {q["parent"] for q in ipr.get_qdiscs(index=idx) if q["parent"] not in (0xFFFFFFFF, INGRESS)}


def apply_tree(
    ipr: Any,
    dev: str,
    plan: HtbPlan,
    addrs: dict[str, tuple[str, int]],
    offset: int,
    addrs6: dict[str, str] | None = None,
    offset6: int = SRC6_OFFSET,
) -> None:
    """Make ``dev``'s root qdisc the plan's tree; ``addrs``: guest name → (address, index),
    ``addrs6``: guest name → IPv6 address (so a guest's IPv6 traffic goes through its class too)."""
    addrs6 = addrs6 or {}
    idx = _idx(ipr, dev)
    if idx is None:
        raise NetworkError(f"htb: no device {dev}")
    if not _root_is_htb(ipr, idx, plan.root_handle):
        try:
            ipr.tc("del", index=idx)
        except Exception:
            pass
        ipr.tc("add", "htb", idx, plan.root_handle, default=plan.default_minor)
    for cls in plan.classes():
        _replace_class(
            ipr,
            idx,
            cls.handle,
            cls.parent,
            cls.rate_bps,
            cls.ceil_bps,
            quantum=cls.quantum,
            burst=burst_bytes(cls.rate_bps, plan.mtu),
            cburst=burst_bytes(cls.ceil_bps, plan.mtu),
        )
    leaves = _leaves(ipr, idx)
    for cls in plan.classes():
        if cls.leaf_major is not None and cls.handle not in leaves:
            _leaf(ipr, idx, cls.leaf_major << 16, cls.handle)
    wanted = {cls.minor for cls in plan.classes()}
    # Classes of guests that left: filter first, then the class (its leaf goes with it).
    for c in ipr.get_classes(index=idx):
        minor = c["handle"] & 0xFFFF
        if c["handle"] >> 16 == plan.root_handle >> 16 and minor not in wanted:
            _del_filter(ipr, idx, plan.root_handle, FILTER_PRIO_BASE + minor)
            _del_filter(ipr, idx, plan.root_handle, FILTER_PRIO6_BASE + minor, ETH_P_IPV6)
            try:
                ipr.tc("del-class", "htb", idx, c["handle"], parent=c["parent"])
            except Exception:
                pass
    for cls in plan.guests:
        addr, _ = addrs[cls.name]
        prio = FILTER_PRIO_BASE + cls.minor
        _del_filter(ipr, idx, plan.root_handle, prio)
        ipr.tc(
            "add-filter",
            "u32",
            idx,
            parent=plan.root_handle,
            prio=prio,
            protocol=ETH_P_IP,
            target=cls.handle,
            keys=[_key(addr, offset)],
        )
        prio6 = FILTER_PRIO6_BASE + cls.minor
        _del_filter(ipr, idx, plan.root_handle, prio6, ETH_P_IPV6)
        if cls.name in addrs6:
            ipr.tc(
                "add-filter",
                "u32",
                idx,
                parent=plan.root_handle,
                prio=prio6,
                protocol=ETH_P_IPV6,
                target=cls.handle,
                keys=_keys6(addrs6[cls.name], offset6),
            )


def _leaf(ipr: Any, idx: int, handle: int, parent: int) -> None:
    try:
        ipr.tc("add", "fq_codel", idx, handle, parent=parent)
    except Exception:
        ipr.tc("add", "pfifo", idx, handle, parent=parent, limit=LEAF_LIMIT)


def _del_filter(ipr: Any, idx: int, parent: int, prio: int, proto: int = ETH_P_IP) -> None:
    try:
        ipr.tc("del-filter", index=idx, parent=parent, prio=prio, protocol=proto, info=_info(proto, prio))
    except Exception:
        pass


def _info(proto: int, prio: int) -> int:
    return socket.htons(proto) | (prio << 16)


def redirect_ingress(ipr: Any, veth: str, ifb_idx: int) -> None:
    """Send everything arriving on ``veth`` (what its guest sends) through the IFB."""
    idx = _idx(ipr, veth)
    if idx is None:
        raise NetworkError(f"htb: no device {veth}")
    ipr.tc("add", "ingress", idx, INGRESS)
    ipr.tc(
        "add-filter",
        "u32",
        idx,
        parent=INGRESS,
        prio=1,
        protocol=ETH_P_ALL,
        keys=["0x0/0x0+0"],
        target=0x10001,
        action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifb_idx},
    )


def remove_root(ipr: Any, dev: str) -> None:
    idx = _idx(ipr, dev)
    if idx is not None:
        try:
            ipr.tc("del", index=idx)
        except Exception:
            pass


def show(ipr: Any, dev: str) -> list[dict[str, Any]]:
    """The classes on ``dev`` as plain data (for ``berth info``)."""
    idx = _idx(ipr, dev)
    if idx is None:
        return []
    _rate64()  # so the dump decodes a rate of 2^32 bytes/s or more
    out = []
    for c in ipr.get_classes(index=idx):
        opts = c.get_attr("TCA_OPTIONS")
        parms = opts.get_attr("TCA_HTB_PARMS") if opts is not None else None
        rate64 = opts.get_attr("TCA_HTB_RATE64") if opts is not None else None
        ceil64 = opts.get_attr("TCA_HTB_CEIL64") if opts is not None else None
        out.append(
            {
                "classid": f"{c['handle'] >> 16:x}:{c['handle'] & 0xFFFF:x}",
                "parent": f"{c['parent'] >> 16:x}:{c['parent'] & 0xFFFF:x}",
                "rate_bps": (rate64 or parms["rate"]) * 8 if parms else None,
                "ceil_bps": (ceil64 or parms["ceil"]) * 8 if parms else None,
            }
        )
    return out
