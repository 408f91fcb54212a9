"""Fixtures for driving ``berth run`` as root and asserting from inside the guest.

The probe (tests/probes/probe.c) is compiled once per session with ``gcc -static`` and
copied into test root filesystems: a copy of the busybox template, and a "minimal" rootfs
that holds nothing but the probe (no /proc, /dev, /etc: any rootfs a user brings).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import cgroup_roots

# Not "from conftest import ...": this file is a conftest.py too, and the name is ambiguous.
REPO = Path(__file__).resolve().parents[2]
PROBE_SRC = REPO / "tests" / "probes" / "probe.c"
RUN_TIMEOUT = 30


def berth_cmd() -> list[str]:
    launcher = REPO / ".venv" / "bin" / "berth"
    return [str(launcher)] if launcher.exists() else [sys.executable, "-m", "berth.cli"]


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root and a real kernel")


@dataclass
class Result:
    """One finished ``berth run``."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def field(self, key: str) -> str:
        """The value of the probe's ``key: value`` line (the first one)."""
        for line in self.lines():
            k, sep, v = line.partition(": ")
            if sep and k == key:
                return v.strip()
        raise AssertionError(f"no {key!r} line in the probe's output:\n{self.stdout}\nstderr:\n{self.stderr}")

    def error_line(self) -> str:
        """berth's stderr, which must be exactly one line."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{self.stderr}"
        return lines[0]

    def __str__(self) -> str:
        return f"{' '.join(self.args)} -> {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@pytest.fixture(scope="session")
def probe_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe, compiled static for this session."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the static probe (tests/probes/probe.c)")
    out = tmp_path_factory.mktemp("probe") / "probe"
    proc = subprocess.run(
        [gcc, "-static", "-O2", "-Wall", "-o", str(out), str(PROBE_SRC)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        if "cannot find -lc" in proc.stderr:
            pytest.skip("no static libc (libc6-dev): cannot build the static probe")
        pytest.fail(f"building the probe failed:\n{proc.stderr}")
    return out


def install_probe(probe: Path, rootfs: Path) -> None:
    shutil.copy2(probe, rootfs / "probe")
    os.chmod(rootfs / "probe", 0o755)


@pytest.fixture(scope="session")
def busybox_rootfs(probe_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the busybox template with the probe at /probe."""
    from berth.rootfs import template

    if os.geteuid() != 0:
        pytest.skip("needs root and a real kernel")
    src = template.build(str(tmp_path_factory.mktemp("store")), "busybox")
    dest = tmp_path_factory.mktemp("busybox") / "rootfs"
    shutil.copytree(src, dest, symlinks=True)
    install_probe(probe_bin, dest)
    return dest


