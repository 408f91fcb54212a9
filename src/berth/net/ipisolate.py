"""VServer-style network isolation on the host's own stack: cgroup sock_addr BPF programs that
limit a guest to its own IPv4 addresses.  No network namespace, no veth: native speed.

* bind4: an address of the guest's is allowed; ``0.0.0.0`` is narrowed to its first address
  (the program rewrites the address the socket binds to); anything else fails with EPERM.
* connect4: the socket is first bound to the guest's first address (``bpf_bind``; a socket the
  guest bound already keeps its own address), so every connection leaves from the guest's address.
* sendmsg4 (unconnected UDP): the source address becomes the guest's unless it is one of its own.
* bind6, connect6, sendmsg6: refused (EPERM): the guest has no IPv6 address.
* ingress and egress (cgroup_skb), on the packets themselves, for what no socket call shows: a
  packet to one of the guest's sockets must be for one of its addresses, a packet from one must
  be from one of them, and none is IPv6; any other is dropped.  ``listen()`` on a socket never
  bound binds it to ``0.0.0.0`` (or ``[::]``, dual-stack) without a bind hook: such a listener
  answers only on the guest's addresses (not on 127.0.0.1, nor any other of the host's).  A
  datagram socket bound implicitly (an unconnected ``sendto``) and then connected would send
  from the address the route picks: connect4 refuses that connect (EPERM), and egress drops any
  such packet all the same.
* sock_create: a raw socket (``SOCK_RAW``, IPv4 or IPv6) is refused (EPERM): it sends with any
  source address and no sock_addr hook sees it, and the guest shares the host's stack.  This
  holds for a guest with every capability too.  A packet socket (``AF_PACKET``: no cgroup hook
  sees its creation) needs CAP_NET_RAW, which a guest in ``ip:`` mode does not get unless it
  asks (``--cap-add NET_RAW``, ``--privileged``): see :func:`berth.cli.run._caps`.

The programs are built with :class:`berth.linux.bpf.Asm` and attached to the guest's cgroup2
directory with BPF_F_ALLOW_MULTI; :func:`detach` takes them off again (removing the cgroup would
too, but later).
"""

from __future__ import annotations

import ipaddress
import os
import struct

from berth.errors import UnsupportedError
from berth.linux import bpf
from berth.linux.bpf import AttachType, Reg

BPF_FUNC_SKB_LOAD_BYTES = 26
BPF_FUNC_BIND = 64
AF_INET = 2
# struct bpf_sock_addr offsets (uapi/linux/bpf.h)
OFF_USER_IP4 = 4
OFF_MSG_SRC_IP4 = 40
OFF_SK = 64  # struct bpf_sock *sk
OFF_SRC_IP4 = 24  # struct bpf_sock: the address the socket is bound to
# struct __sk_buff: skb->protocol (a __be16, read as the number it is in memory: little-endian)
OFF_PROTOCOL = 16
ETH_P_IP_BE = 0x0008
ETH_P_IPV6_BE = 0xDD86
IP4_SADDR, IP4_DADDR = 12, 16  # offsets in the IPv4 header (the skb starts at it here)

HOOKS_V4 = (AttachType.CGROUP_INET4_BIND, AttachType.CGROUP_INET4_CONNECT, AttachType.CGROUP_UDP4_SENDMSG)
HOOKS_V6 = (AttachType.CGROUP_INET6_BIND, AttachType.CGROUP_INET6_CONNECT, AttachType.CGROUP_UDP6_SENDMSG)
HOOKS_SOCK = (AttachType.CGROUP_INET_SOCK_CREATE,)
HOOKS_SKB = (AttachType.CGROUP_INET_INGRESS, AttachType.CGROUP_INET_EGRESS)
SOCK_RAW = 3
OFF_SOCK_TYPE = 8  # struct bpf_sock: bound_dev_if, family, type, protocol…


def _be32(addr: str) -> int:
    """An IPv4 address as the u32 the context holds (network byte order, read little-endian)."""
    (value,) = struct.unpack("<I", ipaddress.IPv4Address(addr).packed)
    return value


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _match_own(a: bpf.Asm, reg: int, addrs: list[str], target: str) -> None:
    """``if reg is one of addrs goto target`` (R3 is scratch; a 32-bit mov zero-extends)."""
    for addr in addrs:
        a.mov_imm(Reg.R3, _s32(_be32(addr)))
        a.jmp_reg("jeq", reg, Reg.R3, target)


