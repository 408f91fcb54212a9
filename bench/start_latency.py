"""Start latency: `berth run --rm -- /bin/true` and `berth start NAME` against `runc run` and a
plain /bin/true.

All are run in one process, interleaved (A B C A B C …) so drift does not bias a ratio;
medians (with min–max) of N starts each, and the ratios to runc and to native.

`berth start NAME`: a guest made by `berth create NAME --net none --userns host --no-lxcfs` (as
the evaluation's density section), guestd already running, timed from the command's start until
the guest's init (busybox init) runs and the command has exited; stopped (untimed) after each.
`berth start (running)`: the same command for a guest that runs already: the command's own cost
and its round trip through guestd and a worker, without a container start.
`--runsc`: also `runsc run` (gVisor; the lab's platform, ptrace unless BERTH_LAB_RUNSC_PLATFORM
says otherwise; --network=none, --ignore-cgroups) of the same bundle as runc's, interleaved.

Also prints where berth's time goes: the bare interpreter, imports, and the rest.

    .venv/bin/python bench/start_latency.py [-n 30] [--runsc]
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
# The Python launcher: berth-py beside a compiled `berth` (tools/launcher.sh), else `berth` itself.
BERTH_PY = BERTH + "-py" if os.path.exists(BERTH + "-py") else BERTH


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


GUEST_FLAGS = ("--net", "none", "--userns", "host", "--no-lxcfs")


def berth(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([BERTH, *args], env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"berth {' '.join(args[:3])}… exited {r.returncode}: {r.stderr.strip()[:200]}")
    return r.stdout


def start_guest(env: dict[str, str], name: str) -> float:
    """Seconds from `berth start NAME` until the command exited and the guest's init runs."""
    t = time.perf_counter()
    berth(env, "start", name)
    rec = Path(env["BERTH_RUN"]) / ".guests" / f"{name}.json"
    pid = json.loads(rec.read_text())["pid"]
    while Path(f"/proc/{pid}/comm").read_text().strip() != "init":
        if time.perf_counter() - t > 10:
            raise RuntimeError(f"guest {name}: init not running 10 s after berth start")
        time.sleep(0.0002)
    return time.perf_counter() - t


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.1f} ms  (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def imports(cmd: list[str], env: dict[str, str]) -> tuple[int, list[tuple[int, str]]]:
    """Microseconds of imports (``-X importtime`` self times) of one run of ``cmd``, and the
    top-level modules by their cumulative time."""
    py = str(REPO / ".venv" / "bin" / "python")
    r = subprocess.run(
        [py, "-X", "importtime", "-I", "-S", BERTH_PY, *cmd], capture_output=True, text=True, env=env
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
    return total, tops


def breakdown(env: dict[str, str], name: str) -> None:
    """Interpreter start and imports of one `berth run` and one `berth start NAME`."""
    py = str(REPO / ".venv" / "bin" / "python")
    bare = statistics.median(timed([py, "-I", "-S", "-c", "pass"]) for _ in range(15))
    print("\nwhere berth's time goes (one run; importtime inflates imports a little):")
    print(f"  bare interpreter (python -I -S -c pass): {bare * 1000:.1f} ms")
    total, tops = imports(["run", "--rm", "--", "/bin/true"], env)
    print(
        f"  imports on the run path: {total / 1000:.1f} ms, largest: "
        + ", ".join(f"{n} {us / 1000:.1f}" for us, n in tops[:8])
    )
    total, tops = imports(["start", name], env)
    berth(env, "stop", "--timeout", "0", name)
    print(
        f"  imports on the start path of the Python launcher (guestd up): {total / 1000:.1f} ms, largest: "
        + ", ".join(f"{n} {us / 1000:.1f}" for us, n in tops[:5])
    )
    if BERTH_PY != BERTH:
        print(
            "  `berth` is the compiled launcher (src/berth/guests/fastclient.c): `berth start` starts no Python"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=30, help="starts per column (default 30)")
    ap.add_argument("--runsc", action="store_true", help="also time `runsc run` (gVisor) of runc's bundle")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="berth-bench-")
    env = dict(os.environ)
    env.setdefault("BERTH_ROOT", os.path.join(work, "store"))
    env["BERTH_RUN"] = os.path.join(work, "run")
    env["BERTH_CGROUP_PARENT"] = f"berth-bench-{os.getpid()}"
    names = [f"lat{os.getpid()}-{i}" for i in range(3)]
    try:
        rootfs = subprocess.run(
            [BERTH, "template", "build", "busybox"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        have_runc = shutil.which("runc") is not None
        bundle = runc_bundle(rootfs, work) if have_runc else None
        runsc = shutil.which("runsc") if args.runsc else None
        if args.runsc and (runsc is None or bundle is None):
            raise RuntimeError("--runsc: runsc and runc (for the bundle) must be installed")
        runsc_base = [
            str(runsc),
            "--root",
            os.path.join(work, "runsc"),
            f"--platform={os.environ.get('BERTH_LAB_RUNSC_PLATFORM', 'ptrace')}",
            "--network=none",
            "--ignore-cgroups",
        ]
        for name in names:
            berth(env, "create", name, *GUEST_FLAGS)
        berth(env, "list")  # guestd up before anything is timed
        cols: dict[str, list[float]] = {
            "native /bin/true": [],
            "berth run": [],
            "runc run": [],
            "berth start": [],
            "berth start (running)": [],
        }
        if runsc:
            cols["runsc run"] = []
        for i in range(args.n + 2):  # two warm-up rounds
            name = names[i % len(names)]
            g = start_guest(env, name)
            r = timed([BERTH, "start", name], env)
            berth(env, "stop", "--timeout", "0", name)
            if i >= 2:
                cols["berth start"].append(g)
                cols["berth start (running)"].append(r)
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
            if runsc:
                cid = f"gv{os.getpid()}x{i}"
                d = timed([*runsc_base, "run", "--bundle", str(bundle), cid])
                subprocess.run([*runsc_base, "delete", "--force", cid], capture_output=True)
                if i >= 2:
                    cols["runsc run"].append(d)
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
                print(f"  {name:22s} {med(xs)}")
            else:
                print(f"  {name:22s} not run: runc is not installed (apt-get install runc)")
        native = statistics.median(cols["native /bin/true"])
        for col in ("berth run", "berth start"):
            b = statistics.median(cols[col])
            if cols["runc run"]:
                r = statistics.median(cols["runc run"])
                print(f"  ratio {col}/runc {' ' * (12 - len(col))}{b / r:.2f}   (target <= 0.50)")
            print(f"  ratio {col}/native {' ' * (10 - len(col))}{b / native:.1f}")
            if cols.get("runsc run"):
                g = statistics.median(cols["runsc run"])
                print(f"  ratio runsc/{col} {' ' * (11 - len(col))}{g / b:.1f}   (target >= 10)")
        breakdown(env, names[0])
    finally:
        subprocess.run([BERTH, "destroy", "--force", *names], env=env, capture_output=True)
        try:
            os.kill(int((Path(env["BERTH_RUN"]) / ".guests" / "guestd.pid").read_text()), 15)
        except (OSError, ValueError):
            pass
        subprocess.run([BERTH, "gc"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        from berth.cgroups import detect

        for top in detect().mountpoints():  # the bench's cgroup parent, in every hierarchy
            d = Path(top) / env["BERTH_CGROUP_PARENT"]
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
