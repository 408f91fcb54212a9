"""The order of a container's creation (berth.runtime.container.create): its state is written
before its cgroup is made (the making may wait out an RCU grace period, berth.cgroups.warm), so a
failure of the cgroup's limits comes after the state exists.  It must leave nothing: no process,
no state, no cgroup, and the one-line error at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import cgroup_roots

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / ".venv" / "bin" / "berth-runtime"


def _children() -> list[int]:
    """Our child processes (we are a child subreaper: orphans of the runtime come to us)."""
    out: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            out += [int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return out


def _subreaper(on: bool) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def test_cgroup_failure_after_the_fork_leaves_nothing(
    tmp_path: Path, busybox_rootfs: Path, prefix: str, unique: str
) -> None:
    """cpu.cfs_period_us below the kernel's 1 ms minimum: refused when the cgroup's limits are
    written, after the state was."""
    from berth.spec import runc_spec

    root = tmp_path / "state"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    cgroup = f"/{prefix}/{unique}/c"
    cfg = runc_spec()
    cfg["root"] = {"path": str(busybox_rootfs), "readonly": True}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["true"]
    cfg["linux"]["cgroupsPath"] = cgroup
    cfg["linux"]["resources"] = {"cpu": {"quota": 50, "period": 100}}
    (bundle / "config.json").write_text(json.dumps(cfg))
    before = set(_children())
    _subreaper(True)
    try:
        t = time.monotonic()
        proc = subprocess.run(
            [str(RUNTIME), "--root", str(root), "create", "--bundle", str(bundle), unique],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        took = time.monotonic() - t
        left = set(_children()) - before
    finally:
        _subreaper(False)
        for pid in set(_children()) - before:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    if proc.returncode == 0:
        subprocess.run([str(RUNTIME), "--root", str(root), "delete", "--force", unique], check=False)
        pytest.fail("a CFS period of 100 us was accepted: the kernel's minimum is 1 ms")
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cpu" in lines[0], proc.stderr
    assert not left, f"processes left behind: {left}"
    assert took < 4, f"create took {took:.1f} s to fail"
    assert not root.exists() or not [n for n in os.listdir(root) if not n.startswith(".")]
    made = [top / prefix / unique / "c" for top in cgroup_roots()]
    assert not [d for d in made if d.exists()], "cgroup left behind"
    for top in cgroup_roots():
        for d in (top / prefix / unique, top / prefix):
            try:
                d.rmdir()
            except OSError:
                pass


_EARLY = """
import os, sys, time, json
from berth.linux import prctl
from berth.oci.create import _allow_devices
from berth.runtime import container
from berth.spec import runc_spec

root, rootfs, cgroup, cid = sys.argv[1:5]
spec = runc_spec()
spec["root"] = {"path": rootfs, "readonly": True}
spec["process"]["terminal"] = False
spec["process"]["args"] = ["true"]
spec["linux"]["cgroupsPath"] = cgroup
_allow_devices(spec["linux"])  # (as berth-runtime's create: the default devices)
fds = []

def on_pid(c):
    # as a guest's starter without a network: the fifo's reader opened at once, the init goes
    # as soon as it is ready
    fds.append(os.open(os.path.join(c.dir, "exec.fifo"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))

prctl.set_child_subreaper(True)  # (as guestd: the init, orphaned by stage1, is ours to reap)
c = container.create(cid, spec, state_root=root, bundle=root, on_pid=on_pid)
deadline = time.monotonic() + 10
while os.path.exists(f"/proc/{c.pid}") and open(f"/proc/{c.pid}/stat").read().split(") ")[1][0] != "Z":
    assert time.monotonic() < deadline, "true did not end"
    time.sleep(0.01)
try:
    c.start(fifo_fd=fds[0])  # the command ran and ended before this: still a start
    print("started", container.wait_exit(c.pid))
finally:
    c.delete(force=True)
"""


def test_a_start_after_the_early_released_command_ended(
    tmp_path: Path, busybox_rootfs: Path, prefix: str, unique: str, check_clean
) -> None:
    """The guest manager lets a guest without network go as soon as its init is ready (the fifo's
    reader opened early): if the command has run and ended before the start is called (the
    starter off the CPU a while), the start is still a start, not 'stopped: only a created
    container can be started' (which marked the guest stopped and lost its exit status)."""
    root = tmp_path / "state"
    root.mkdir()
    py = REPO / ".venv" / "bin" / "python"
    p = subprocess.run(
        [str(py), "-c", _EARLY, str(root), str(busybox_rootfs), f"/{prefix}/{unique}/c", unique],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["started", "0"], p.stdout
    check_clean()
