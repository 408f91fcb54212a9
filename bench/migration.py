"""Migration downtime and total time: an idle guest and guests dirtying 64 MiB and 512 MiB of
memory (each rewritten once a second: 64 MiB/s and 512 MiB/s), live vs stop-and-copy, between
two berth "hosts" on this machine (two stores, state roots, cgroup parents and network
namespaces joined by a veth, all made here and removed after).  Run as root::

    .venv/bin/python bench/migration.py [--quick] [--repeat N] [--guest host|default]

Each case runs N times (default 3); the table has the median and the range of the downtime.

**Downtime** is the time from the last reply before the freeze to the first reply after the
restore, seen by a client pinging the guest's TCP echo server every millisecond over one
connection (which must survive the migration).  The client runs inside the guest, over the
guest's loopback (the default guest, ``--guest default``, has its bridge link too; the host
guest none: one frozen and restored process pair measures both alike).  Being frozen and
restored with the server, the client sees the downtime as the gap between two replies on
CLOCK_REALTIME (the two "hosts" share it; not CLOCK_MONOTONIC, which CRIU restores in a time
namespace with an offset that hides the time the guest was gone); it appends every gap over 5 ms, with when it
ended, to /gaps, and the bench takes the largest that ended during the migration.  **Total** is
``berth migrate``'s wall time (connect to commit).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BERTH = str(REPO / ".venv" / "bin" / "berth")
PREFIX = f"bm{secrets.token_hex(3)}"
PORT = 7799
NET = "10.213.99"
TARGETS = {"idle": 0.200, "64 MiB": 1.0}

GUEST_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static int server(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(s, (void *)&a, sizeof a) || listen(s, 1)) { perror("server"); return 1; }
    int c = accept(s, 0, 0);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char b[64];
    for (;;) { ssize_t n = read(c, b, sizeof b); if (n <= 0) return 0; if (write(c, b, n) != n) return 1; }
}

static int client(int port, const char *gaps, const char *beat) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    while (connect(s, (void *)&a, sizeof a)) { usleep(10000); close(s); s = socket(AF_INET, SOCK_STREAM, 0); }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int g = open(gaps, O_WRONLY | O_CREAT | O_APPEND, 0644), bt = open(beat, O_WRONLY | O_CREAT, 0644);
    double last = now(CLOCK_REALTIME);  /* not MONOTONIC: CRIU restores it with a timens offset */
    struct timespec ms = {0, 1000000};
    for (unsigned long n = 1;; n++) {
        char c = 'p';
        if (write(s, &c, 1) != 1 || read(s, &c, 1) != 1) { dprintf(g, "broken\n"); return 1; }
        double t = now(CLOCK_REALTIME);
        if (t - last > 0.005) dprintf(g, "%.6f %.6f\n", t - last, t);
        last = t;
        if (n % 100 == 0) { char b[32]; int k = snprintf(b, sizeof b, "%20lu\n", n); pwrite(bt, b, k, 0); }
        nanosleep(&ms, 0);
    }
}

static int dirty(long mib) {
    long size = mib << 20, page = 4096;
    char *m = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    for (unsigned char v = 1;; v++) {  /* the whole set once a second, paced per MiB */
        double t0 = now(CLOCK_MONOTONIC);
        for (long i = 0; i < size; i += page) {
            m[i] = v;
            if ((i & ((1 << 20) - 1)) == 0) {
                double due = t0 + (double)i / size, t = now(CLOCK_MONOTONIC);
                if (due > t) usleep((useconds_t)((due - t) * 1e6));
            }
        }
        double t = now(CLOCK_MONOTONIC);
        if (t < t0 + 1) usleep((useconds_t)((t0 + 1 - t) * 1e6));
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "server")) return server(atoi(argv[2]));
    if (argc >= 5 && !strcmp(argv[1], "client")) return client(atoi(argv[2]), argv[3], argv[4]);
    if (argc >= 3 && !strcmp(argv[1], "dirty")) return dirty(atol(argv[2]));
    if (argc >= 2 && !strcmp(argv[1], "idle")) for (;;) pause();
    fprintf(stderr, "usage: guest server PORT | client PORT GAPS BEAT | dirty MIB | idle\n");
    return 2;
}
"""


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