def bind4(addrs: list[str]) -> bytes:
    a = bpf.Asm()
    a.mov_reg(Reg.R6, Reg.R1, wide=True)
    a.ldx("w", Reg.R2, Reg.R6, OFF_USER_IP4)
    a.jmp_imm("jeq", Reg.R2, 0, "narrow")
    _match_own(a, Reg.R2, addrs, "allow")
    a.mov_imm(Reg.R0, 0)
    a.exit()
    a.label("narrow")
    a.mov_imm(Reg.R3, _s32(_be32(addrs[0])))
    a.stx("w", Reg.R6, Reg.R3, OFF_USER_IP4)
    a.label("allow")
    a.mov_imm(Reg.R0, 1)
    a.exit()
    return a.assemble()


def connect4(addrs: list[str]) -> bytes:
    a = bpf.Asm()
    a.mov_reg(Reg.R6, Reg.R1, wide=True)
    # struct sockaddr_in at fp-16: family AF_INET, port 0 (any), the guest's first address.
    a.mov_imm(Reg.R2, 0, wide=True)
    a.stx("dw", Reg.R10, Reg.R2, -16)
    a.stx("dw", Reg.R10, Reg.R2, -8)
    a.mov_imm(Reg.R2, AF_INET)
    a.stx("h", Reg.R10, Reg.R2, -16)
    a.mov_imm(Reg.R2, _s32(_be32(addrs[0])))
    a.stx("w", Reg.R10, Reg.R2, -12)
    a.mov_reg(Reg.R1, Reg.R6, wide=True)
    a.mov_reg(Reg.R2, Reg.R10, wide=True)
    a.alu_imm("add", Reg.R2, -16, wide=True)
    a.mov_imm(Reg.R3, 16)
    a.call(BPF_FUNC_BIND)
    a.jmp_imm("jeq", Reg.R0, 0, "allow")
    # Bound already: by bind() (bind4 allowed only the guest's addresses) or implicitly, to
    # 0.0.0.0, by an unconnected sendto: connected, it would send from what the route picks.
    a.ldx("dw", Reg.R2, Reg.R6, OFF_SK)
    a.ldx("w", Reg.R2, Reg.R2, OFF_SRC_IP4)
    _match_own(a, Reg.R2, addrs, "allow")
    a.mov_imm(Reg.R0, 0)
    a.exit()
    a.label("allow")
    a.mov_imm(Reg.R0, 1)
    a.exit()
    return a.assemble()


def sendmsg4(addrs: list[str]) -> bytes:
    a = bpf.Asm()
    a.ldx("w", Reg.R2, Reg.R1, OFF_MSG_SRC_IP4)
    _match_own(a, Reg.R2, addrs, "allow")
    a.mov_imm(Reg.R3, _s32(_be32(addrs[0])))
    a.stx("w", Reg.R1, Reg.R3, OFF_MSG_SRC_IP4)
    a.label("allow")
    a.mov_imm(Reg.R0, 1)
    a.exit()
    return a.assemble()


def packets(addrs: list[str], *, ingress: bool) -> bytes:
    """A cgroup_skb program: an IPv4 packet to (``ingress``) or from one of the guest's sockets
    passes when its destination (source) address is one of ``addrs``; an IPv6 one never; a
    packet of any other protocol passes."""
    a = bpf.Asm()
    a.mov_reg(Reg.R6, Reg.R1, wide=True)
    a.ldx("w", Reg.R2, Reg.R6, OFF_PROTOCOL)
    a.jmp_imm("jeq", Reg.R2, ETH_P_IP_BE, "v4")
    a.jmp_imm("jeq", Reg.R2, ETH_P_IPV6_BE, "deny")
    a.mov_imm(Reg.R0, 1)
    a.exit()
    a.label("v4")
    # bpf_skb_load_bytes(skb, offset, fp-8, 4): the address, into the stack
    a.mov_reg(Reg.R1, Reg.R6, wide=True)
    a.mov_imm(Reg.R2, IP4_DADDR if ingress else IP4_SADDR)
    a.mov_reg(Reg.R3, Reg.R10, wide=True)
    a.alu_imm("add", Reg.R3, -8, wide=True)
    a.mov_imm(Reg.R4, 4)
    a.call(BPF_FUNC_SKB_LOAD_BYTES)
    a.jmp_imm("jne", Reg.R0, 0, "deny")  # shorter than an IPv4 header
    a.ldx("w", Reg.R2, Reg.R10, -8)
    _match_own(a, Reg.R2, addrs, "allow")
    a.label("deny")
    a.mov_imm(Reg.R0, 0)
    a.exit()
    a.label("allow")
    a.mov_imm(Reg.R0, 1)
    a.exit()
    return a.assemble()


