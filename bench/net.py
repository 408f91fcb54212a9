"""Network throughput: host loopback (native) vs a bridge guest over veth+bridge vs an ip:ADDR guest
(host stack + cgroup BPF filter), as ratios to loopback.  busybox dd|nc on both ends, so the three
paths pay the same tool overhead.  Run as root: ``.venv/bin/python bench/net.py``."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BERTH = str(REPO / ".venv" / "bin" / "berth")
MB = int(os.environ.get("BENCH_MB", "2000"))
PREFIX = f"bb{secrets.token_hex(3)}"
SUBNET = os.environ.get("BENCH_SUBNET", "10.213.77.0/24")
GW = SUBNET.rsplit(".", 1)[0] + ".1"
GUEST_IP = SUBNET.rsplit(".", 1)[0] + ".50"
SEND = f"dd if=/dev/zero bs=64k count={MB * 16} 2>/dev/null | busybox nc {{host}} {{port}}"


SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
c, _ = s.accept(); left = int(sys.argv[2]); buf = bytearray(1 << 20)
while left > 0:
    n = c.recv_into(buf)
    if not n: break
    left -= n
c.close()
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(cmd: list[str], env: dict[str, str], host: str) -> float:
    port = _port()
    sink = subprocess.Popen(
        ["busybox", "nc", "-l", "-p", str(port)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    time.sleep(0.2)
    t0 = time.monotonic()
    full = [c.replace("{host}", host).replace("{port}", str(port)) for c in cmd]
    subprocess.run(full, env=env, check=True, stdout=subprocess.DEVNULL)
    dt = time.monotonic() - t0
    sink.kill()
    sink.wait()
    return MB * 16 * 65536 * 8 / dt / 1e6


def main() -> None:
    store = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    env = dict(os.environ, BERTH_ROOT=store, BERTH_RUN=f"{store}/run", BERTH_CGROUP_PARENT=PREFIX,
               BERTH_NET_PREFIX=PREFIX, BERTH_BRIDGE=f"{PREFIX}br0", BERTH_NFT_TABLE=PREFIX, BERTH_SUBNET=SUBNET)  # fmt: skip
    holder = subprocess.Popen([BERTH, "run", "--net", "bridge", "--", "sleep", "600"], env=env)
    try:
        time.sleep(2)
        loop = _timed(["sh", "-c", SEND], env, "127.0.0.1")
        veth = _timed([BERTH, "run", "--net", "bridge", "--", "sh", "-c", SEND], env, GW)
        ipm = _timed([BERTH, "run", "--net", f"ip:{GUEST_IP}", "--", "sh", "-c", SEND], env, "127.0.0.1")
    finally:
        holder.terminate()
        holder.wait()
    print(f"{'path':<28}{'Mbit/s':>10}{'ratio':>8}")
    for name, v in (
        ("host loopback (native)", loop),
        ("guest->host veth+bridge", veth),
        ("ip:ADDR (cgroup BPF)", ipm),
    ):
        print(f"{name:<28}{v:>10.0f}{v / loop:>8.2f}")
    print(f"({MB} MB each, dd|nc; includes berth run start-up for the two guest paths)")


if __name__ == "__main__":
    main()
