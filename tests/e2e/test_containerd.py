"""containerd (with ctr) running containers through the runc shim v2 with berth-runtime as its
runc binary: ``ctr run --runtime io.containerd.runc.v2 --runc-binary berth-runtime``.

A private containerd (CRI disabled) with its own root, state and socket under a temporary
directory; the image is an OCI archive of the busybox template, imported with ``ctr images
import``; the containers' cgroups live under /PREFIX/... (ctr's default cgroupsPath is
/NAMESPACE/ID, and the namespace is the session prefix).  That berth ran them is checked with
``berth-runtime --root <the shim's runc root> list``, which sees only berth's own state.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from containerd_env import (
    RUNTIME,
    V1_ONLY_REASON,
    Containerd,
    cgroup_file,
    config_toml,
    remove_tree,
    rmdir_cgroups,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(V1_ONLY_REASON is not None, reason=V1_ONLY_REASON or ""),
]


class Ctd:
    """The daemon, the namespace (the session prefix) and the shim's runc root for berth."""

    def __init__(self, daemon: Containerd, namespace: str, runc_root: Path, image: str) -> None:
        self.daemon = daemon
        self.ns = namespace
        self.runc_root = runc_root
        self.image = image

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.daemon.ctr(*args, namespace=self.ns, **kw)

    def run(
        self, cid: str, *cmd: str, opts: tuple[str, ...] = ("--rm",), **kw
    ) -> subprocess.CompletedProcess:
        """``ctr run OPTS IMAGE CID CMD...`` with berth-runtime as the shim's runc binary."""
        return self(
            "run", "--runtime", "io.containerd.runc.v2", "--runc-binary", RUNTIME,
            "--runc-root", str(self.runc_root), "--fifo-dir", str(self.daemon.base / "fifo"),
            *opts, self.image, cid, *cmd, **kw,
        )  # fmt: skip

    def berth_list(self) -> dict[str, dict]:
        """berth-runtime's own view of the shim's root (the shim adds the namespace)."""
        proc = subprocess.run(
            [RUNTIME, "--root", str(self.runc_root / self.ns), "list", "--format", "json"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return {c["id"]: c for c in json.loads(proc.stdout or "[]") or []}

    def task_status(self, cid: str) -> tuple[int, str]:
        for line in self("task", "ls").stdout.splitlines()[1:]:
            name, pid, status = line.split()
            if name == cid:
                return int(pid), status
        return 0, "MISSING"

    def wait_status(self, cid: str, want: str, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while (status := self.task_status(cid))[1] != want:
            assert time.monotonic() < deadline, f"task {cid} is {status[1]}, not {want}"
            time.sleep(0.05)
        return status[0]


@pytest.fixture(scope="module")
def ctd(tmp_path_factory: pytest.TempPathFactory, prefix: str, e2e_images, containerd_host_dirs):
    base = tmp_path_factory.mktemp(f"{prefix}-ctd")
    daemon = Containerd(base, config_toml(base), {base / "runc": RUNTIME})
    c = Ctd(daemon, prefix, base / "runc", e2e_images["busybox"]["name"])
    try:
        out = c("images", "import", str(e2e_images["busybox"]["tar"])).stdout
        assert "done" in out, out
        yield c
    finally:
        for line in c("task", "ls", "-q", check=False).stdout.split():
            c("task", "kill", "-s", "KILL", line, check=False)
            c("task", "delete", "--force", line, check=False)
        for line in c("containers", "ls", "-q", check=False).stdout.split():
            c("containers", "delete", line, check=False)
        daemon.stop()
        rmdir_cgroups(prefix)
        remove_tree(base)


def test_run_echo_exit_status_and_limits(ctd: Ctd) -> None:
    proc = ctd.run(f"{ctd.ns}-echo", "echo", "hi")
    assert proc.stdout == "hi\n", proc
    proc = ctd.run(f"{ctd.ns}-exit", "sh", "-c", "exit 3", check=False)
    assert proc.returncode == 3, proc
    script = "; ".join(
        [
            cgroup_file("memory", "memory.limit_in_bytes"),
            cgroup_file("cpu", "cpu.cfs_quota_us"),
            "echo $$",
            "readlink /proc/self/ns/net",
        ]
    )
    # containerd's default spec has no /sys/fs/cgroup: ask for one (runc and berth mount it).
    cgroup_mount = "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev"
    opts = ("--rm", f"--memory-limit={48 << 20}", "--cpu-quota=50000", "--cpu-period=100000")
    proc = ctd.run(f"{ctd.ns}-lim", "sh", "-c", script, opts=(*opts, "--mount", cgroup_mount))
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc
    assert lines[:3] == [str(48 << 20), "50000", "1"], proc  # limits; a new pid namespace
    assert lines[3] != os.readlink("/proc/self/ns/net"), "a new network namespace"
    # --rm deleted everything: nothing left in berth's state.
    assert ctd.berth_list() == {}


def test_task_exec_ps_pause_kill_delete(ctd: Ctd) -> None:
    cid = f"{ctd.ns}-task"
    ctd.run(cid, "sh", "-c", "echo started; trap 'exit 7' TERM; while :; do sleep 0.1; done", opts=("-d",))
    try:
        pid = ctd.wait_status(cid, "RUNNING")
        # It is berth that runs it: the container is in berth-runtime's state, with that pid.
        ours = ctd.berth_list()
        assert cid in ours, ours
        assert (ours[cid]["status"], ours[cid]["pid"]) == ("running", pid), ours
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        assert cgroups.count(f"/{ctd.ns}/{cid}") >= 5, cgroups

        proc = ctd("task", "exec", "--exec-id", "e1", cid, "sh", "-c", "echo in-exec; cat /proc/1/cmdline")
        assert proc.stdout.startswith("in-exec\nsh\0-c\0echo started"), proc
        proc = ctd("task", "exec", "--exec-id", "e2", cid, "sh", "-c", "exit 4", check=False)
        assert proc.returncode == 4, proc
        missing = ctd("task", "exec", "--exec-id", "e3", cid, "no-such-command", check=False)
        assert missing.returncode != 0, missing
        assert "executable file not found" in missing.stderr, missing

        pids = ctd("task", "ps", cid).stdout
        assert str(pid) in pids.split(), pids

        ctd("task", "pause", cid)
        ctd.wait_status(cid, "PAUSED")
        ours = ctd.berth_list()
        assert ours[cid]["status"] == "paused", ours
        ctd("task", "resume", cid)
        ctd.wait_status(cid, "RUNNING")

        ctd("task", "kill", cid)  # SIGTERM: the trap exits 7
        ctd.wait_status(cid, "STOPPED")
        # ctr 1.6 reports the exit status of the task it deletes as a warning.
        proc = ctd("task", "delete", cid)
        assert "non-zero exit code 7" in proc.stderr, proc
        ours = ctd.berth_list()
        assert cid not in ours, ours
    finally:
        ctd("task", "delete", "--force", cid, check=False)
        ctd("containers", "delete", cid, check=False)


def test_task_kill_sigkill(ctd: Ctd) -> None:
    cid = f"{ctd.ns}-kill"
    ctd.run(cid, "sleep", "1000", opts=("-d",))
    try:
        ctd.wait_status(cid, "RUNNING")
        ctd("task", "kill", "--signal", "SIGKILL", cid)
        ctd.wait_status(cid, "STOPPED")
        proc = ctd("task", "delete", cid)
        assert "non-zero exit code 137" in proc.stderr, proc
    finally:
        ctd("task", "delete", "--force", cid, check=False)
        ctd("containers", "delete", cid, check=False)
