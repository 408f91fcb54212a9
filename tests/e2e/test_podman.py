"""podman driving berth-runtime (``--runtime``), asserting from inside the container.

Every podman call uses this session's own --root/--runroot under a temporary directory (vfs
storage: no overlay mounts left behind), cgroupfs with a cgroup parent under the session prefix,
and file events; everything is removed at teardown.  Skipped with a reason where podman is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME = os.path.realpath(REPO / ".venv" / "bin" / "berth-runtime")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(
        shutil.which("podman") is None, reason="podman is not installed (make test installs it)"
    ),
]


class Podman:
    def __init__(self, base: Path, cgroup_parent: str, runtime: str) -> None:
        self.base = base
        self.cgroup_parent = cgroup_parent
        self.runtime = runtime
        self.globals = [
            "podman", "--root", str(base / "root"), "--runroot", str(base / "run"), "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", runtime,
            "--tmpdir", str(base / "tmp"),
        ]  # fmt: skip

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*self.globals, *args], capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL, **kw,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, f"podman {args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self("run", "--rm", "--network", "none", "--cgroup-parent", self.cgroup_parent, *args, **kw)

    def cleanup(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False)
        self("system", "reset", "--force", check=False, timeout=120)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(str(self.base)):
                subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def _rmdir_cgroups(prefix: str) -> None:
    for top in Path("/sys/fs/cgroup").iterdir():
        base = top / prefix
        if not base.is_dir():
            continue
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            base.rmdir()
        except OSError:
            pass


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, prefix: str):
    from berth.rootfs import template

    # podman refuses a runroot longer than 50 characters: a short directory of our own, not
    # pytest's numbered temp tree (its path grows with every run on the machine).
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-pm-", dir="/tmp"))
    store = tmp_path_factory.mktemp("store")
    rootfs = template.build(str(store), "busybox")
    tar = base / "busybox.tar"
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    p = Podman(base, f"/{prefix}/podman", RUNTIME)
    try:
        p("import", str(tar), "localhost/berth-busybox:test")
        yield p
    finally:
        p.cleanup()
        shutil.rmtree(base, ignore_errors=True)
        _rmdir_cgroups(f"{prefix}/podman")
        _rmdir_cgroups(prefix)


IMG = "localhost/berth-busybox:test"


def test_run_echo(podman: Podman) -> None:
    proc = podman.run(IMG, "echo", "hi")
    assert proc.stdout == "hi\n"


def test_exit_status_and_not_found(podman: Podman) -> None:
    assert podman.run(IMG, "sh", "-c", "exit 3", check=False).returncode == 3
    missing = podman.run(IMG, "no-such-command", check=False)
    assert missing.returncode == 127, missing.stderr


def test_limits_caps_readonly_volume_network_none(podman: Podman, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("from-the-host\n")
    script = (
        "p=$(grep :memory: /proc/self/cgroup | cut -d: -f3); cat /sys/fs/cgroup/memory$p/memory.limit_in_bytes;"
        "p=$(grep :pids: /proc/self/cgroup | cut -d: -f3); cat /sys/fs/cgroup/pids$p/pids.max;"
        "grep CapEff /proc/self/status; touch /x 2>/dev/null && echo rw || echo ro; cat /data/f;"
        "echo written > /data/g; ls /sys/class/net | tr '\\n' ' '; echo; ulimit -Hn"
    )
    proc = podman.run(
        "--memory", "64m", "--pids-limit", "50", "--cap-drop", "NET_RAW", "--read-only",
        "-v", f"{tmp_path}:/data", IMG, "sh", "-c", script,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert lines[0] == str(64 << 20)
    assert lines[1] == "50"
    eff = int(lines[2].split()[1], 16)
    assert not eff & (1 << 13), "CAP_NET_RAW was dropped"
    assert eff & (1 << 0), "CAP_CHOWN is a default"
    assert lines[3] == "ro"
    assert lines[4] == "from-the-host"
    assert (tmp_path / "g").read_text() == "written\n"
    assert lines[5].split() == ["lo"]
    import resource

    assert int(lines[6]) <= resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # lowered, not failed


def test_detached_exec_ps_logs_stop_kill_rm(podman: Podman) -> None:
    cid = podman(
        "run", "-d", "--network", "none", "--cgroup-parent", podman.cgroup_parent, IMG,
        "sh", "-c", "echo logline; trap 'exit 0' TERM; while :; do sleep 0.1; done",
    ).stdout.strip()  # fmt: skip
    try:
        out = podman("exec", cid, "sh", "-c", "echo in-exec $$; cat /proc/1/cmdline | tr '\\0' ' '").stdout
        first, second = out.splitlines()
        assert first.startswith("in-exec ")
        assert second.startswith("sh -c echo logline")
        assert podman("exec", cid, "sh", "-c", "exit 5", check=False).returncode == 5
        assert cid[:12] in podman("ps", "--format", "{{.ID}}").stdout
        assert "logline" in podman("logs", cid).stdout
        podman("stop", "-t", "10", cid)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip() == "0"
        podman("start", cid)
        podman("kill", cid)
        podman("wait", cid)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip() == "137"
    finally:
        podman("rm", "--force", cid, check=False)
    assert cid[:12] not in podman("ps", "-a", "--format", "{{.ID}}").stdout


def test_tty(podman: Podman) -> None:
    # podman -t without a terminal of ours: conmon takes the pty from the console socket.
    proc = podman.run("-t", IMG, "sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty")
    assert "is-a-tty" in proc.stdout
