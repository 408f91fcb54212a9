"""Density: start N idle busybox guests and report the time to start them all, guests per
second and host memory per guest (total, the guests' own processes, and berth's overhead).

    .venv/bin/python bench/density.py [-n 10 100] [--app] [--batch 50]

Each N runs in a fresh store and state root with its own cgroup parent, and everything is
stopped and destroyed afterwards.  Guests are system guests booting busybox init (``--app``:
application guests running ``sleep``).  They are started through ``berth start`` with up to
``--batch`` names per command; guestd (one per state root) starts them concurrently.

Baseline (the same run, just before the guests): runc starting ``--runc`` containers of the same
busybox root filesystem one after another (``runc run -d``, each ``sleep``); ``vs runc`` is berth's
guests/s over runc's containers/s.  Guests are created (not timed) several at a time.

Memory:
* total per guest: growth of the host's used memory (MemTotal - MemAvailable) / N — processes,
  page tables, cgroups, namespaces, overlay mounts: everything the guests cost;
* guest processes: PSS (/proc/PID/smaps_rollup) summed over the guests' processes / N;
* berth overhead: guestd's PSS / N (the only berth process left once the guests run), and the
  kernel-side rest (total - guest processes - guestd).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BERTH = str(REPO / ".venv" / "bin" / "berth")


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


def used() -> int:
    m = meminfo()
    return m["MemTotal"] - m["MemAvailable"]


def pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cgroup_pids(parent: str) -> list[int]:
    """The processes in the cgroup ``parent`` and below it (berth's cgroups: any layout)."""
    from berth.cgroups import open_cgroup

    return sorted(set(open_cgroup(parent).pids()))


def remove_cgroup_dirs(path: str) -> None:
    """rmdir the (empty) cgroup ``path`` in every hierarchy of this host (berth's layout)."""
    from berth.cgroups import detect

    for top in detect().mountpoints():
        try:
            (Path(top) / path).rmdir()
        except OSError:
            pass


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def runc_rate(tag: str, tmp: Path, rootfs: str, count: int) -> float:
    """Containers per second runc starts one after another (``runc run -d``), of ``rootfs``."""
    if count <= 0 or not shutil.which("runc"):
        return 0.0
    spec = json.loads(subprocess.run(["runc", "spec", "--bundle", str(tmp)], capture_output=True, check=True,
                                     text=True).stdout or (tmp / "config.json").read_text())  # fmt: skip
    spec["process"].update(terminal=False, args=["/bin/sleep", "100000000"])
    spec["root"] = {"path": rootfs, "readonly": True}
    root = tmp / "runc-state"
    ids = [f"{tag}-rc{i}" for i in range(count)]
    bundles = []
    for cid in ids:
        b = tmp / "runc" / cid
        b.mkdir(parents=True)
        spec["linux"]["cgroupsPath"] = f"/{tag}-runc/{cid}"
        (b / "config.json").write_text(json.dumps(spec))
        bundles.append(b)
    try:
        t = time.perf_counter()
        for cid, b in zip(ids, bundles, strict=True):
            subprocess.run(["runc", "--root", str(root), "run", "-d", "--bundle", str(b), cid],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)  # fmt: skip
        return count / (time.perf_counter() - t)
    finally:
        for cid in ids:
            subprocess.run(
                ["runc", "--root", str(root), "delete", "-f", cid], capture_output=True, check=False
            )
        remove_cgroup_dirs(f"{tag}-runc")


def run(n: int, app: bool, batch: int, runc: int) -> dict[str, float]:
    tag = f"bd{secrets.token_hex(2)}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    tmp.chmod(0o711)  # guests with their own user namespace reach their layers through it
    env = dict(os.environ, BERTH_ROOT=str(tmp / "store"), BERTH_RUN=str(tmp / "run"), BERTH_CGROUP_PARENT=tag)

    def berth(*args: str) -> None:
        subprocess.run([BERTH, *args], env=env, check=True, stdout=subprocess.DEVNULL)

    names = [f"{tag}-{i}" for i in range(n)]
    warm = f"{tag}-warm"
    cmd = ["--cmd", "sleep 100000000"] if app else []
    try:
        berth("template", "build", "busybox")
        t = time.perf_counter()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:  # density without networking
            list(pool.map(lambda name: berth("create", name, "--net", "none", *cmd), [*names, warm]))
        t_create = time.perf_counter() - t
        rate_runc = runc_rate(tag, tmp, str(tmp / "store" / "templates" / "busybox" / "rootfs"), runc)
        berth("list")  # starts guestd: measure it apart from the guests
        time.sleep(1)
        drop_caches()
        # One guest started and stopped first: the start rate is measured with berth's files
        # (python, its modules, busybox) in the page cache, as on a host that runs guests.
        berth("start", warm)
        berth("stop", "--timeout", "5", warm)
        time.sleep(0.5)
        base = used()
        t = time.perf_counter()
        for i in range(0, n, batch):
            berth("start", *names[i : i + batch])
        t_start = time.perf_counter() - t
        time.sleep(2)  # let inits settle
        grown = used() - base
        pids = cgroup_pids(tag)
        guest_pss = sum(pss(p) for p in pids)
        dpid = int((tmp / "run" / ".guests" / "guestd.pid").read_text())
        daemon_pss = pss(dpid)
        t = time.perf_counter()
        berth("stop", "--timeout", "5", *names)
        t_stop = time.perf_counter() - t
        return {
            "n": n,
            "create_s": t_create,
            "start_s": t_start,
            "guests_per_s": n / t_start,
            "runc_per_s": rate_runc,
            "stop_s": t_stop,
            "procs": len(pids),
            "total_per_guest": grown / n,
            "guest_procs_per_guest": guest_pss / n,
            "guestd_pss": daemon_pss,
            "guestd_per_guest": daemon_pss / n,
            "kernel_rest_per_guest": (grown - guest_pss - daemon_pss) / n,
        }
    finally:
        subprocess.run([BERTH, "destroy", "--force", *names, warm], env=env, capture_output=True, check=False)
        try:
            pid = int((tmp / "run" / ".guests" / "guestd.pid").read_text())
            os.kill(pid, 9)
        except (OSError, ValueError):
            pass
        subprocess.run([BERTH, "gc"], env=env, capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        remove_cgroup_dirs(tag)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, nargs="+", default=[10, 100])
    p.add_argument("--app", action="store_true", help="application guests (sleep) instead of busybox init")
    p.add_argument("--batch", type=int, default=50, help="guests per berth start command")
    p.add_argument("--runc", type=int, default=20, help="containers runc starts for the baseline (0: none)")
    p.add_argument("--berth", help="the berth launcher to measure (default: this tree's)")
    args = p.parse_args()
    global BERTH
    BERTH = args.berth or BERTH
    if os.geteuid() != 0:
        sys.exit("density: needs root")
    kib = 1024
    print(f"{'N':>5} {'start s':>8} {'guests/s':>9} {'runc/s':>7} {'vs runc':>8} {'stop s':>7} {'procs':>6} "
          f"{'total/guest':>12} {'procs/guest':>12} {'guestd':>9} {'guestd/guest':>13} {'kernel/guest':>13}")  # fmt: skip
    for n in args.n:
        r = run(n, args.app, args.batch, args.runc)
        ratio = f"{r['guests_per_s'] / r['runc_per_s']:>7.2f}x" if r["runc_per_s"] else f"{'-':>8}"
        print(
            f"{n:>5} {r['start_s']:>8.2f} {r['guests_per_s']:>9.1f} {r['runc_per_s']:>7.1f} {ratio} "
            f"{r['stop_s']:>7.2f} {r['procs']:>6} "
            f"{r['total_per_guest'] / kib:>9.0f} KiB {r['guest_procs_per_guest'] / kib:>8.0f} KiB "
            f"{r['guestd_pss'] / kib:>5.0f} KiB {r['guestd_per_guest'] / kib:>9.1f} KiB "
            f"{r['kernel_rest_per_guest'] / kib:>9.0f} KiB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
