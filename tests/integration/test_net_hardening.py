"""Network hardening against hostile guests, on the real kernel: what a guest with CAP_NET_RAW
(berth's default set) sends cannot reconfigure the host nor take another guest's address over,
an ``ip:`` guest gets no raw or packet socket on the host's stack, and a subnet or bridge name
that would change the host's own addressing is refused before anything is made.

The guests' attempts come from one small static program (``HOSTILE_C``); all traffic stays on
the test's own bridge (its subnet a free 10.x /24, its IPv6 subnet a ULA).
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_guests import berth_cmd
from test_net import (  # noqa: F401  (fixtures)
    _assert_nothing_left,
    guests,
    net_env,
)

from helpers import free_subnet

HOSTILE_C = r"""
/* A guest's attempts on the host's network (tests/integration/test_net_hardening.py). */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int ra(const char *prefix) {
    int s = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
    if (s < 0) { perror("socket"); return 1; }
    int hops = 255;
    unsigned idx = if_nametoindex("eth0");
    setsockopt(s, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof hops);
    setsockopt(s, IPPROTO_IPV6, IPV6_MULTICAST_IF, &idx, sizeof idx);
    unsigned char p[16 + 32];
    memset(p, 0, sizeof p);
    struct nd_router_advert *adv = (void *)p;
    adv->nd_ra_type = ND_ROUTER_ADVERT;
    adv->nd_ra_curhoplimit = 64;
    struct nd_opt_prefix_info *pi = (void *)(p + 16);
    pi->nd_opt_pi_type = ND_OPT_PREFIX_INFORMATION;
    pi->nd_opt_pi_len = 4;
    pi->nd_opt_pi_prefix_len = 64;
    pi->nd_opt_pi_flags_reserved = ND_OPT_PI_FLAG_ONLINK | ND_OPT_PI_FLAG_AUTO;
    pi->nd_opt_pi_valid_time = htonl(60);
    pi->nd_opt_pi_preferred_time = htonl(30);
    inet_pton(AF_INET6, prefix, &pi->nd_opt_pi_prefix);
    struct sockaddr_in6 d = {.sin6_family = AF_INET6, .sin6_scope_id = idx};
    inet_pton(AF_INET6, "ff02::1", &d.sin6_addr);
    for (int i = 0; i < 3; i++) {
        if (sendto(s, p, sizeof p, 0, (void *)&d, sizeof d) < 0) { perror("sendto"); return 1; }
        usleep(50000);
    }
    puts("ra sent");
    return 0;
}

/* ARP replies "CLAIM is at my MAC" to TELL, COUNT times, 100 ms apart. */
static int arp(const char *claim, const char *tell, int count) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ARP));
    if (s < 0) { perror("socket"); return 1; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "eth0");
    if (ioctl(s, SIOCGIFINDEX, &ifr) < 0) { perror("ifindex"); return 1; }
    int idx = ifr.ifr_ifindex;
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { perror("hwaddr"); return 1; }
    unsigned char mac[6], f[42];
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    memset(f, 0xff, 6);
    memcpy(f + 6, mac, 6);
    f[12] = 8; f[13] = 6;
    unsigned char *a = f + 14;
    a[0] = 0; a[1] = 1; a[2] = 8; a[3] = 0; a[4] = 6; a[5] = 4; a[6] = 0; a[7] = 2;
    memcpy(a + 8, mac, 6);
    inet_pton(AF_INET, claim, a + 14);
    memset(a + 18, 0xff, 6);
    inet_pton(AF_INET, tell, a + 24);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = idx, .sll_halen = 6};
    memset(sll.sll_addr, 0xff, 6);
    for (int i = 0; i < count; i++) {
        if (sendto(s, f, sizeof f, 0, (void *)&sll, sizeof sll) < 0) { perror("sendto"); return 1; }
        usleep(100000);
    }
    puts("arp sent");
    return 0;
}

