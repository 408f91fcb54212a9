"""The ``ip:`` mode's packet filters (berth.net.ipisolate.packets), run by the kernel on packets
made here (BPF_PROG_TEST_RUN): an IPv4 packet to (ingress) or from (egress) one of the guest's
sockets passes only with one of its addresses, an IPv6 one never, an ARP one (no socket of the
guest ever gets one: the filter has no business there) always.  Nothing is attached."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from berth.linux import bpf
from berth.net import ipisolate

OWN = ["10.9.0.2", "10.9.0.200"]
PROG_TEST_RUN = 10


def _frame(ethertype: int, l3: bytes) -> bytes:
    return b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + struct.pack("!H", ethertype) + l3 + bytes(32)


def ipv4(src: str, dst: str) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + 8, 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return _frame(0x0800, header + struct.pack("!HHHH", 1000, 2000, 8, 0))


def ipv6(src: str, dst: str) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        8,
        17,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return _frame(0x86DD, header + struct.pack("!HHHH", 1000, 2000, 8, 0))


def verdict(prog_fd: int, frame: bytes) -> int:
    """The program's return value for ``frame`` (1: passes, 0: dropped)."""
    import ctypes

    data = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) + 256)
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration
    attr = bpf._attr(
        "=IIIIQQII", prog_fd, 0, len(frame), len(out), ctypes.addressof(data), ctypes.addressof(out), 1, 0
    )
    bpf._bpf(PROG_TEST_RUN, attr, "bpf(BPF_PROG_TEST_RUN)")  # type: ignore[arg-type]  (not a berth command)
    (retval,) = struct.unpack_from("=I", attr, 4)
    return int(retval)


@pytest.fixture(params=["ingress", "egress"])
def prog(request: pytest.FixtureRequest):
    if os.geteuid() != 0:
        pytest.skip("needs root to load a BPF program")
    ingress = request.param == "ingress"
    hook = bpf.AttachType.CGROUP_INET_INGRESS if ingress else bpf.AttachType.CGROUP_INET_EGRESS
    fd = bpf.prog_load(
        bpf.ProgType.CGROUP_SKB,
        ipisolate.packets(OWN, ingress=ingress),
        name="berth_test",
        expected_attach_type=hook,
    )
    try:
        yield fd, ingress
    finally:
        os.close(fd)


def test_packets_pass_only_with_the_guests_addresses(prog) -> None:
    fd, ingress = prog

    def v4(addr: str, peer: str = "127.0.0.1") -> int:
        return verdict(fd, ipv4(peer, addr) if ingress else ipv4(addr, peer))

    assert v4("10.9.0.2") == 1
    assert v4("10.9.0.200") == 1
    assert v4("127.0.0.1") == 0  # the host's loopback: the listener bound by listen() alone
    assert v4("10.9.0.3") == 0
    assert v4("0.0.0.0") == 0
    assert v4("10.9.0.2", peer="10.9.0.200") == 1  # between two of its own
    assert verdict(fd, ipv6("::1", "::1")) == 0
    assert verdict(fd, ipv6("::ffff:10.9.0.2", "::ffff:10.9.0.2")) == 0
    assert verdict(fd, _frame(0x0806, bytes(28))) == 1  # ARP: not IP, not ours to judge