def deny() -> bytes:
    a = bpf.Asm()
    a.mov_imm(Reg.R0, 0)
    a.exit()
    return a.assemble()


def sock_create() -> bytes:
    """Refuse a ``SOCK_RAW`` socket; allow any other."""
    a = bpf.Asm()
    a.ldx("w", Reg.R2, Reg.R1, OFF_SOCK_TYPE)
    a.jmp_imm("jeq", Reg.R2, SOCK_RAW, "deny")
    a.mov_imm(Reg.R0, 1)
    a.exit()
    a.label("deny")
    a.mov_imm(Reg.R0, 0)
    a.exit()
    return a.assemble()


def programs(addrs: list[str]) -> list[tuple[AttachType, str, bytes]]:
    """(hook, program name, code) for a guest limited to ``addrs``."""
    return [
        (AttachType.CGROUP_INET4_BIND, "berth_bind4", bind4(addrs)),
        (AttachType.CGROUP_INET4_CONNECT, "berth_connect4", connect4(addrs)),
        (AttachType.CGROUP_UDP4_SENDMSG, "berth_sendmsg4", sendmsg4(addrs)),
        (AttachType.CGROUP_INET6_BIND, "berth_bind6", deny()),
        (AttachType.CGROUP_INET6_CONNECT, "berth_connect6", deny()),
        (AttachType.CGROUP_UDP6_SENDMSG, "berth_sendmsg6", deny()),
        (AttachType.CGROUP_INET_SOCK_CREATE, "berth_sockraw", sock_create()),
        (AttachType.CGROUP_INET_INGRESS, "berth_ingress", packets(addrs, ingress=True)),
        (AttachType.CGROUP_INET_EGRESS, "berth_egress", packets(addrs, ingress=False)),
    ]


def attach(cgroup_dir: str | None, addrs: list[str]) -> None:
    """Load the programs and attach them to the guest's cgroup2 directory."""
    if not cgroup_dir:
        raise UnsupportedError(
            "net ip: needs a cgroup2 hierarchy (unified or hybrid) to attach the BPF address filter to"
        )
    cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for hook, name, code in programs(addrs):
            kind = (
                bpf.ProgType.CGROUP_SOCK
                if hook in HOOKS_SOCK
                else bpf.ProgType.CGROUP_SKB
                if hook in HOOKS_SKB
                else bpf.ProgType.CGROUP_SOCK_ADDR
            )
            try:
                fd = bpf.prog_load(kind, code, name=name, expected_attach_type=int(hook))
            except OSError as exc:
                raise UnsupportedError(
                    f"net ip: the kernel refused the {name} cgroup BPF program ({exc}); it needs "
                    "CONFIG_CGROUP_BPF and BPF_PROG_TYPE_CGROUP_SOCK(_ADDR)/CGROUP_SKB (Linux 5.3+)"
                ) from None
            try:
                bpf.prog_attach(cg, fd, hook, bpf.AttachFlag.ALLOW_MULTI)
            finally:
                os.close(fd)
    finally:
        os.close(cg)


def detach(cgroup_dir: str | None) -> None:
    """Take every program of :func:`programs` off the guest's cgroup (nothing if it is gone)."""
    if not cgroup_dir or not os.path.isdir(cgroup_dir):
        return
    cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for hook in HOOKS_V4 + HOOKS_V6 + HOOKS_SOCK + HOOKS_SKB:
            try:
                ids = bpf.prog_query(cg, hook)
            except OSError:
                continue
            for prog_id in ids:
                try:
                    fd = bpf.prog_fd_by_id(prog_id)
                except OSError:
                    continue
                try:
                    bpf.prog_detach(cg, fd, hook)
                except OSError:
                    pass
                finally:
                    os.close(fd)
    finally:
        os.close(cg)