/* A UDP datagram "spoofed" from SRC to DST:PORT through a raw IP socket. */
static int udp(const char *src, const char *dst, int port) {
    int r = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (r < 0) { perror("socket"); return 1; }
    unsigned char pkt[28 + 7];
    memset(pkt, 0, sizeof pkt);
    struct iphdr *ip = (void *)pkt;
    ip->ihl = 5; ip->version = 4; ip->ttl = 64; ip->protocol = IPPROTO_UDP; ip->tot_len = htons(sizeof pkt);
    inet_pton(AF_INET, src, &ip->saddr);
    inet_pton(AF_INET, dst, &ip->daddr);
    struct udphdr *u = (void *)(pkt + 20);
    u->source = htons(5353); u->dest = htons(port); u->len = htons(8 + 7);
    memcpy(pkt + 28, "spoofed", 7);
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_addr.s_addr = ip->daddr};
    for (int i = 0; i < 5; i++) {
        if (sendto(r, pkt, sizeof pkt, 0, (void *)&d, sizeof d) < 0) { perror("sendto"); return 1; }
        usleep(20000);
    }
    puts("udp sent");
    return 0;
}

static int packet_socket(int proto, unsigned char mac[6]) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(proto));
    if (s < 0) { perror("socket"); return -1; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "eth0");
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { perror("hwaddr"); return -1; }
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(proto),
                              .sll_ifindex = (int)if_nametoindex("eth0")};
    if (bind(s, (void *)&sll, sizeof sll) < 0) { perror("bind"); return -1; }
    return s;
}

