"""Shared fixtures: a unique name prefix per test session, per-test store/state roots, and a
session-end check that nothing berth made under the prefix is left on the host."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cgroup_roots

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
# A short prefix: it ends up in cgroup, netns, link (15 chars max) and nft table names.
PREFIX = f"bt{secrets.token_hex(3)}"


def leaks(prefix: str) -> list[str]:
    """Everything on the host whose name carries ``prefix``."""
    found: list[str] = []
    for top in cgroup_roots():
        if top.is_dir():
            found += [f"cgroup {p}" for p in top.rglob(f"*{prefix}*") if p.is_dir()][:5]
    found += [
        f"mount {line.split()[4]}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if prefix in line
    ]
    if shutil.which("ip"):
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        found += [f"link {ln.split(': ')[1]}" for ln in out.splitlines() if prefix in ln]
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        found += [f"netns {ln}" for ln in out.splitlines() if prefix in ln]
    if shutil.which("nft"):
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        found += [f"nft {ln}" for ln in out.splitlines() if prefix in ln]
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [f"loop {ln}" for ln in out.splitlines() if prefix in ln]
    return found


@pytest.fixture(scope="session")
def prefix() -> str:
    """The session's unique prefix for every name a test gives a kernel object."""
    return PREFIX


@pytest.fixture(scope="session", autouse=True)
def _session_leak_check(request: pytest.FixtureRequest):
    yield
    if os.geteuid() != 0:
        return
    left = leaks(PREFIX)
    if left:
        pytest.fail("resources leaked by the test session:\n  " + "\n  ".join(left), pytrace=False)


@pytest.fixture
def unique(prefix: str, request: pytest.FixtureRequest) -> str:
    """A name unique to this test: prefix + a short random tag."""
    return f"{prefix}{secrets.token_hex(2)}"


@pytest.fixture
def berth_env(tmp_path: Path, prefix: str, unique: str) -> dict[str, str]:
    """Environment for running the berth CLI with a private store, state root and cgroup parent."""
    env = dict(os.environ)
    env["BERTH_ROOT"] = str(shared_store())
    env["BERTH_RUN"] = str(tmp_path / "run")
    env["BERTH_CGROUP_PARENT"] = f"{prefix}/{unique}"
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    yield env
    # Remove the per-test cgroup parent (empty once every guest ended).
    for top in cgroup_roots():
        for d in (top / prefix / unique, top / prefix):
            try:
                d.rmdir()
            except OSError:
                pass


_STORE: list[Path] = []


def shared_store() -> Path:
    """One berth store per session (templates are built once), removed at exit."""
    if not _STORE:
        import atexit
        import tempfile

        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-store-"))
        _STORE.append(path)
        atexit.register(shutil.rmtree, path, True)
    return _STORE[0]


def berth_cmd() -> list[str]:
    """How to call the berth CLI under test."""
    launcher = VENV_BIN / "berth"
    if launcher.exists():
        return [str(launcher)]
    return [sys.executable, "-m", "berth.cli"]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a real kernel")
