"""OCI runtime latency: ``berth-runtime run`` vs ``runc run`` on the same bundle, and
``podman run --rm IMG true`` with each runtime.  Medians of N runs (default 20) and ratios.

    .venv/bin/python bench/oci_latency.py [-n 20] [--no-podman]

Target (issue 11): berth-runtime <= 0.6 x runc in both.  Everything is made under a temporary
directory and removed; cgroups go under /berth-bench-oci-<pid>.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
BERTH = os.path.realpath(REPO / ".venv" / "bin" / "berth-runtime")
RUNC = shutil.which("runc") or "/usr/sbin/runc"


def _time(cmd: list[str], n: int, **kw) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, **kw)
        out.append(time.perf_counter() - t)
    return out


def _bundle(base: Path, rootfs: str, cgroup: str) -> Path:
    from berth.spec import runc_spec

    b = base / "bundle"
    b.mkdir()
    cfg = runc_spec()
    cfg["root"] = {"path": rootfs, "readonly": True}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["true"]
    cfg["linux"]["cgroupsPath"] = cgroup
    (b / "config.json").write_text(json.dumps(cfg))
    return b


def _report(name: str, berth: list[float], runc: list[float]) -> None:
    mb, mr = statistics.median(berth), statistics.median(runc)
    print(f"{name:<28} berth {mb * 1000:7.1f} ms   runc {mr * 1000:7.1f} ms   ratio {mb / mr:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--no-podman", action="store_true")
    a = ap.parse_args()
    from berth.rootfs import template

    base = Path(tempfile.mkdtemp(prefix="berth-bench-oci-"))
    cg = f"berth-bench-oci-{os.getpid()}"
    try:
        rootfs = template.build(str(base / "store"), "busybox")
        bundle = _bundle(base, rootfs, f"/{cg}/c")
        i = iter(range(10**6))
        for label, rt in (("warm-up berth", BERTH), ("warm-up runc", RUNC)):
            _time([rt, "--root", str(base / label[-5:].strip()), "run", f"w{next(i)}"], 2, cwd=bundle)
        samples: dict[str, list[float]] = {"berth": [], "runc": []}
        for _ in range(a.n):  # interleaved, so drift hits both alike
            for name, rt in (("berth", BERTH), ("runc", RUNC)):
                samples[name] += _time([rt, "--root", str(base / name), "run", f"b{next(i)}"], 1, cwd=bundle)
        _report("runtime run (true)", samples["berth"], samples["runc"])
        if not a.no_podman and shutil.which("podman"):
            tar = base / "rootfs.tar"
            with tarfile.open(tar, "w") as t:
                t.add(rootfs, arcname=".")
            pm = ["podman", "--root", str(base / "pm-root"), "--runroot", str(base / "pm-run"),
                  "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]  # fmt: skip
            subprocess.run([*pm, "import", str(tar), "localhost/bench:1"], check=True, capture_output=True)
            # runc fails podman's default rlimits where the host's hard limits are lower (no
            # CAP_SYS_RESOURCE): the same explicit --ulimit for both keeps the comparison fair.
            run = ["run", "--rm", "--network", "none", "--cgroup-parent", f"/{cg}",
                   "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "localhost/bench:1", "true"]  # fmt: skip
            for rt in (BERTH, RUNC):
                _time([*pm, "--runtime", rt, *run], 2)
            samples = {"berth": [], "runc": []}
            for _ in range(a.n):
                for name, rt in (("berth", BERTH), ("runc", RUNC)):
                    samples[name] += _time([*pm, "--runtime", rt, *run], 1)
            _report("podman run --rm IMG true", samples["berth"], samples["runc"])
            subprocess.run([*pm, "system", "reset", "--force"], check=False, capture_output=True)
    finally:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[4].startswith(str(base)):
                subprocess.run(["umount", "-l", line.split()[4]], check=False)
        shutil.rmtree(base, ignore_errors=True)
        from berth.cgroups import detect

        for top in detect().mountpoints():  # every hierarchy, in any cgroup layout
            d = Path(top) / cg
            if d.is_dir():
                for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
                try:
                    d.rmdir()
                except OSError:
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
