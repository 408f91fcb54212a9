"""berth's evaluation: ``python -m bench.eval [--quick|--full|--tiny] [--only NAME,...] [--columns C,...]``.

Writes bench/results/<timestamp>/report.md with its PNG plots. Quick (``make bench``) < 10 min,
full (``make bench-full``) < 60 min; tiny: one repetition of everything at the smallest scale, to
check that every experiment runs (the cgroup-v2 lab, bench/lab/bench_v2.py). Run as root from the
repository (PYTHONPATH=.).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.eval import experiments, report

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the quick evaluation (default)")
    g.add_argument("--full", action="store_true", help="more repetitions, larger scale")
    g.add_argument(
        "--tiny", action="store_true", help="one repetition, smallest scale (figures mean nothing)"
    )
    names = [f.__name__ for f in experiments.EXPERIMENTS]
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(names)}")
    p.add_argument(
        "--columns",
        default="",
        help=f"run only these of {','.join(experiments.COLUMNS)} (native always runs; default: every "
        "installed one; the separate-kernel column is uml or kvm, whichever this host has)",
    )
    p.add_argument(
        "--results", default=str(RESULTS), help=f"where the run's directory goes (default {RESULTS})"
    )
    a = p.parse_args(argv)
    only = [x for x in a.only.split(",") if x]
    if set(only) - set(names):
        p.error(f"--only: choose from {','.join(names)}")
    columns = [x for x in a.columns.split(",") if x] or None
    if columns and set(columns) - {*experiments.COLUMNS, "kvm"}:
        p.error(f"--columns: choose from {','.join(experiments.COLUMNS)},kvm")
    if columns and ("uml" in columns or "kvm" in columns):
        columns += ["uml", "kvm"]  # the separate-kernel column, whichever it is here
    cfg = experiments.config(quick=not a.full, tiny=a.tiny)
    mode = "tiny" if cfg.tiny else "quick" if cfg.quick else "full"
    out = Path(a.results) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    load0 = experiments._load()
    print(f"bench.eval: {mode} run into {out} (loadavg {load0})", flush=True)
    sections: list[experiments.Section] = []
    with tempfile.TemporaryDirectory(prefix="berth-eval-", dir="/var/tmp") as tmp:
        Path(tmp).chmod(0o711)
        try:
            env = experiments.Env(Path(tmp), columns)
        except Exception:
            err = traceback.format_exc()
            sections.append(experiments.Section("setup", error=err))
            env = None
        missing = {} if env is None else {c: env.why_not(c) for c in env.available if not env.has(c)}
        for fn in experiments.EXPERIMENTS:
            if env is None or (only and fn.__name__ not in only):
                continue
            t = time.monotonic()
            print(f"bench.eval: {fn.__name__} …", flush=True)
            try:
                s = fn(env, cfg)
            except Exception:
                s = experiments.Section(fn.__name__, error=traceback.format_exc())
            s.seconds = time.monotonic() - t
            print(f"bench.eval: {fn.__name__} done in {s.seconds:.0f} s", flush=True)
            sections.append(s)
            report.write(out, mode, sections, (load0, experiments._load()), time.monotonic() - t0, missing)
        if env is not None:
            experiments.remove_cgroups(env.tag)
    path = report.write(out, mode, sections, (load0, experiments._load()), time.monotonic() - t0, missing)
    print(f"bench.eval: report {path} ({(time.monotonic() - t0) / 60:.1f} min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
