"""Guest networking benchmark: iperf3 throughput and TCP round-trip latency (1-byte ping-pong)
for host loopback (native), guest->host over veth+bridge, guest<->guest over the bridge and an
ip:ADDR guest (host stack + cgroup BPF), and the peers' guest->host paths: a User-Mode Linux
guest's NIC (vector driver on a tap) and gVisor's netstack (runsc --network=sandbox on a veth
from a netns), as ratios to loopback; then the HTB accuracy table (target vs achieved).

The guests are made with ``berth create`` (busybox) and driven with ``berth exec``; iperf3 and
its libraries (the host's, run through the host's ld.so) and a static ping-pong program are
copied into each guest's own root, so both ends really run inside the guests.  The UML and
gVisor guests run the very same files (bound read-only at the same path), one fresh guest per
measurement (bench/lab/guestnet.py; boot time is not in the figures: iperf3 and the ping-pong
time themselves).  Every object has a random prefix; all traffic stays on loopback, the bench's
bridge, tap and veth, and its guests.

Run as root: ``.venv/bin/python bench/net.py`` (BENCH_SECONDS, BENCH_REPS, BENCH_PINGPONG,
BENCH_MTUS: the bridge MTUs to compare, default ``1500,65535``; BENCH_ONLY=throughput|htb;
BENCH_NET_PEERS: the lab's peers to run, default ``uml,gvisor``, empty for none).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BERTH = str(REPO / ".venv" / "bin" / "berth")
SECONDS = int(os.environ.get("BENCH_SECONDS", "4"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
N_PINGPONG = int(os.environ.get("BENCH_PINGPONG", "10000"))
TAG = f"bn{secrets.token_hex(2)}"
OPT = "/opt/berthbench"

PINGPONG_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
/* pp s ADDR PORT: answer each byte with a byte (one connection); pp c ADDR PORT N: N round trips */
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &a.sin_addr);
    int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
    char b = 'x';
    if (argv[1][0] == 's') {
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (void *)&a, sizeof a) || listen(s, 1)) { perror("bind"); return 1; }
        printf("LISTENING\n"); fflush(stdout);
        int c = accept(s, 0, 0);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        while (read(c, &b, 1) == 1) if (write(c, &b, 1) != 1) break;
        return 0;
    }
    long n = atol(argv[4]);
    for (int i = 0; connect(s, (void *)&a, sizeof a); i++) {
        if (i > 100) { perror("connect"); return 1; }
        usleep(20000); close(s); s = socket(AF_INET, SOCK_STREAM, 0);
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++)
        if (write(s, &b, 1) != 1 || read(s, &b, 1) != 1) { perror("pingpong"); return 1; }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.2f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n / 1000.0);
    return 0;
}
"""


