"""Start latency: `berth run --rm -- /bin/true` against `runc run` and a plain /bin/true.

All three are run in one process, interleaved (A B C A B C …) so drift does not bias a
ratio; medians (with min–max) of N starts each, and the ratios to runc and to native.
Also prints where berth's time goes: the bare interpreter, imports, and the rest.

    .venv/bin/python bench/start_latency.py [-n 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BERTH = str(REPO / ".venv" / "bin" / "berth")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}… exited {r.returncode}: {r.stderr.decode().strip()[:200]}")
    return dt


def runc_bundle(rootfs: str, workdir: str) -> str:
    bundle = os.path.join(workdir, "bundle")
    os.mkdir(bundle)
    subprocess.run(["runc", "spec", "-b", bundle], check=True)
    cfg_path = os.path.join(bundle, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["root"] = {"path": rootfs, "readonly": True}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    # This host's hard RLIMIT_NOFILE is below runc's default 1024 soft/hard? keep runc's, lowered to the host's.
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": min(1024, hard), "soft": min(1024, hard)}]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return bundle


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.1f} ms  (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def breakdown(env: dict[str, str]) -> None:
    """Interpreter start, imports, and the rest of one `berth run`."""
    py = str(REPO / ".venv" / "bin" / "python")
    bare = statistics.median(timed([py, "-I", "-S", "-c", "pass"]) for _ in range(15))
    r = subprocess.run(
        [py, "-X", "importtime", "-I", "-S", BERTH, "run", "--rm", "--", "/bin/true"],
        capture_output=True,
        text=True,
        env=env,
    )
    total = 0
    tops: list[tuple[int, str]] = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            total += int(m.group(1))  # self times add up to the whole
            if not m.group(3):
                tops.append((int(m.group(2)), m.group(4)))
    tops.sort(reverse=True)
    print("\nwhere berth's time goes (one run; importtime inflates imports a little):")
    print(f"  bare interpreter (python -I -S -c pass): {bare * 1000:.1f} ms")
    print(
        f"  imports on the run path: {total / 1000:.1f} ms, largest: "
        + ", ".join(f"{n} {us / 1000:.1f}" for us, n in tops[:8])
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=30, help="starts per column (default 30)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="berth-bench-")
    env = dict(os.environ)
    env.setdefault("BERTH_ROOT", os.path.join(work, "store"))
    env["BERTH_RUN"] = os.path.join(work, "run")
    env["BERTH_CGROUP_PARENT"] = f"berth-bench-{os.getpid()}"
    try:
        rootfs = subprocess.run(
            [BERTH, "template", "build", "busybox"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        have_runc = shutil.which("runc") is not None
        bundle = runc_bundle(rootfs, work) if have_runc else None
        cols: dict[str, list[float]] = {"native /bin/true": [], "berth run": [], "runc run": []}
        for i in range(args.n + 2):  # two warm-up rounds
            a = timed(["/bin/true"])
            b = timed([BERTH, "run", "--rm", "--", "/bin/true"], env)
            c = (
                timed(
                    [
                        "runc",
                        "--root",
                        os.path.join(work, "runc"),
                        "run",
                        "-b",
                        bundle,
                        f"bb{os.getpid()}x{i}",
                    ]
                )
                if bundle
                else 0.0
            )
            if i >= 2:
                cols["native /bin/true"].append(a)
                cols["berth run"].append(b)
                if bundle:
                    cols["runc run"].append(c)
        print(
            f"start latency, {args.n} starts each, interleaved; kernel {os.uname().release}, {os.cpu_count()} CPUs"
        )
        for name, xs in cols.items():
            if xs:
                print(f"  {name:18s} {med(xs)}")
            else:
                print(f"  {name:18s} not run: runc is not installed (apt-get install runc)")
        b = statistics.median(cols["berth run"])
        if cols["runc run"]:
            r = statistics.median(cols["runc run"])
            print(f"  ratio berth/runc   {b / r:.2f}   (target <= 0.50)")
        print(f"  ratio berth/native {b / statistics.median(cols['native /bin/true']):.1f}")
        breakdown(env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for top in Path("/sys/fs/cgroup").iterdir():
            d = top / env["BERTH_CGROUP_PARENT"]
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
