"""CPU isolation benchmark: fair share, reservation and cap with 1, 2, 4, 8, 16 competing guests.

For each configuration N (run as root, real cgroups, under a private cgroup parent and state root):

* **share**: N guests with shares 100, 200, 300, … (2 busy loops each): target vs achieved
  fraction of what the guests got together, the largest error in percentage points, and
  Jain's fairness index of achieved/target (1.0 = every guest got exactly its target);
* **reserve**: one guest reserving 1 CPU (1 loop) against N others with default shares (2 loops
  each): the CPUs it achieved (normalized to the host's capacity, and absolute);
* **cap**: one guest capped at 0.5 CPU (2 loops) among the N share guests: cap error in %.

Usage: ``python bench/isolation.py [--seconds S] [--sizes 1,2,4,8,16] [--png FILE]``.
Prints a table; writes a PNG with matplotlib if it is importable (else says so).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BERTH = str(REPO / ".venv" / "bin" / "berth")
CPUS = len(os.sched_getaffinity(0))
HOG2 = "while :; do :; done & while :; do :; done"
HOG1 = "while :; do :; done"


def usage(parent: str, name: str) -> int:
    """CPU time (ns) of guest ``name``'s cgroup: v1 cpuacct.usage or v2 cpu.stat usage_usec
    (berth's normalized stats); raises OSError while the cgroup is not there yet."""
    from berth.cgroups import open_cgroup

    got = open_cgroup(f"{parent}/{name}").stats()["cpu"]["usage_ns"]
    if got is None:
        raise FileNotFoundError(f"no CPU usage for the cgroup {parent}/{name} (not made yet?)")
    return got


def run_config(
    env: dict[str, str], guests: dict[str, tuple[list[str], str]], seconds: float
) -> tuple[dict[str, float], float]:
    parent = env["BERTH_CGROUP_PARENT"]
    procs = []
    for name, (flags, cmd) in guests.items():
        argv = [
            BERTH,
            "run",
            "--name",
            name,
            *flags,
            "--",
            "timeout",
            str(int(seconds) + 60),
            "sh",
            "-c",
            cmd,
        ]
        procs.append(
            subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if all(usage(parent, n) > 0 for n in guests):
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("guests did not start")
            time.sleep(0.05)
        time.sleep(1.0)
        u0 = {n: usage(parent, n) for n in guests}
        t0 = time.monotonic()
        time.sleep(seconds)
        u1 = {n: usage(parent, n) for n in guests}
        wall = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            _, err = p.communicate(timeout=30)
            if p.returncode not in (0, 124, 143) and err:
                sys.stderr.write(err.decode(errors="replace"))
    return {n: (u1[n] - u0[n]) / 1e9 for n in guests}, wall


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if xs else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--sizes", default="1,2,4,8,16")
    ap.add_argument("--png", default=str(REPO / "bench" / "isolation.png"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/isolation.py needs root (real cgroups)")
    sizes = [int(s) for s in args.sizes.split(",")]
    tag = f"bbench{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="berth-bench-")
    env = dict(os.environ, BERTH_RUN=f"{tmp}/run", BERTH_CGROUP_PARENT=f"{tag}/g")
    rows = []
    try:
        for n in sizes:
            # share experiment (+ a capped guest)
            guests = {f"s{i}": (["--cpu-share", str(100 * (i + 1))], HOG2) for i in range(n)}
            guests["cap"] = (
                ["--cpus", "0.5", "--cpu-share", "10000"],
                HOG2,
            )  # fair share > cap: the cap binds
            used, wall = run_config(env, guests, args.seconds)
            share_used = {k: v for k, v in used.items() if k != "cap"}
            # targets of the share guests, given that the capped one takes 0.5 CPU off the top
            # (it is below its share target in every configuration here)
            total = sum(used.values())
            free = total - used["cap"]  # the share guests split what the capped one leaves
            ssum = sum(100 * (i + 1) for i in range(n))
            target = {f"s{i}": 100 * (i + 1) / ssum for i in range(n)}
            got = {k: v / free for k, v in share_used.items()}
            err_pp = max(abs(got[k] - target[k]) for k in target) * 100
            fair = jain([got[k] / target[k] for k in target])
            cap = used["cap"] / wall
            # reservation experiment
            rguests = {"res": (["--cpu-reserve", "1"], HOG1)}
            rguests.update({f"o{i}": ([], HOG2) for i in range(n)})
            rused, rwall = run_config(env, rguests, args.seconds)
            rnorm = rused["res"] / sum(rused.values()) * CPUS
            rows.append(
                {
                    "n": n,
                    "targets": " ".join(f"{target[k]:.3f}" for k in list(target)[:4])
                    + (" …" if n > 4 else ""),
                    "achieved": " ".join(f"{got[k]:.3f}" for k in list(target)[:4]) + (" …" if n > 4 else ""),
                    "err_pp": err_pp,
                    "jain": fair,
                    "res": rnorm,
                    "res_abs": rused["res"] / rwall,
                    "cap": cap,
                    "cap_err": abs(cap - 0.5) / 0.5 * 100,
                }
            )
            print(f"  n={n} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        from berth.cgroups import detect

        for top in map(Path, detect().mountpoints()):  # the bench's parent, in every hierarchy
            for d in (top / tag / "g", top / tag):
                try:
                    d.rmdir()
                except OSError:
                    pass
    hdr = f"{'N':>3}  {'share targets':<28} {'achieved':<28} {'max err pp':>10} {'Jain':>6} {'reserved CPU (abs)':>19} {'cap 0.5':>8} {'cap err %':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['n']:>3}  {r['targets']:<28} {r['achieved']:<28} {r['err_pp']:>10.2f} {r['jain']:>6.3f} "
            f"{r['res']:>11.3f} ({r['res_abs']:.3f}) {r['cap']:>8.3f} {r['cap_err']:>9.1f}"
        )
    print("targets: share error ≤ 2 pp, reservation ≥ 0.98 CPU at 16 competitors, cap error ≤ 3 %")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not importable: no PNG written")
        return 0
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    ns = [r["n"] for r in rows]
    axes[0].plot(ns, [r["err_pp"] for r in rows], "o-")
    axes[0].set(title="max share error (pp)", xscale="log", xlabel="guests")
    axes[1].plot(ns, [r["res"] for r in rows], "o-", label="normalized")
    axes[1].plot(ns, [r["res_abs"] for r in rows], "x--", label="absolute")
    axes[1].axhline(1.0, color="gray", lw=0.5)
    axes[1].set(title="reserved guest CPU (want ≥ 1)", xscale="log", xlabel="competitors")
    axes[1].legend()
    axes[2].plot(ns, [r["cap"] for r in rows], "o-")
    axes[2].axhline(0.5, color="gray", lw=0.5)
    axes[2].set(title="capped guest CPU (cap 0.5)", xscale="log", xlabel="guests")
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