def _free_subnet(third: int = 0) -> str:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    routes = []
    for line in out.splitlines():
        words = line.split()
        dst = words[1] if words[0] in ("broadcast", "local", "unreachable") else words[0]
        with contextlib.suppress(ValueError):
            if dst != "default":
                routes.append(ipaddress.IPv4Network(dst, strict=False))
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(250)}.0/24")
        if not any(r.overlaps(net) for r in routes):
            return str(net)
    raise SystemExit("no free 10.x /24 for the bench")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(
        self, tmp: Path, link_rate: str = "10gbit", *, tag: str = TAG, mtu: int | None = None
    ) -> None:
        self.tmp = tmp
        self.tag = tag
        tmp.mkdir(parents=True, exist_ok=True)
        self.subnet = _free_subnet()
        self.gw = str(ipaddress.IPv4Network(self.subnet)[1])
        self.env = dict(
            os.environ,
            BERTH_ROOT=str(tmp / "store"),
            BERTH_RUN=str(tmp / "run"),
            BERTH_CGROUP_PARENT=tag,
            BERTH_NET_PREFIX=tag,
            BERTH_BRIDGE=f"{tag}br0",
            BERTH_NFT_TABLE=tag,
            BERTH_SUBNET=self.subnet,
            BERTH_NET_LINK_RATE=link_rate,
        )
        if mtu is not None:
            self.env["BERTH_NET_MTU"] = str(mtu)
        self.names: list[str] = []
        self.pp = str(tmp / "pp")

    def berth(self, *args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("check", True)
        return subprocess.run([BERTH, *args], env=self.env, capture_output=True, text=True, **kw)

    def guest(self, name: str, *net: str) -> str:
        name = f"{self.tag}-{name}"
        self.berth(
            "create", name, *net, "--userns", "host", "--no-lxcfs", "--cmd", "sleep 100000"
        )  # host ids: binaries are copied in
        self.names.append(name)
        self.berth("start", name)
        self._inject(name)
        return name

    def info(self, name: str) -> dict:
        return json.loads(self.berth("info", name, "--json").stdout)

    def _inject(self, name: str) -> None:
        """iperf3, its libraries, the host's ld.so and the ping-pong program into the guest's root."""
        pid = self.info(name)["pid"]
        dest = Path(f"/proc/{pid}/root{OPT}")
        dest.mkdir(parents=True, exist_ok=True)
        self._copy_tools(dest)

    def _copy_tools(self, dest: Path) -> None:
        """iperf3 with its libraries and ld.so, and the ping-pong program, into ``dest``."""
        libs = subprocess.run(["ldd", "/usr/bin/iperf3"], capture_output=True, text=True, check=True).stdout
        for line in libs.splitlines():
            path = line.split("=>")[-1].split("(")[0].strip()
            if path.startswith("/"):
                shutil.copy2(path, dest / os.path.basename(path))
        shutil.copy2("/usr/bin/iperf3", dest / "iperf3")
        shutil.copy2(self.pp, dest / "pp")

    def iperf_in(self, name: str) -> list[str]:
        return [
            BERTH,
            "exec",
            name,
            "--",
            f"{OPT}/ld-linux-x86-64.so.2",
            "--library-path",
            OPT,
            f"{OPT}/iperf3",
        ]

    def pp_in(self, name: str) -> list[str]:
        return [BERTH, "exec", name, "--", f"{OPT}/pp"]

    def opt_dir(self) -> Path:
        """The files _inject copies into guests, in one host directory (for the lab's peers)."""
        d = self.tmp / "opt"
        d.mkdir(exist_ok=True)
        self._copy_tools(d)
        return d

    def cleanup(self) -> None:
        for n in self.names:
            self.berth("destroy", "--force", n, check=False)
        pid = self.tmp / "run" / ".guests" / "guestd.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid.read_text()), signal.SIGTERM)
        self.berth("gc", check=False)
        from berth.cgroups import detect

        for top in detect().mountpoints():  # the bench's own cgroup parent, in every hierarchy
            with contextlib.suppress(OSError):
                Path(top, self.tag).rmdir()


def _server(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    time.sleep(0.6)
    return p


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def iperf(b: Bench, server: list[str], client: list[str], host: str, *, seconds: int = SECONDS) -> float:
    """Gbit/s received by the server, one TCP stream."""
    port = _port()
    srv = _server([*server, "-s", "-1", "-p", str(port)], b.env)
    try:
        out = subprocess.run(
            [*client, "-c", host, "-p", str(port), "-t", str(seconds), "-J"],
            env=b.env,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        try:
            data = json.loads(out.stdout)
        except ValueError:
            raise RuntimeError(
                f"iperf3 client: {out.stderr.strip() or out.stdout.strip() or out.returncode}"
            ) from None
        if "error" in data:
            raise RuntimeError(data["error"])
        return data["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        _stop(srv)


def pingpong(b: Bench, server: list[str], client: list[str], bind: str, host: str) -> float:
    """Mean round trip in microseconds (N 1-byte request/response over one TCP connection)."""
    port = _port()
    srv = _server([*server, "s", bind, str(port)], b.env)
    try:
        out = subprocess.run(
            [*client, "c", host, str(port), str(N_PINGPONG)],
            env=b.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip() or out.stdout.strip())
        return float(out.stdout.split()[-1])
    finally:
        _stop(srv)


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


MTUS = [int(m) for m in os.environ.get("BENCH_MTUS", "1500,65535").split(",") if m]


def _compile_pp(path: str) -> None:
    subprocess.run(
        ["gcc", "-O2", "-static", "-o", path, "-x", "c", "-"], input=PINGPONG_C, text=True, check=True
    )


# The same iperf3 and ping-pong files the berth guests run, at the same path in the peer guest.
PEER_IPERF = [f"{OPT}/ld-linux-x86-64.so.2", "--library-path", OPT, f"{OPT}/iperf3"]


def _peer_paths(stack: contextlib.ExitStack, b: Bench, host_iperf: list[str], host_pp: list[str]) -> list:
    """The UML and gVisor guest->host paths (skipped, with the reason printed, where unavailable):
    a tap or a netns+veth each, a fresh guest per measurement (bench/lab/guestnet.py)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.lab import guestnet, gvisor, uml

    binds = [(str(b.opt_dir()), OPT)]
    paths = []
    chosen = os.environ.get("BENCH_NET_PEERS", "uml,gvisor").split(",")
    for key, label, lab, link in (
        ("uml", "UML guest->host (tap)", uml, guestnet.tap),
        ("gvisor", "gVisor guest->host (veth)", gvisor, guestnet.netns),
    ):
        why = lab.available() if key in chosen else "left out of this run (BENCH_NET_PEERS)"
        if why is not None:
            print(f"{label}: not run: {why}")
            continue
        ln = stack.enter_context(link())
        pre = guestnet.prefix(ln, binds=binds, timeout=SECONDS + 40)
        paths.append(
            (label, b, host_iperf, [*pre, *PEER_IPERF], host_pp, [*pre, f"{OPT}/pp"], ln.host_ip, ln.host_ip)
        )
    return paths


def _why(e: Exception) -> str:
    """An exception's last line (a failed guest's stderr ends with its reason)."""
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else type(e).__name__


def throughput_table(tmp: Path) -> None:
    """Loopback, then per bridge MTU (BENCH_MTUS, one bench bridge each, all up at once) the
    guest->host and guest<->guest paths, and the ip: guest; the repetitions are interleaved
    (every path once per round) so a change of load hits all paths alike."""
    benches = [Bench(tmp / f"tput{i}", tag=f"{TAG}{i}", mtu=m) for i, m in enumerate(MTUS)]
    for b in benches:
        _compile_pp(b.pp)
    host_iperf, host_pp = ["iperf3"], [benches[0].pp]
    stack = contextlib.ExitStack()
    try:
        b0 = benches[0]
        paths = [
            ("host loopback (native)", b0, host_iperf, host_iperf, host_pp, host_pp, "127.0.0.1", "127.0.0.1")
        ]
        for b, mtu in zip(benches, MTUS, strict=True):
            ga, gb = b.guest("a"), b.guest("b")
            ip_b = b.info(gb)["ips"][0]
            ip6_a = b.info(ga).get("ip6")
            if ip6_a and mtu == MTUS[-1]:  # IPv6 on the last bridge (no ping-pong: the program is IPv4)
                gw6 = str(ipaddress.IPv6Interface(f"{ip6_a}/64").network[1])
                paths.append((f"guest->host IPv6 mtu {mtu}", b, host_iperf, b.iperf_in(ga), [], [], gw6, gw6))
            paths += [
                (f"guest->host mtu {mtu}", b, host_iperf, b.iperf_in(ga), host_pp, b.pp_in(ga), b.gw, b.gw),
                (
                    f"guest<->guest mtu {mtu}",
                    b,
                    b.iperf_in(gb),
                    b.iperf_in(ga),
                    b.pp_in(gb),
                    b.pp_in(ga),
                    ip_b,
                    ip_b,
                ),
            ]
        # The ip: guest's client connects from its own address (in the bridge's subnet, beside
        # bridge guests: berth's masquerade leaves it alone) to the host's 127.0.0.1.
        gi = b0.guest("i", "--net", f"ip:{ipaddress.IPv4Network(b0.subnet)[200]}")
        paths.append(
            (
                "ip:ADDR guest (BPF)",
                b0,
                host_iperf,
                b0.iperf_in(gi),
                host_pp,
                b0.pp_in(gi),
                "127.0.0.1",
                "127.0.0.1",
            )
        )
        paths += _peer_paths(stack, b0, host_iperf, host_pp)
        gbps: dict[str, list[float]] = {p[0]: [] for p in paths}
        failed: dict[str, str] = {}
        for _ in range(REPS):
            for name, b, srv, cli, *_rest, host in paths:
                try:
                    gbps[name].append(iperf(b, srv, cli, host))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    failed.setdefault(name, f"iperf3: {_why(e)}")
        rows = []
        for name, b, _s, _c, psrv, pcli, bind, host in paths:
            lat = float("nan")
            try:
                lat = pingpong(b, psrv, pcli, bind, host) if psrv else float("nan")
            except (RuntimeError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
                failed.setdefault(name, f"ping-pong: {_why(e)}")
            got = gbps[name] or [float("nan")]
            rows.append((name, statistics.median(got), max(got), lat))
        base_g, base_lat = rows[0][1], rows[0][3]
        print(
            f"\nthroughput (iperf3, 1 TCP stream, {SECONDS}s x {REPS} interleaved, median) and latency "
            f"({N_PINGPONG} x 1-byte TCP ping-pong)"
        )
        print(f"{'path':<26}{'Gbit/s':>9}{'max':>8}{'ratio':>8}{'RTT us':>9}{'ratio':>8}")
        for name, med, mx, lat in rows:
            print(f"{name:<26}{med:>9.2f}{mx:>8.2f}{med / base_g:>8.2f}{lat:>9.1f}{lat / base_lat:>8.2f}")
        for name, why in failed.items():
            print(f"{name}: failed: {why}")
        print(f"(loadavg {_load()})")
    finally:
        stack.close()
        for b in benches:
            b.cleanup()


def htb_table(tmp: Path) -> None:
    """Guests sending to the host at full speed through their HTB classes (link = 400mbit)."""
    b = Bench(tmp / "htb", link_rate="400mbit")
    _compile_pp(b.pp)
    rows = []
    try:
        ga = b.guest("ha", "--net-rate", "100mbit", "--net-ceil", "200mbit")
        gb = b.guest("hb", "--net-rate", "300mbit")
        secs = max(SECONDS, 5)
        rows.append(
            ("A alone: rate 100 ceil 200", 200, iperf(b, ["iperf3"], b.iperf_in(ga), b.gw, seconds=secs))
        )
        rows.append(
            (
                "B alone: rate 300 ceil 400 (link)",
                400,
                iperf(b, ["iperf3"], b.iperf_in(gb), b.gw, seconds=secs),
            )
        )
        # Both at once: each its rate.
        pa, pb = _port(), _port()
        srvs = [_server(["iperf3", "-s", "-1", "-p", str(p)], b.env) for p in (pa, pb)]
        clients = [
            subprocess.Popen(
                [*b.iperf_in(g), "-c", b.gw, "-p", str(p), "-t", str(secs), "-J"],
                env=b.env,
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for g, p in ((ga, pa), (gb, pb))
        ]
        got = [
            json.loads(c.communicate(timeout=secs + 30)[0])["end"]["sum_received"]["bits_per_second"]
            for c in clients
        ]
        for s in srvs:
            _stop(s)
        rows.append(("A with B: rate 100", 100, got[0] / 1e9))
        rows.append(("B with A: rate 300", 300, got[1] / 1e9))
        b.berth("set", ga, "--net-rate", "40mbit", "--net-ceil", "60mbit")
        rows.append(
            ("A after set (live): ceil 60", 60, iperf(b, ["iperf3"], b.iperf_in(ga), b.gw, seconds=secs))
        )
    finally:
        b.cleanup()
    print(
        f"\nHTB accuracy (guest -> host, IFB egress classes; link 400mbit; bridge MTU {b.env.get('BERTH_NET_MTU', 'default')})"
    )
    print(f"{'configuration':<36}{'target':>9}{'achieved':>10}{'error':>8}")
    for name, target, gbps in rows:
        mbit = gbps * 1000
        print(f"{name:<36}{target:>8}M{mbit:>9.1f}M{(mbit - target) / target:>+8.1%}")
    print(f"(loadavg {_load()})")


def main() -> None:
    if os.geteuid() != 0 or not shutil.which("iperf3"):
        raise SystemExit("bench/net.py: needs root and iperf3 (make setup-test)")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TAG}-"))
    print(f"bench/net.py  {TAG}  loadavg {_load()}  {os.cpu_count()} CPUs")
    try:
        if os.environ.get("BENCH_ONLY") != "htb":
            throughput_table(tmp)
        if os.environ.get("BENCH_ONLY") != "throughput":
            htb_table(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
