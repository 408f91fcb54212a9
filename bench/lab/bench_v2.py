"""The evaluation (bench.eval) on a cgroup-v2-only kernel, booted under qemu like ``make test-v2``.

Checks that every experiment runs where the host has only cgroup v2: under TCG every process is
some 30 times slower, so the run is ``--tiny`` (one repetition, smallest scale) and its figures
mean nothing. The separate-kernel and gVisor columns are left out by default (a UML or gVisor
guest inside the emulated machine would take minutes per start); the report says so. The
report is printed at the end; this program exits 1 if an experiment failed, 125 if the lab did
not boot.

    python -m bench.lab.bench_v2 [--only NAME,...] [--columns native,berth,runc] [--timeout S]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from bench.lab.errors import LabError
from bench.lab.runner import boot_and_run
from bench.lab.test_v2 import _DEV_SETUP, REPO, V2_ARGS, _tmp_on_ext4

# The eval keeps its stores under /var/tmp: on the lab's overlay root a guest's overlay could not
# take its upper layer there, so /var/tmp is bound to a directory of the lab's ext4 /tmp.
_VAR_TMP = "mkdir -p $TMPDIR/lab-var-tmp && chmod 1777 $TMPDIR/lab-var-tmp && mount --bind $TMPDIR/lab-var-tmp /var/tmp"
FAILED = "**This experiment failed:**"
RESULTS = "/run/lab-results"  # in the lab's own tmpfs


def command(only: str, columns: str) -> str:
    """The shell command the lab runs: set up /dev and an ext4 /tmp and /var/tmp, run the eval,
    print its report."""
    # Its own results directory: bench/results is the host's too (seen live through 9p).
    ev = [".venv/bin/python", "-m", "bench.eval", "--tiny", "--columns", columns, "--results", RESULTS]
    if only:
        ev += ["--only", only]
    return (
        f"{_DEV_SETUP}; {_tmp_on_ext4()} && {_VAR_TMP} && cd {shlex.quote(str(REPO))}"
        ' && echo "lab: $(uname -r), cgroup $(stat -fc %T /sys/fs/cgroup), controllers:'
        ' $(cat /sys/fs/cgroup/cgroup.subtree_control)"'
        f" && export PYTHONPATH=. BERTH_LAB_ACCEL=tcg BERTH_TEST_EMULATED=tcg && {shlex.join(ev)}"
        f' && for r in {RESULTS}/*/report.md; do echo "=== $r"; cat "$r"; done'
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_v2", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="bench.eval's --only (default: every experiment)")
    p.add_argument("--columns", default="native,berth,runc", help="bench.eval's --columns")
    p.add_argument("--timeout", type=float, default=3000.0, help="seconds for the whole run (default 3000)")
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--memory-mb", type=int, default=4096)
    a = p.parse_args(argv)
    t0 = time.monotonic()
    print(f"bench_v2: booting Debian's kernel with {' '.join(V2_ARGS)}", flush=True)
    try:
        r = boot_and_run(
            "qemu",
            command(a.only, a.columns),
            vcpus=a.vcpus,
            memory_mb=a.memory_mb,
            timeout=a.timeout,
            kernel_args=V2_ARGS,
            stream=lambda s: print(s, end="", flush=True),
        )
    except LabError as e:
        print(f"bench_v2: {str(e).splitlines()[0]}", file=sys.stderr)
        if e.console_log:
            print("--- console ---\n" + "\n".join(e.console_log.splitlines()[-60:]), file=sys.stderr)
        return 125
    failed = r.output.count(FAILED)
    print(
        f"bench_v2: exit {r.exit_status}, {failed} experiment(s) failed; accel {r.accel}; "
        f"boot {r.boot_seconds:.1f} s, total {time.monotonic() - t0:.0f} s",
        flush=True,
    )
    return 1 if r.exit_status or failed else 0


if __name__ == "__main__":
    sys.exit(main())
