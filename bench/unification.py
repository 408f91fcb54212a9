"""Unification (VServer's shared files, by overlayfs): disk and memory of 1 vs N guests of one
template.

    .venv/bin/python bench/unification.py [-n 1 50] [--template busybox] [--cmd 'sleep 100000000']

Each N runs in a fresh store and state root with its own cgroup parent; the guests are created,
started, measured, then destroyed.

Disk:
* template: what the template's rootfs takes (each inode once);
* per guest: what each guest's own directory takes (upper + work + config + log): its cost;
* full copies: what N private copies of the template would take, for comparison.

Memory (page cache dropped before the guests start):
* page cache growth (``Cached`` of /proc/meminfo): the template's files read by N guests are
  cached once — overlayfs maps the lower layer's file, so all guests share its pages;
* PSS of the guests' processes (/proc/PID/smaps_rollup) summed, per guest, and their RSS: RSS
  counts shared pages in full for each process, PSS divides them among the sharers;
* the busybox text: RSS and PSS of every mapping of the template's busybox binary, summed over the
  guests' processes; PSS ≈ RSS / (processes mapping it) when the pages are shared.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # run as a script (bench/ is on sys.path), or imported as bench.unification
    from density import cgroup_pids, drop_caches, meminfo, remove_cgroup_dirs
except ImportError:
    from bench.density import cgroup_pids, drop_caches, meminfo, remove_cgroup_dirs

REPO = Path(__file__).resolve().parent.parent
BERTH = str(REPO / ".venv" / "bin" / "berth")
KIB = 1024


def du(path: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, dirs, files in os.walk(path):
        for n in dirs + files:
            try:
                st = os.lstat(os.path.join(top, n))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def rollup(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        pass
    return out


def mapping(pid: int, suffix: str) -> tuple[int, int, set[tuple[str, str]]]:
    """(RSS, PSS, {(dev, inode)}) of the process's mappings of files whose path ends with ``suffix``."""
    rss = pss = 0
    files: set[tuple[str, str]] = set()
    current = False
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return 0, 0, files
    for line in text.splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            current = len(head) >= 6 and head[5].endswith(suffix)
            if current:
                files.add((head[3], head[4]))
        elif current and head[0] == "Rss:":
            rss += int(head[1]) * 1024
        elif current and head[0] == "Pss:":
            pss += int(head[1]) * 1024
    return rss, pss, files


def run(n: int, template: str, cmd: str, binary: str) -> dict[str, float]:
    tag = f"bu{secrets.token_hex(2)}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    env = dict(os.environ, BERTH_ROOT=str(tmp / "store"), BERTH_RUN=str(tmp / "run"), BERTH_CGROUP_PARENT=tag)

    def berth(*args: str) -> None:
        subprocess.run([BERTH, *args], env=env, check=True, stdout=subprocess.DEVNULL)

    names = [f"{tag}-{i}" for i in range(n)]
    try:
        rootfs = Path(subprocess.run([BERTH, "template", "build", template], env=env, check=True,
                                     capture_output=True, text=True).stdout.strip())  # fmt: skip
        for name in names:
            berth("create", name, "--template", template, "--cmd", cmd)
        berth("list")  # guestd up before the measurement
        time.sleep(0.5)
        drop_caches()
        base = meminfo()
        for i in range(0, n, 50):
            berth("start", *names[i : i + 50])
        time.sleep(2)  # let the guests settle
        now = meminfo()
        pids = cgroup_pids(tag)
        rolls = [rollup(p) for p in pids]
        maps = [mapping(p, binary) for p in pids]
        inodes = set().union(*(m[2] for m in maps)) if maps else set()
        guest_dirs = sum(du(tmp / "store" / "guests" / name) for name in names)
        return {
            "n": n,
            "procs": len(pids),
            "template_disk": du(rootfs),
            "guests_disk": guest_dirs,
            "per_guest_disk": guest_dirs / n,
            "copies_disk": du(rootfs) * n,
            "cache_growth": now["Cached"] - base["Cached"],
            "used_growth": (now["MemTotal"] - now["MemAvailable"])
            - (base["MemTotal"] - base["MemAvailable"]),
            "pss": sum(r.get("Pss", 0) for r in rolls),
            "rss": sum(r.get("Rss", 0) for r in rolls),
            "bin_rss": sum(m[0] for m in maps),
            "bin_pss": sum(m[1] for m in maps),
            "bin_mappers": sum(1 for m in maps if m[0]),
            "bin_inodes": len(inodes),
        }
    finally:
        subprocess.run([BERTH, "destroy", "--force", *names], env=env, capture_output=True, check=False)
        try:
            os.kill(int((tmp / "run" / ".guests" / "guestd.pid").read_text()), 9)
        except (OSError, ValueError):
            pass
        subprocess.run([BERTH, "gc"], env=env, capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        remove_cgroup_dirs(tag)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, nargs="+", default=[1, 50])
    p.add_argument("--template", default="busybox")
    p.add_argument("--cmd", default="sh -c 'sleep 100000000 & exec sleep 100000000'",
                   help="each guest's command (default: two busybox processes)")  # fmt: skip
    p.add_argument("--binary", default="/busybox", help="path suffix of the shared binary to account")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("unification: needs root")
    shlex.split(args.cmd)
    rows = [run(n, args.template, args.cmd, args.binary) for n in args.n]

    def k(v: float) -> str:
        return f"{v / KIB:,.0f} KiB"

    table = [
        ("guests", lambda r: str(r["n"])),
        ("processes", lambda r: str(r["procs"])),
        ("disk: template", lambda r: k(r["template_disk"])),
        ("disk: all guests' own layers", lambda r: k(r["guests_disk"])),
        ("disk: per guest", lambda r: k(r["per_guest_disk"])),
        ("disk: N full copies would be", lambda r: k(r["copies_disk"])),
        ("page cache growth", lambda r: k(r["cache_growth"])),
        ("host used memory growth", lambda r: k(r["used_growth"])),
        ("guest processes RSS (sum)", lambda r: k(r["rss"])),
        ("guest processes PSS (sum)", lambda r: k(r["pss"])),
        ("PSS per guest", lambda r: k(r["pss"] / r["n"])),
        (f"{args.binary} text RSS (sum)", lambda r: k(r["bin_rss"])),
        (f"{args.binary} text PSS (sum)", lambda r: k(r["bin_pss"])),
        (f"{args.binary}: processes / overlay views", lambda r: f"{r['bin_mappers']} / {r['bin_inodes']}"),
    ]
    w = max(len(t[0]) for t in table)
    print(f"unification: template {args.template}, cmd {args.cmd!r}")
    for label, f in table:
        print(f"{label:<{w}}  " + "  ".join(f"{f(r):>14}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