@pytest.fixture(scope="session")
def minimal_rootfs(probe_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root filesystem with nothing but the probe."""
    dest = tmp_path_factory.mktemp("minimal") / "rootfs"
    dest.mkdir()
    install_probe(probe_bin, dest)
    return dest


@pytest.fixture(params=["busybox", "minimal"])
def any_rootfs(request: pytest.FixtureRequest) -> Path:
    """Each test using this runs against the busybox copy and the probe-only rootfs."""
    return request.getfixturevalue(f"{request.param}_rootfs")


@pytest.fixture
def fresh_rootfs(probe_bin: Path, tmp_path: Path) -> Path:
    """A probe-only rootfs of this test's own (to be made hostile, or checked for what berth made)."""
    dest = tmp_path / "rootfs"
    dest.mkdir()
    install_probe(probe_bin, dest)
    return dest


@pytest.fixture
def berth(berth_env: dict[str, str]):
    """``berth(*run_args, timeout=..., input=..., pass_fds=...)``: run ``berth run`` and check it left nothing."""

    def run(
        *args: str, timeout: float = RUN_TIMEOUT, input: str | None = None, pass_fds=(), check_clean=True
    ) -> Result:
        cmd = [*berth_cmd(), "run", *args]
        proc = subprocess.run(
            cmd,
            env=berth_env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            pass_fds=pass_fds,
            check=False,
        )
        res = Result(cmd, proc.returncode, proc.stdout, proc.stderr)
        if check_clean:
            assert_clean(berth_env)
        return res

    return run


def cgroup_dirs(parent: str) -> list[Path]:
    """The cgroup directories below ``parent`` in every hierarchy."""
    found = []
    for top in cgroup_roots():
        base = top / parent
        if base.is_dir():
            found += [p for p in base.rglob("*") if p.is_dir()]
    return found


def processes_in(parent: str) -> list[int]:
    """Pids of every process whose cgroup path contains ``parent``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if f"/{parent}/" in text or text.rstrip().endswith(f"/{parent}"):
            pids.append(int(entry))
    return pids


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":\t" in line
        )
    except OSError:
        return "(gone)"
    cmd = raw.replace(bytes(1), b" ").decode(errors="replace").strip() or status.get("Name", "?")
    return f"{cmd!r} state {status.get('State', '?')} parent {status.get('PPid', '?')}"


def assert_clean(env: dict[str, str]) -> None:
    """After a run: no state dir, cgroup, mount or process of berth's is left."""
    state_root = env["BERTH_RUN"]
    parent = env["BERTH_CGROUP_PARENT"]
    left = []
    if os.path.isdir(state_root):
        left += [f"state {n}" for n in os.listdir(state_root) if not n.startswith(".")]
    left += [f"cgroup {p}" for p in cgroup_dirs(parent)]
    # A guest init SIGKILLed by a test is reparented to the host's pid 1, which reaps it when it
    # gets to it: give zombies a few seconds before calling them left behind.
    deadline = time.monotonic() + 5
    while processes_in(parent) and time.monotonic() < deadline:
        time.sleep(0.05)
    left += [f"process {pid} {_cmdline(pid)}" for pid in processes_in(parent)]
    left += [
        f"mount {line.split()[4]}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if state_root in line
    ]
    assert not left, "berth left behind:\n  " + "\n  ".join(left)


@pytest.fixture
def berth_argv() -> list[str]:
    """How to call the berth CLI under test."""
    return berth_cmd()


@pytest.fixture
def check_clean(berth_env: dict[str, str]):
    """``check_clean()``: assert that nothing of this test's guests is left."""
    return lambda: assert_clean(berth_env)


class Guest:
    """A ``berth run`` running in the background; its stdout is read line by line with deadlines."""

    def __init__(self, args: list[str], env: dict[str, str], **kw) -> None:
        self.args = [*berth_cmd(), "run", *args]
        self.proc = subprocess.Popen(
            self.args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
        )
        self.out = b""

    def wait_for(self, pattern: str, timeout: float = 15) -> str:
        """Read stdout until a line matches ``pattern``; the line."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            for line in self.out.decode(errors="replace").splitlines():
                if re.search(pattern, line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; output: {self.out!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"guest output ended before {pattern!r}; output: {self.out!r}")
                self.out += chunk

    def finish(self, timeout: float = 15) -> Result:
        out, err = self.proc.communicate(timeout=timeout)
        self.out += out
        return Result(
            self.args, self.proc.returncode, self.out.decode(errors="replace"), err.decode(errors="replace")
        )

    def kill(self) -> None:
        """Stop it (our own child, by pid) if a test failed half-way."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=15)


@pytest.fixture
def background(berth_env: dict[str, str]):
    """Start guests in the background; any still running at teardown are killed (by pid)."""
    started: list[Guest] = []

    def start(*args: str, **kw) -> Guest:
        g = Guest(list(args), berth_env, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.kill()
    # The guests' cgroups go once berth has cleaned up after them.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and cgroup_dirs(berth_env["BERTH_CGROUP_PARENT"]):
        time.sleep(0.05)
    assert_clean(berth_env)
