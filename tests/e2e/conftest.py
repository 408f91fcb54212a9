"""Session fixtures for the containerd and CRI tests: OCI archives of the busybox template and of
a static pause binary, and the host directories containerd's shims insist on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from containerd_env import REPO, oci_archive

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGTERM, done);
    signal(SIGINT, done);
    for (;;) pause();
}
"""


@pytest.fixture(scope="session")
def e2e_images(tmp_path_factory: pytest.TempPathFactory, prefix: str) -> dict[str, dict]:
    """``{"busybox": ..., "pause": ...}``: each ``{"tar": Path, "name": str, **oci_archive()}``."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = tmp_path_factory.mktemp(f"{prefix}-images")
    env = {**os.environ, "BERTH_ROOT": str(base / "store")}
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "berth"), "template", "build", "busybox"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rootfs = Path(proc.stdout.strip().splitlines()[-1])
    assert (rootfs / "bin" / "busybox").exists(), proc.stdout
    images = {}
    name = "localhost/berth-busybox:test"
    images["busybox"] = {
        "tar": base / "busybox.tar",
        "name": name,
        **oci_archive(base / "busybox.tar", rootfs, name, {"Cmd": ["sh"]}),
    }
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the static pause binary")
    (base / "pause.c").write_text(PAUSE_C)
    subprocess.run([gcc, "-static", "-Os", "-o", str(base / "pause"), str(base / "pause.c")], check=True)
    name = "localhost/berth-pause:test"
    pause = {"pause": ((base / "pause").read_bytes(), 0o755)}
    images["pause"] = {
        "tar": base / "pause.tar",
        "name": name,
        **oci_archive(base / "pause.tar", pause, name, {"Entrypoint": ["/pause"]}),
    }
    yield images
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def containerd_host_dirs():
    """containerd 1.6's shims put their sockets in /run/containerd/s (not configurable) and ctr its
    fifos in /run/containerd/fifo: remove those directories afterwards if this session made them."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd is not installed (make test installs Debian's containerd)")
    top = Path("/run/containerd")
    existed = top.exists()
    yield
    if not existed:
        for d in (top / "s", top / "fifo", top):
            try:
                d.rmdir()
            except OSError:
                pass