static unsigned short csum(const unsigned char *b, int n) {
    unsigned long sum = 0;
    for (int i = 0; i + 1 < n; i += 2) sum += (b[i] << 8) | b[i + 1];
    if (n & 1) sum += b[n - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return ~sum & 0xffff;
}

/* An unsolicited neighbour advertisement (override) from SRC: "TARGET is at my MAC". */
static int na(const char *target, const char *src) {
    unsigned char mac[6], f[14 + 40 + 32], ph[40 + 32];
    int s = packet_socket(ETH_P_IPV6, mac);
    if (s < 0) return 1;
    memset(f, 0, sizeof f);
    unsigned char dst[6] = {0x33, 0x33, 0, 0, 0, 1};
    memcpy(f, dst, 6); memcpy(f + 6, mac, 6); f[12] = 0x86; f[13] = 0xdd;
    unsigned char *ip = f + 14, *ic = f + 54;
    ip[0] = 0x60; ip[5] = 32; ip[6] = 58; ip[7] = 255;
    inet_pton(AF_INET6, src, ip + 8);
    inet_pton(AF_INET6, "ff02::1", ip + 24);
    ic[0] = 136; ic[4] = 0x20;
    inet_pton(AF_INET6, target, ic + 8);
    ic[24] = 2; ic[25] = 1; memcpy(ic + 26, mac, 6);
    memcpy(ph, ip + 8, 32); memset(ph + 32, 0, 8); ph[35] = 32; ph[39] = 58; memcpy(ph + 40, ic, 32);
    unsigned short c = csum(ph, sizeof ph);
    ic[2] = c >> 8; ic[3] = c & 0xff;
    for (int i = 0; i < 3; i++) {
        if (send(s, f, sizeof f, 0) < 0) { perror("send"); return 1; }
        usleep(50000);
    }
    puts("na sent");
    return 0;
}

/* A UDP datagram from SRC to the host's 127.0.0.1:PORT, framed to the bridge's MAC BRMAC. */
static int loopback(int port, const char *brmac, const char *src) {
    unsigned char mac[6], f[14 + 20 + 8 + 8];
    int s = packet_socket(ETH_P_IP, mac);
    if (s < 0) return 1;
    memset(f, 0, sizeof f);
    if (sscanf(brmac, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", f, f + 1, f + 2, f + 3, f + 4, f + 5) != 6) return 2;
    memcpy(f + 6, mac, 6); f[12] = 8; f[13] = 0;
    unsigned char *ip = f + 14, *u = f + 34;
    ip[0] = 0x45; ip[3] = 36; ip[8] = 64; ip[9] = 17;
    inet_pton(AF_INET, src, ip + 12);
    inet_pton(AF_INET, "127.0.0.1", ip + 16);
    unsigned short c = csum(ip, 20);
    ip[10] = c >> 8; ip[11] = c & 0xff;
    u[0] = 0x9c; u[1] = 0x40; u[2] = port >> 8; u[3] = port & 0xff; u[5] = 16;  /* no checksum */
    memcpy(u + 8, "loopback", 8);
    for (int i = 0; i < 3; i++) {
        if (send(s, f, sizeof f, 0) < 0) { perror("send"); return 1; }
        usleep(20000);
    }
    puts("loopback sent");
    return 0;
}

static void try_socket(const char *what, int family, int type, int proto) {
    int s = socket(family, type, proto);
    if (s < 0) printf("%s: errno %d\n", what, errno);
    else { printf("%s: ok\n", what); close(s); }
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "ra")) return ra(argv[2]);
    if (argc == 5 && !strcmp(argv[1], "arp")) return arp(argv[2], argv[3], atoi(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "udp")) return udp(argv[2], argv[3], atoi(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "na")) return na(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "lo")) return loopback(atoi(argv[2]), argv[3], argv[4]);
    if (argc == 2 && !strcmp(argv[1], "sockets")) {
        try_socket("packet", AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
        try_socket("raw4", AF_INET, SOCK_RAW, IPPROTO_RAW);
        try_socket("raw6", AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
        try_socket("udp4", AF_INET, SOCK_DGRAM, 0);
        return 0;
    }
    fprintf(stderr, "usage: hostile ra PREFIX | arp CLAIM TELL COUNT | udp SRC DST PORT | sockets\n");
    return 2;
}
"""


@pytest.fixture(scope="module")
def hostile_rootfs(busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox rootfs with ``/hostile`` (``HOSTILE_C``, static)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the hostile guest program")
    d = tmp_path_factory.mktemp("hostile")
    (d / "hostile.c").write_text(HOSTILE_C)
    subprocess.run(
        [
            gcc,
            "-static",
            "-O2",
            "-Wall",
            "-Werror",
            "-o",
            str(busybox_rootfs / "hostile"),
            str(d / "hostile.c"),
        ],
        check=True,
    )
    return busybox_rootfs


def _neigh_mac(addr: str, dev: str) -> str | None:
    out = subprocess.run(
        ["ip", "neigh", "show", addr, "dev", dev], capture_output=True, text=True
    ).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def _knock(addr: str, port: int, timeout: float = 10) -> None:
    """Connect to ``addr:port`` (a guest's ``nc -l``), retrying until it listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((addr, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _up(g, pattern: str = "UP") -> None:  # (g: conftest's Guest)
    """Wait for the guest's ``pattern`` line; berth's stderr in the failure when it ended first."""
    try:
        g.wait_for(pattern)
    except AssertionError as exc:
        if g.proc.poll() is None:
            raise
        raise AssertionError(f"{exc}; {g.finish()}") from None


def _addrs6(dev: str) -> str:
    return subprocess.run(["ip", "-6", "addr", "show", "dev", dev], capture_output=True, text=True).stdout


def test_guests_cannot_spoof_nor_configure_the_host(hostile_rootfs, guests, net_env, prefix) -> None:  # noqa: F811
    """Guest ``a`` (CAP_NET_RAW, berth's default) claims ``b``'s address by ARP, sends UDP from
    ``b``'s address, and advertises itself as an IPv6 router with an autonomous prefix: the host
    keeps ``b``'s MAC, gets only ``a``'s own datagram, and takes no address from the
    advertisement (the bridge berth made has accept_ra=0), nor does ``b`` (the bridge drops a
    guest's advertisements)."""
    bridge = net_env["BERTH_BRIDGE"]
    net4 = ipaddress.IPv4Network(net_env["BERTH_SUBNET"])
    ip_a, ip_b, gw = str(net4[10]), str(net4[11]), str(net4[1])
    ula = f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::"
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("0.0.0.0", 0))
    port = sink.getsockname()[1]
    sink.settimeout(0.2)
    wait = "echo UP; nc -l -p 9 </dev/null >/dev/null"
    try:
        b = guests(
            "--rootfs", str(hostile_rootfs), "--net", "bridge", "--ip", ip_b, "--",
            "sh", "-c", f"{wait}; ip -6 addr show dev eth0",
        )  # fmt: skip
        a = guests(
            "--rootfs", str(hostile_rootfs), "--net", "bridge", "--ip", ip_a, "--", "sh", "-c",
            f"{wait}; /hostile arp {ip_b} {gw} 5; /hostile udp {ip_b} {gw} {port}; /hostile udp {ip_a} {gw} {port}; "
            "while ip -6 addr show dev eth0 | grep -q tentative; do sleep 0.05; done; "
            f"/hostile ra {ula}; echo DONE",
        )  # fmt: skip
        _up(b)
        # the host's entry for b (b answers with a reset: nothing listens on port 1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip_b, 1), timeout=5).close()
        since = time.monotonic()
        mac_b = _neigh_mac(ip_b, bridge)
        assert mac_b == "02:42:" + ":".join(f"{int(o):02x}" for o in ip_b.split(".")), mac_b
        _up(a)
        time.sleep(max(0.0, since + 1.1 - time.monotonic()))  # past its locktime: else ARP is ignored
        _knock(ip_a, 9)  # go
        _up(a, "DONE")
        got = []
        deadline = time.monotonic() + 3
        while ip_a not in {src for _, src in got} and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                data, (src, _) = sink.recvfrom(64)
                got.append((data, src))
        time.sleep(0.2)  # the advertisement came after the datagrams
    finally:
        sink.close()
    wrong = []  # (each checked: each fails on its own without its fix)
    if _neigh_mac(ip_b, bridge) != mac_b:
        wrong.append(f"the host's entry for {ip_b} is {_neigh_mac(ip_b, bridge)}, not {mac_b}")
    if {src for _, src in got} != {ip_a}:  # a's own datagrams arrive, the forged ones do not
        wrong.append(f"datagrams from {got}")
    if ula.rstrip(":") in _addrs6(bridge):
        wrong.append(f"the bridge took an address from the advertisement: {_addrs6(bridge)}")
    for key in ("accept_ra", "autoconf", "accept_redirects"):
        if Path(f"/proc/sys/net/ipv6/conf/{bridge}/{key}").read_text().strip() != "0":
            wrong.append(f"{key} is not 0")
    _knock(ip_b, 9)
    res_a, res_b = a.finish(), b.finish()
    assert res_a.returncode == 0 and res_b.returncode == 0 and "inet6" in res_b.stdout, (res_a, res_b)
    if ula.rstrip(":") in res_b.stdout:  # the other guests take no advertisement from a guest either
        wrong.append(f"guest b took an address from the advertisement: {res_b.stdout}")
    assert not wrong, wrong
    _assert_nothing_left(prefix)


def test_guest_cannot_advertise_anothers_ipv6_nor_reach_host_loopback(
    hostile_rootfs,
    guests,  # noqa: F811
    net_env,  # noqa: F811
    prefix,
) -> None:
    """Guest ``a`` sends a neighbour advertisement (from its own link-local, which passes the
    source check) saying ``b``'s IPv6 address is at its MAC, and a UDP datagram to the host's
    127.0.0.1 framed to the bridge (berth's bridges have route_localnet): the host's entry for
    ``b`` keeps ``b``'s MAC, and the loopback-only listener gets nothing (R14)."""
    from berth.net.nft import link_local

    bridge = net_env["BERTH_BRIDGE"]
    net4 = ipaddress.IPv4Network(net_env["BERTH_SUBNET"])
    ip_a, ip_b = str(net4[12]), str(net4[13])
    mac_a = "02:42:" + ":".join(f"{int(o):02x}" for o in ip_a.split("."))
    mac_b = "02:42:" + ":".join(f"{int(o):02x}" for o in ip_b.split("."))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    sink.settimeout(0.3)
    wait = "nc -l -p 9 </dev/null >/dev/null"
    try:
        b = guests(
            "--rootfs", str(hostile_rootfs), "--net", "bridge", "--ip", ip_b, "--", "sh", "-c",
            "while ip -6 addr show dev eth0 | grep -q tentative; do sleep 0.05; done; "
            f"echo ADDR $(ip -6 -o addr show dev eth0 scope global | awk '{{print $4}}'); {wait}",
        )  # fmt: skip
        line = b.wait_for("ADDR")
        ip6_b = line.split()[1].split("/")[0]
        # the host's entry for b (b answers with a reset: nothing listens on port 1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip6_b, 1), timeout=5).close()
        assert _neigh_mac(ip6_b, bridge) == mac_b
        brmac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
        a = guests(
            "--rootfs", str(hostile_rootfs), "--net", "bridge", "--ip", ip_a, "--", "sh", "-c",
            "while ip -6 addr show dev eth0 | grep -q tentative; do sleep 0.05; done; echo UP; "
            f"{wait}; /hostile na {ip6_b} {link_local(mac_a)}; /hostile lo {port} {brmac} {ip_a}; echo DONE",
        )  # fmt: skip
        _up(a)
        _knock(ip_a, 9)  # go
        _up(a, "DONE")
        got = []
        with contextlib.suppress(TimeoutError):
            got.append(sink.recvfrom(64))
    finally:
        sink.close()
    wrong = []
    if _neigh_mac(ip6_b, bridge) != mac_b:
        wrong.append(f"the host's entry for {ip6_b} is {_neigh_mac(ip6_b, bridge)}, not {mac_b}")
    if got:
        wrong.append(f"the host's loopback-only listener got {got}")
    _knock(ip_b, 9)
    assert a.finish().returncode == 0 and b.finish().returncode == 0
    assert not wrong, wrong
    _assert_nothing_left(prefix)


@pytest.mark.parametrize(
    ("caps", "want"),
    [
        ((), {"packet": "errno 1", "raw4": "errno 1", "raw6": "errno 1", "udp4": "ok"}),
        (("--cap-add", "NET_RAW"), {"packet": "ok", "raw4": "errno 1", "raw6": "errno 1", "udp4": "ok"}),
    ],
)
def test_ip_mode_has_no_raw_sockets(hostile_rootfs, guests, net_env, prefix, caps, want) -> None:  # noqa: F811
    """On the host's stack (``--net ip:``) no raw socket, even with CAP_NET_RAW (the sock_create
    BPF program); no packet socket unless the user gave CAP_NET_RAW back."""
    own = str(ipaddress.IPv4Network(net_env["BERTH_SUBNET"])[30])
    g = guests("--rootfs", str(hostile_rootfs), "--net", f"ip:{own}", *caps, "--", "/hostile", "sockets")
    res = g.finish(timeout=20)
    assert res.returncode == 0, res
    assert {k: res.field(k) for k in want} == want, res
    _assert_nothing_left(prefix)


def _refused(env: dict[str, str], field: str, *args: str) -> str:
    r = subprocess.run(
        [*berth_cmd(), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 125 and len(lines) == 1 and f"{field}: " in lines[0], (r.returncode, r.stderr)
    return lines[0]


def _bridge_addrs(bridge: str) -> str:
    return subprocess.run(["ip", "-4", "addr", "show", "dev", bridge], capture_output=True, text=True).stdout


def test_subnet_and_bridge_refused_at_create(net_env, prefix) -> None:  # noqa: F811
    """A subnet that cannot be the guests' or overlaps an address of the host, a bridge name the
    host gives to a link that is not a bridge: refused by ``berth create`` in one line naming the
    field, nothing made (no guest, no file for the bridge)."""
    env, store = net_env, Path(net_env["BERTH_ROOT"])
    x = f"{prefix}-x{secrets.token_hex(2)}"
    for bad in ("0.0.0.0/0", "169.254.1.0/24"):  # (the others: tests/unit/test_net_hardening_rules.py)
        _refused(env, "subnet", "create", x, "--subnet", bad, "--cmd", "true")
    link = f"{prefix}dm"  # a link of the host's that is no bridge
    taken = free_subnet()
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p"], check=True)
    try:
        subprocess.run(
            ["ip", "addr", "add", f"{ipaddress.IPv4Network(taken)[9]}/32", "dev", link], check=True
        )
        for name in ("lo", link):
            assert f"{name} is a" in _refused(env, "bridge", "create", x, "--bridge", name, "--cmd", "true")
        line = _refused(env, "subnet", "create", x, "--subnet", taken, "--cmd", "true")
        assert "overlaps the host's address" in line, line
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)
    assert not (store / "guests" / x).exists()
    assert (
        not [f for f in (store / "net").glob("*") if f.name.startswith(("lo.", f"{link}."))]
        if (store / "net").is_dir()
        else True
    )
    _assert_nothing_left(prefix)


def test_subnet_checked_on_an_existing_bridge(prefix: str) -> None:
    """:func:`berth.net.bridge.ensure` on a bridge that exists already (another guest's) checks the
    subnet too: an address of the host's on another link that appeared after the create."""
    from pyroute2 import IPRoute

    from berth.errors import UsageError
    from berth.net import bridge

    br, link = f"{prefix}brE", f"{prefix}dn"
    mine, taken = free_subnet(), free_subnet()
    assert mine != taken
    subprocess.run(["ip", "link", "add", br, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p"], check=True)
    try:
        subprocess.run(
            ["ip", "addr", "add", f"{ipaddress.IPv4Network(taken)[1]}/24", "dev", link], check=True
        )
        with IPRoute() as ipr:
            added: list[str] = []
            bridge.ensure(ipr, br, mine, added=added)
            assert added == [f"{ipaddress.IPv4Network(mine)[1]}/24"]
            with pytest.raises(UsageError) as e:
                bridge.ensure(ipr, br, taken, ours=added)
            assert e.value.field == "subnet" and "overlaps" in str(e.value)
            bridge.ensure(ipr, br, mine, ours=added)  # its own gateway: fine
    finally:
        subprocess.run(["ip", "link", "del", br], check=False)
        subprocess.run(["ip", "link", "del", link], check=False)
    _assert_nothing_left(prefix)


def test_a_subnets_gateway_goes_with_its_last_guest(hostile_rootfs, guests, net_env, prefix) -> None:  # noqa: F811
    """A guest on the bridge with a ``--subnet`` of its own: the gateway address berth added for it
    goes with it, while the bridge stays for the other guest."""
    bridge, extra = net_env["BERTH_BRIDGE"], free_subnet()
    assert extra != net_env["BERTH_SUBNET"]
    ip_a = str(ipaddress.IPv4Network(net_env["BERTH_SUBNET"])[10])
    ip_c = str(ipaddress.IPv4Network(extra)[10])
    wait = "echo UP; nc -l -p 9 </dev/null >/dev/null"
    a = guests("--rootfs", str(hostile_rootfs), "--net", "bridge", "--ip", ip_a, "--", "sh", "-c", wait)
    c = guests(
        "--rootfs",
        str(hostile_rootfs),
        "--net",
        "bridge",
        "--subnet",
        extra,
        "--ip",
        ip_c,
        "--",
        "sh",
        "-c",
        wait,
    )
    _up(a)
    _up(c)
    gw_a = f"{ipaddress.IPv4Network(net_env['BERTH_SUBNET'])[1]}/24"
    gw_c = f"{ipaddress.IPv4Network(extra)[1]}/24"
    assert gw_a in _bridge_addrs(bridge) and gw_c in _bridge_addrs(bridge)
    _knock(ip_c, 9)
    assert c.finish().returncode == 0
    assert gw_c not in _bridge_addrs(bridge) and gw_a in _bridge_addrs(bridge), _bridge_addrs(bridge)
    _knock(ip_a, 9)
    assert a.finish().returncode == 0
    _assert_nothing_left(prefix)


def test_subnet_check_ignores_broader_routes_through_a_gateway(prefix: str) -> None:
    """A VPN's split default (0.0.0.0/1 and 128.0.0.0/1 through a gateway) or a blackhole
    broader than the subnet is no conflict (the bridge's own route wins for it, as over the
    default route: R14, every subnet was refused on such a host); a network the host is on
    directly, or a narrower route, still is.  In a network namespace of the test's own."""
    from pyroute2 import NetNS

    from berth.errors import UsageError
    from berth.net.bridge import check_subnet_free

    ns = f"{prefix}ns{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            "link add v0 type veth peer name v1",
            "addr add 192.0.2.50/24 dev v0",
            "link set v0 up",
            "link set v1 up",
            "route add 0.0.0.0/1 via 192.0.2.1",
            "route add 128.0.0.0/1 via 192.0.2.1",
            "route add blackhole 10.0.0.0/8",
            "route add 10.241.8.7/32 via 192.0.2.1",
        ):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        with NetNS(ns) as ipr:
            check_subnet_free(ipr, "10.241.9.0/24", f"{prefix}nobr")  # no error
            for subnet, why in (("192.0.2.0/25", "192.0.2.0/24"), ("10.241.8.0/24", "10.241.8.7/32")):
                with pytest.raises(UsageError, match=f"overlaps the host's (route to|address) {why}"):
                    check_subnet_free(ipr, subnet, f"{prefix}nobr")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
