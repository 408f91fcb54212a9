"""``make test-v2``: berth's tests on a cgroup-v2-only kernel, booted under qemu (KVM or TCG).

Debian's kernel is booted with ``systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all``; the
guest sees the host's root read-only under a tmpfs overlay, mounts cgroup2 at /sys/fs/cgroup
with every controller enabled in the root's subtree_control, and runs pytest in /work/main
(this repository) with the venv as it is. pytest's own output streams back over the serial
console, and its exit status becomes this program's.

    python -m bench.lab.test_v2 [--select default|ci|rest|all|FILE,...] [-- PYTEST_ARGS...]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from bench.lab import qemu
from bench.lab.errors import LabError
from bench.lab.runner import boot_and_run

REPO = Path(__file__).resolve().parents[2]
V2_ARGS = ("systemd.unified_cgroup_hierarchy=1", "cgroup_no_v1=all")

# Tests that fail on the v2 kernel (found by `make test-v2`; each is a v1/v2 difference for the
# lead to decide on). The "ci" selection leaves them out, and says so, so that CI passes while
# the default selection keeps showing them.
# (test_kill_all_and_destroy_nested was one: v2's no-internal-process rule refused its process in
# a cgroup with controllers enabled for its children, a v1 assumption of the test; on v2 it now
# checks that refusal and puts the process in a leaf beside.)
KNOWN_V2_FAILURES: set[str] = set()


# The tests' temporary files (stores, bundles, state roots) on ext4, as on this host, not on the
# lab's tmpfs /tmp: Debian 12's kernel (6.1) cannot idmap a tmpfs mount (6.3 can), and every
# unprivileged guest of `berth create` idmaps its template's rootfs. The image is sparse, on a
# tmpfs of its own: it takes memory only as it is written. Mounted over /tmp, or (a checkout
# under /tmp, which that would hide) at /run/lab-tmp as TMPDIR. Where that cannot be done (no
# mkfs.ext4), the tests run on the tmpfs, and say so.
def _tmp_on_ext4() -> str:
    tmp = "/run/lab-tmp" if REPO.is_relative_to("/tmp") else "/tmp"
    img = "/run/lab-disk/tmp.img"
    return (
        f"{{ mkdir -p /run/lab-disk {tmp} && mount -t tmpfs -o size=3g lab-disk /run/lab-disk"
        f" && truncate -s 3g {img} && mkfs.ext4 -q -F {img} && modprobe -a loop ext4"
        f" && mount -o loop {img} {tmp} && chmod 1777 {tmp} && export TMPDIR={tmp}; }}"
        " || { echo 'lab: no ext4 for the tests: they use the tmpfs /tmp'; export TMPDIR=/tmp; }"
    )


# What a host's systemd and udev give /dev and the lab's devtmpfs lacks: the /dev/stdin, stdout,
# stderr and fd links (nft reads `nft -f -` from /dev/stdin: without them every bridged guest's
# nft table fails to load, "Could not open file /dev/stdin"), and /dev/fuse (its module loaded:
# lxcfs needs it for berth's default guests).
_DEV_SETUP = (
    "for l in fd:fd stdin:fd/0 stdout:fd/1 stderr:fd/2; do"
    " [ -e /dev/${l%%:*} ] || ln -s /proc/self/${l#*:} /dev/${l%%:*}; done;"
    " [ -e /dev/fuse ] || modprobe fuse || echo 'lab: no fuse module: lxcfs cannot run'"
)


# Unit tests are pure logic (no kernel); they are in "default" for completeness, not in "ci",
# which keeps `make test-v2` in CI near 10 minutes under TCG.
SELECTIONS: dict[str, list[str]] = {
    "default": [
        "tests/unit",
        "tests/integration/test_cgroups.py",
        "tests/integration/test_run_isolation.py",
    ],
    "ci": [
        "tests/integration/test_cgroups.py",
        "tests/integration/test_run_isolation.py",
    ],
    "all": ["tests/unit", "tests/integration"],
}
# The integration files not in "ci" (for finding out what else passes on v2).
SELECTIONS["rest"] = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "tests" / "integration").glob("test_*.py")
    if str(p.relative_to(REPO)) not in SELECTIONS["ci"]
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="test-v2", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--select",
        default="default",
        help="a named selection (default, ci, rest, all) or comma-separated test paths",
    )
    p.add_argument("--timeout", type=float, default=1500.0, help="seconds for the whole run (default 1500)")
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--memory-mb", type=int, default=4096)
    p.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    a = p.parse_args(argv)
    paths = SELECTIONS.get(a.select, a.select.split(","))
    # faulthandler_timeout: a test stuck for 5 minutes prints every thread's stack (no plugin needed).
    pytest = [".venv/bin/python", "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    pytest += ["-o", "faulthandler_timeout=300", *a.pytest_args, *paths]
    if a.select == "ci" and KNOWN_V2_FAILURES:
        pytest += [f"--deselect={t}" for t in sorted(KNOWN_V2_FAILURES)]
        print(f"test-v2: known to fail on v2, left out of 'ci': {' '.join(sorted(KNOWN_V2_FAILURES))}")
    t0 = time.monotonic()
    print(f"test-v2: booting Debian's kernel with {' '.join(V2_ARGS)}; running {' '.join(paths)}", flush=True)
    try:
        # Under TCG every process runs some 30 times slower: the tests then leave out their time
        # limits (helpers.timing_matters), which would measure the emulator, not berth.
        emulated = qemu.choose_accel().name == "tcg"
        command = (
            f"{_DEV_SETUP}; {_tmp_on_ext4()}{' && export BERTH_TEST_EMULATED=tcg' if emulated else ''}"
            f' && cd {shlex.quote(str(REPO))} && echo "lab: $(uname -r), cgroup'
            f" $(stat -fc %T /sys/fs/cgroup), TMPDIR $TMPDIR ($(stat -fc %T $TMPDIR)), controllers:"
            f' $(cat /sys/fs/cgroup/cgroup.subtree_control)" && {shlex.join(pytest)}'
        )
        r = boot_and_run(
            "qemu",
            command,
            vcpus=a.vcpus,
            memory_mb=a.memory_mb,
            timeout=a.timeout,
            kernel_args=V2_ARGS,
            stream=lambda s: print(s, end="", flush=True),
        )
    except LabError as e:
        print(f"test-v2: {str(e).splitlines()[0]}", file=sys.stderr)
        if e.console_log:
            print("--- console ---\n" + "\n".join(e.console_log.splitlines()[-60:]), file=sys.stderr)
        return 125
    took = time.monotonic() - t0
    print(
        f"test-v2: pytest exited {r.exit_status} on the v2 kernel; accel {r.accel} ({r.accel_reason}); "
        f"boot {r.boot_seconds:.1f} s, total {took:.0f} s",
        flush=True,
    )
    return r.exit_status


if __name__ == "__main__":
    sys.exit(main())