class Host:
    """One berth "host": a store (sharing the templates), a state root, a cgroup parent, a netns."""

    def __init__(self, base: Path, tag: str, templates: Path, netns: str, addr: str) -> None:
        self.store = base / f"store-{tag}"
        self.store.mkdir()
        (self.store / "templates").symlink_to(templates)
        self.run = base / f"run-{tag}"
        self.parent = f"{PREFIX}/{tag}"
        self.netns, self.addr = netns, addr
        self.launcher = BERTH
        self.env = {**os.environ, "BERTH_ROOT": str(self.store), "BERTH_RUN": str(self.run),
                    "BERTH_CGROUP_PARENT": self.parent}  # fmt: skip

    def berth(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", self.launcher, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and p.returncode != 0:
            raise RuntimeError(f"berth {' '.join(args)} -> {p.returncode}: {p.stderr.strip()}")
        return p

    def upper(self, name: str) -> Path:
        return self.store / "guests" / name / "upper"

    def beat(self, name: str) -> int:
        try:
            return int((self.upper(name) / "beat").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def cleanup(self) -> None:
        d = self.store / "guests"
        for name in os.listdir(d) if d.is_dir() else []:
            if not name.startswith("."):
                self.berth("destroy", "--force", name, check=False)
        try:
            os.kill(int((self.run / ".guests" / "guestd.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        self.berth("gc", check=False)


def wait(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return v


# The guest's flags: "host" (host ids, no lxcfs, no network link, no tini: the lightest guest
# CRIU dumps and restores) or "default" (what `berth create` gives: bridged, in its own user
# namespace with idmapped layers, lxcfs, tini; the same bridge and subnet on both "hosts").
GUEST_FLAGS = {
    "host": ("--net", "none", "--userns", "host", "--no-lxcfs", "--no-init"),
    "default": (),
}


def one(a: Host, b: Host, binary: Path, load: int, live: bool, guest: str = "host") -> dict[str, float]:
    name = f"{PREFIX}g{load}{'l' if live else 's'}"
    work = "/bench idle" if load == 0 else f"/bench dirty {load}"
    cmd = f"/bench server {PORT} & sleep 0.1; /bench client {PORT} /gaps /beat & {work} & wait"
    a.berth("create", name, *GUEST_FLAGS[guest], "--", "sh", "-c", cmd)
    up = a.upper(name)
    up.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, up / "bench")
    a.berth("start", name)
    try:
        wait(lambda: a.beat(name) >= 1000, 30, "the guest's client")  # a second of pings
        time.sleep(1.5 if load else 0.5)  # the dirtier has touched its whole set
        recv = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{b.netns}", b.launcher, "receive", "--listen", f"{b.addr}:{PORT}",
             "--allow-host-userns"],
            env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert recv.stdout is not None
        if "listening" not in recv.stdout.readline():
            raise RuntimeError(f"berth receive: {recv.communicate()[1].strip()}")
        t0 = time.time()
        out = a.berth(
            "migrate", name, "--to", f"{b.addr}:{PORT}", "--live" if live else "--stop-and-copy", "--timings"
        )
        t1 = time.time()
        recv.wait(60)
        before = b.beat(name)
        wait(lambda: b.beat(name) > before + 200, 30, "pings on the destination")
        gaps = []
        for line in (b.upper(name) / "gaps").read_text().splitlines():
            if line == "broken":
                raise RuntimeError("the client's connection broke in the migration")
            gap, end = (float(x) for x in line.split())
            if t0 <= end <= t1 + 2:
                gaps.append(gap)
        m = re.search(r"downtime (\d+) ms, total (\d+) ms, ([\d.]+) MiB", out.stdout)
        assert m, out.stdout
        phases = json.loads(out.stdout.strip().splitlines()[-1])
        return {
            "downtime": max(gaps, default=0.0),
            "berth_downtime": int(m[1]) / 1000,
            "total": int(m[2]) / 1000,
            "mib": float(m[3]),
            **{f"phase_{k}": v for k, v in phases.items() if k not in ("downtime", "total", "bytes")},
        }
    finally:
        a.berth("destroy", "--force", name, check=False)
        b.berth("destroy", "--force", name, check=False)


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="idle and 64 MiB only (no 512 MiB)")
    ap.add_argument("--repeat", type=int, default=3, metavar="N", help="runs per case (default 3)")
    ap.add_argument("--loads", metavar="MIB,...", help="dirtied MiB per case, 0 = idle (default 0,64,512)")
    ap.add_argument("--mode", choices=("live", "stop-and-copy", "both"), default="both")
    ap.add_argument(
        "--guest",
        choices=tuple(GUEST_FLAGS),
        default="host",
        help="host: --net none --userns host --no-lxcfs --no-init (default); default: berth create's "
        "defaults (bridged, own user namespace, lxcfs, tini)",
    )
    ap.add_argument(
        "--compare",
        metavar="LAUNCHER",
        help="another berth launcher (an older tree): each run of a case alternates between it "
        "and this tree's, and the table has a row for each",
    )
    args = ap.parse_args()
    loads = [0, 64] if args.quick else [0, 64, 512]
    if args.loads:
        loads = [int(x) for x in args.loads.split(",")]
    repeat = args.repeat
    if os.geteuid() != 0:
        print("bench/migration.py: run as root", file=sys.stderr)
        return 1
    modes = {"live": (True,), "stop-and-copy": (False,), "both": (True, False)}[args.mode]
    trees = {"this": BERTH, **({"other": args.compare} if args.compare else {})}
    sys.path.insert(0, str(REPO / "src"))
    from berth.rootfs import template
    from berth.runtime import checkpoint as ck
    from berth.runtime import criu

    criu_path = criu.find()
    base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    ns = (f"{PREFIX}na", f"{PREFIX}nb")
    made: list[str] = []
    hosts: list[Host] = []
    try:
        shared = base / "shared"
        template.build(str(shared), "busybox")
        src = base / "guest.c"
        src.write_text(GUEST_C)
        binary = base / "bench"
        sh("gcc", "-static", "-O2", "-o", str(binary), str(src))
        for n in ns:
            sh("ip", "netns", "add", n)
            made.append(n)
        sh(
            "ip",
            "link",
            "add",
            f"{PREFIX}va",
            "netns",
            ns[0],
            "type",
            "veth",
            "peer",
            f"{PREFIX}vb",
            "netns",
            ns[1],
        )
        for n, dev, addr in ((ns[0], f"{PREFIX}va", f"{NET}.1"), (ns[1], f"{PREFIX}vb", f"{NET}.2")):
            sh("ip", "-n", n, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", n, "link", "set", dev, "up")
            sh("ip", "-n", n, "link", "set", "lo", "up")
        a = Host(base, "a", shared / "templates", ns[0], f"{NET}.1")
        b = Host(base, "b", shared / "templates", ns[1], f"{NET}.2")
        hosts += [a, b]
        if args.guest == "default":
            # Its mapped root must reach its layer in the store; lxcfs at a point of ours; one
            # bridge name and subnet (in each host's network namespace).
            os.chmod(base, 0o711)
            for h in hosts:
                os.chmod(h.store, 0o711)
                h.env.update(
                    BERTH_LXCFS=f"/run/{PREFIX}-lxcfs",
                    BERTH_NET_PREFIX=PREFIX[:6],
                    BERTH_BRIDGE=f"{PREFIX}br",
                    BERTH_NFT_TABLE=f"{PREFIX}nft",
                    BERTH_SUBNET=f"{NET.rsplit('.', 1)[0]}.98.0/24",
                )
        rows = []
        for load in loads:
            for live in modes:
                runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
                for _ in range(repeat):
                    for tag, launcher in trees.items():
                        a.launcher = b.launcher = launcher
                        r = one(a, b, binary, load, live, args.guest)
                        runs[tag].append(r)
                        print(json.dumps({"tree": tag, "load_mib": load, "live": live, **r}), file=sys.stderr)
                a.launcher = b.launcher = BERTH
                label = "idle" if load == 0 else f"{load} MiB"
                for tag, rs in runs.items():
                    med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
                    med["lo"] = min(x["downtime"] for x in rs)
                    med["hi"] = max(x["downtime"] for x in rs)
                    mode = "live" if live else "stop-and-copy"
                    rows.append((label, mode if tag == "this" else f"{mode} ({tag})", med))
        why = ck.can_pre_dump(criu_path)
        print(f"{'guest (dirtying/s)':<20}{'mode':<23}{'downtime':>10}{'(range)':>15}{'berth says':>12}"
              f"{'total':>9}{'sent':>10}{'target':>10}{'':>6}")  # fmt: skip
        for label, mode, r in rows:
            target = TARGETS.get(label)
            verdict = "" if target is None else ("ok" if r["downtime"] <= target else "MISS")
            spread = f"({r['lo'] * 1000:.0f}-{r['hi'] * 1000:.0f})"
            print(
                f"{label:<20}{mode:<23}{r['downtime'] * 1000:>8.0f}ms"
                f"{spread:>15}"
                f"{r['berth_downtime'] * 1000:>10.0f}ms"
                f"{r['total']:>8.2f}s{r['mib']:>7.1f}MiB"
                f"{'' if target is None else f'≤{target * 1000:.0f}ms':>10}{verdict:>6}"
            )
        print(f"median of {repeat} runs each.")
        print(
            "phases (median, ms after the freeze; dest_*: the destination's, after the final frame began;"
            " dump_criu, dump_tmpfs, dest_restore_criu: how long CRIU's dump and restore ran by their logs"
            " and berth's copy of the tmpfs mounts took):"
        )
        for label, mode, r in rows:
            ph = " ".join(f"{k[6:]}={r[k] * 1000:.0f}" for k in r if k.startswith("phase_"))
            print(f"  {label:<10}{mode:<23}{ph}")
        print(
            "downtime: the in-guest client's largest gap between replies (every 1 ms) during the migration;"
            " 'berth says': freeze to the destination's report; total: berth migrate's wall time."
        )
        if why:
            print(f"live = pre-copy of the writable layer only: no memory pre-copy here ({why}).")
        return 0
    finally:
        for h in hosts:
            h.cleanup()
        for n in made:
            sh("ip", "netns", "del", n, check=False)
        if args.guest == "default":
            from berth.runtime import lxcfs

            lxcfs.stop(f"/run/{PREFIX}-lxcfs")
        from berth.cgroups import detect

        for top in detect().mountpoints():  # the bench's cgroups, in every hierarchy
            root = Path(top) / PREFIX
            if root.is_dir():
                for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    try:
                        d.rmdir()
                    except OSError:
                        pass
                try:
                    root.rmdir()
                except OSError:
                    pass
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
