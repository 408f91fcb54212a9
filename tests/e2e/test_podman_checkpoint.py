"""``podman container checkpoint/restore --runtime berth-runtime``.

podman looks for ``criu`` on $PATH and checks its version (go-criu's ``criu swrk``) before it
calls the runtime: the test puts a link to berth's CRIU bundle wrapper first on PATH (in its own
temporary directory).  podman's --root/--runroot are short paths of the test's own (< 50 chars),
vfs storage, cgroupfs under the session prefix; everything is removed at teardown.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from test_podman import RUNTIME, Podman, _rmdir_cgroups

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(
        shutil.which("podman") is None, reason="podman is not installed (make test installs it)"
    ),
]
IMG = "localhost/berth-busybox:test"
COUNTER = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"


class CRPodman(Podman):
    """test_podman's Podman, every call with ``env`` (CRIU first on PATH)."""

    def __init__(self, base: Path, cgroup_parent: str, runtime: str, env: dict[str, str]) -> None:
        super().__init__(base, cgroup_parent, runtime)
        self.env = env

    def __call__(self, *args: str, **kw):  # type: ignore[no-untyped-def]
        kw.setdefault("env", self.env)
        return super().__call__(*args, **kw)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, prefix: str):
    from berth.errors import UnsupportedError
    from berth.rootfs import template
    from berth.runtime import criu

    try:
        found = criu.find()
    except UnsupportedError as e:
        pytest.skip(str(e))
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-pc-", dir="/tmp"))
    bindir = base / "bin"
    bindir.mkdir()
    # The bundle's wrapper resolves its own directory through the link (readlink -f).
    (bindir / "criu").symlink_to(found)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    store = tmp_path_factory.mktemp("store")
    rootfs = template.build(str(store), "busybox")
    tar = base / "busybox.tar"
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    p = CRPodman(base, f"/{prefix}/podmancr", RUNTIME, env)
    try:
        p("import", str(tar), IMG)
        yield p
    finally:
        p.cleanup()
        shutil.rmtree(base, ignore_errors=True)
        _rmdir_cgroups(f"{prefix}/podmancr")
        _rmdir_cgroups(prefix)


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split() if x.isdigit()]


def wait_logs(podman, cid: str, n: int, timeout: float = 15) -> list[int]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = numbers(podman("logs", cid).stdout)
        if len(got) >= n:
            return got
        assert time.monotonic() < deadline, f"only {len(got)} log lines: {got}"
        time.sleep(0.1)


def test_checkpoint_restore(podman, prefix: str) -> None:  # type: ignore[no-untyped-def]
    probe = podman("container", "checkpoint", "--help", check=False)
    assert probe.returncode == 0, probe.stderr
    cid = podman(
        "run", "-d", "--network", "none", "--cgroup-parent", f"/{prefix}/podmancr", IMG, "sh", "-c", COUNTER
    ).stdout.strip()
    try:
        wait_logs(podman, cid, 5)
        p = podman("container", "checkpoint", cid, check=False)
        if p.returncode != 0 and "CRIU" in p.stderr and "berth-runtime" not in p.stderr:
            pytest.skip(f"podman refuses to checkpoint: {p.stderr.strip().splitlines()[-1]}")
        assert p.returncode == 0, p.stderr
        state = podman("inspect", "--format", "{{.State.Status}} {{.State.Checkpointed}}", cid).stdout.split()
        assert state == ["exited", "true"], state
        before = numbers(podman("logs", cid).stdout)
        time.sleep(0.5)
        assert numbers(podman("logs", cid).stdout) == before, "the container ran on after its checkpoint"

        podman("container", "restore", cid)
        assert podman("inspect", "--format", "{{.State.Status}}", cid).stdout.strip() == "running"
        after = wait_logs(podman, cid, len(before) + 5)
        # The same process continues: the counter goes on from where it stopped, no restart.
        assert after[: len(before)] == before
        assert after == list(range(1, len(after) + 1)), after

        # --leave-running keeps it going; an exported checkpoint is written.
        export = Path(tempfile.mkdtemp(dir="/tmp")) / "cp.tar.gz"
        try:
            podman("container", "checkpoint", "--leave-running", "--export", str(export), cid)
            assert export.stat().st_size > 0
            assert podman("inspect", "--format", "{{.State.Status}}", cid).stdout.strip() == "running"
            n = len(numbers(podman("logs", cid).stdout))
            wait_logs(podman, cid, n + 3)
        finally:
            shutil.rmtree(export.parent, ignore_errors=True)
        # --pre-dump: refused with the kernel's reason where soft-dirty tracking is missing.
        from berth.runtime import checkpoint as ck
        from berth.runtime import criu

        if ck.can_pre_dump(criu.find()) is not None:
            p = podman("container", "checkpoint", "--pre-checkpoint", cid, check=False)
            assert p.returncode != 0 and "soft-dirty" in p.stderr, p.stderr
            assert podman("inspect", "--format", "{{.State.Status}}", cid).stdout.strip() == "running"
    finally:
        podman("rm", "--force", "--time", "0", cid, check=False)
