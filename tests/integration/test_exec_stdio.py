"""``berth exec`` / ``enter`` / ``run`` on an operator's terminal: no guest process ever holds an
fd of it, so one left in the background gets nothing typed after berth returned and cannot write
to the screen (reviewer finding H3); what the command reads and writes, its exit status and
the signals that stop it still pass.

The terminal is a real pty whose slave is the controlling terminal of the berth command (its
own session, as a login shell's job would be); the test keeps the slave open too, as the
operator's shell does, so input nobody read stays queued where the shell would read it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import secrets
import select
import signal
import stat
import subprocess
import termios
import time
import tty
from pathlib import Path

import pytest

from helpers import cgroup_roots

REPO = Path(__file__).resolve().parents[2]
BERTH = str(REPO / ".venv" / "bin" / "berth")


def _take_terminal() -> None:
    fcntl.ioctl(1, termios.TIOCSCTTY, 0)  # stdout: always the terminal
    # A foreground job of a shell on that terminal: Ctrl-C and Ctrl-\ at their defaults, even
    # where these tests run as a background job of a script (which ignores SIGINT and SIGQUIT:
    # berth keeps an ignored signal ignored, as nohup asks, and the ^C test then hung).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Terminal:
    """A berth command on a fresh pty (stdin, stdout and stderr unless given)."""

    def __init__(self, args: list[str], env: dict[str, str], *, raw: bool = False, **kw) -> None:
        self.master, self.slave = pty.openpty()
        if raw:
            tty.setraw(self.slave)
        self.rdev = os.fstat(self.slave).st_rdev
        self.args = [BERTH, *args]
        kw.setdefault("stdin", self.slave)
        kw.setdefault("stderr", self.slave)
        # preexec_fn: only TIOCSCTTY, in the child's new session
        self.proc = subprocess.Popen(
            self.args,
            env=env,
            stdout=self.slave,
            start_new_session=True,
            preexec_fn=_take_terminal,  # noqa: PLW1509
            **kw,
        )
        self.out = b""

    def _read(self, timeout: float) -> bool:
        if select.select([self.master], [], [], max(timeout, 0))[0]:
            self.out += os.read(self.master, 1 << 16)
            return True
        return False

    def wait_for(self, data: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while data not in self.out:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {data!r} on the terminal within {timeout}s: {self.out!r}")
            self._read(deadline - time.monotonic())

    def finish(self, timeout: float = 15) -> int:
        """berth's exit status, the terminal's output read meanwhile and until it is quiet."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"{self.args} did not end within {timeout}s: {self.out!r}")
            self._read(0.02)
        while self._read(0.05):
            pass
        return self.proc.returncode

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def queued(self) -> bytes:
        """The input typed that nobody read: what the operator's shell reads next."""
        os.set_blocking(self.slave, False)
        try:
            return os.read(self.slave, 4096)
        except BlockingIOError:
            return b""
        finally:
            os.set_blocking(self.slave, True)

    def holders(self) -> list[str]:
        """Processes other than this test holding an fd of the terminal."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == self.rdev:
                        found.append(f"{pid} fd {fd}: {Path(f'/proc/{pid}/cmdline').read_bytes()!r}")
            except OSError:
                continue
        return found

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture(scope="module")
def env(prefix: str, tmp_path_factory: pytest.TempPathFactory):
    tag = f"{prefix}{secrets.token_hex(2)}"
    base = tmp_path_factory.mktemp("execstdio")
    e = dict(os.environ)
    e.update(
        BERTH_ROOT=str(base / "store"), BERTH_RUN=str(base / "run"), BERTH_CGROUP_PARENT=f"{prefix}/{tag}"
    )
    e["PATH"] = f"{REPO / '.venv' / 'bin'}:{e.get('PATH', '/usr/bin:/bin')}"
    yield e
    _berth(e, "gc")
    pidfile = base / "run" / ".guests" / "guestd.pid"
    if pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    for top in cgroup_roots():
        d = top / prefix / tag
        while d.exists() and time.monotonic() < deadline:
            try:
                d.rmdir()
            except OSError:
                time.sleep(0.05)
        assert not d.exists(), f"left behind: {d}"


def _berth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BERTH, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def guest(env: dict[str, str]):
    """A running guest (host ids, CAP_SYS_ADMIN: one that could push input into a terminal it
    held with TIOCSTI) and the host path of its /tmp."""
    name = f"{env['BERTH_CGROUP_PARENT'].split('/')[1]}-t"
    r = _berth(env, "create", name, "--net", "none", "--userns", "host", "--cap-add", "SYS_ADMIN",
               "--no-lxcfs", "--cmd", "sleep 100000")  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        r = _berth(env, "start", name)
        assert r.returncode == 0, r.stderr
        yield name, Path(env["BERTH_ROOT"]) / "guests" / name / "upper" / "tmp"
    finally:
        r = _berth(env, "destroy", "--force", name)
        assert r.returncode == 0, r.stderr


@pytest.fixture
def terminal():
    made: list[Terminal] = []

    def start(*args, **kw) -> Terminal:
        t = Terminal(*args, **kw)
        made.append(t)
        return t

    yield start
    for t in made:
        t.close()


def _wait_file(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.02)


# Left in the background: waits for the test's go, reads a line from each of its fds and writes
# to them (an escape sequence too), then says it is done.  The foreground says which of its own
# fds are terminals.
BACKGROUND = """trap '' PIPE
( while [ ! -e /tmp/{t}-go ]; do sleep 0.02; done
  for fd in 0 1 2; do read -t 1 -r l <&$fd && echo "fd$fd:$l" >>/tmp/{t}-stolen; done
  printf 'GUEST-LATE\\033]0;pwned\\007'; printf 'GUEST-LATE' >&2
  touch /tmp/{t}-done ) &
for fd in 0 1 2; do [ -t $fd ] && echo "terminal on $fd"; done
echo started"""


@pytest.mark.parametrize("interactive", [False, True], ids=["plain", "-i"])
def test_background_process_gets_nothing_of_the_terminal(guest, env, terminal, interactive: bool) -> None:
    name, tmp = guest
    t_ = secrets.token_hex(3)
    opts = ["-i"] if interactive else []
    t = terminal(["exec", *opts, name, "--", "sh", "-c", BACKGROUND.format(t=t_)], env)
    assert t.finish() == 0, t.out
    assert b"started" in t.out
    assert b"terminal on" not in t.out  # the command's own fds: no terminal either
    assert t.holders() == []
    after = len(t.out)
    t.type(b"hunter2\n")  # the operator's next line, for their shell
    assert _berth(env, "exec", name, "--", "touch", f"/tmp/{t_}-go").returncode == 0
    _wait_file(tmp / f"{t_}-done")
    t.finish()
    assert b"GUEST-LATE" not in t.out[after:]
    assert b"pwned" not in t.out
    stolen = tmp / f"{t_}-stolen"
    assert not stolen.exists() or b"hunter2" not in stolen.read_bytes()
    assert t.queued() == b"hunter2\n"


def test_stdin_with_i_exit_status_and_eof(guest, env, terminal) -> None:
    name, _ = guest
    t = terminal(
        ["exec", "-i", name, "--", "sh", "-c", 'while read -r l; do echo "got:$l"; done; exit 5'], env
    )
    t.type(b"one\ntwo\n\x04")  # ^D on an empty line: end of file
    assert t.finish() == 5, t.out
    assert b"got:one" in t.out and b"got:two" in t.out


def test_large_binary_output_to_a_raw_terminal(guest, env, terminal) -> None:
    """Every byte passes unchanged (the terminal in raw mode), stderr to a pipe goes as it is."""
    name, tmp = guest
    size = 1 << 20
    script = f"head -c {size} /dev/urandom | tee /tmp/big; echo err >&2; exit 7"
    t = terminal(["exec", name, "--", "sh", "-c", script], env, raw=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while len(t.out) < size and time.monotonic() < deadline:
        t._read(1)
    assert t.finish() == 7
    data = (tmp / "big").read_bytes()
    assert len(data) == size
    assert t.out == data
    assert t.proc.stderr is not None and t.proc.stderr.read() == b"err\n"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_signals_reach_the_command(guest, env, terminal, how: str) -> None:
    name, _ = guest
    script = "trap 'echo got-int; exit 5' INT; trap 'echo got-term; exit 6' TERM; echo ready; while :; do sleep 0.05; done"
    t = terminal(["exec", name, "--", "sh", "-c", script], env)
    t.wait_for(b"ready")
    if how == "ctrl-c":
        t.type(b"\x03")  # the terminal sends SIGINT to berth, its foreground job
        assert t.finish() == 5, t.out
        assert b"got-int" in t.out
    else:
        t.proc.send_signal(signal.SIGTERM)
        assert t.finish() == 6, t.out
        assert b"got-term" in t.out


def test_enter_with_piped_stdin_writes_through_a_pipe(guest, env, terminal) -> None:
    name, _ = guest
    t = terminal(["enter", name], env, stdin=subprocess.PIPE)
    assert t.proc.stdin is not None
    t.proc.stdin.write(b"[ -t 1 ] || echo no-terminal-in-enter; sleep 30 & exit 3\n")
    t.proc.stdin.close()
    assert t.finish() == 3, t.out
    assert b"no-terminal-in-enter" in t.out
    assert t.holders() == []


def test_exec_t_keeps_the_terminal_to_berth(guest, env, terminal) -> None:
    name, _ = guest
    t = terminal(["exec", "-t", name, "--", "sh", "-c", "sleep 30 & echo started"], env)
    assert t.finish() == 0, t.out
    assert b"started" in t.out
    assert t.holders() == []


def test_run_leaves_no_process_on_the_terminal(env, terminal) -> None:
    """berth run's guest goes with its command (its pid namespace): the background goes too."""
    t = terminal(["run", "--", "sh", "-c", "sleep 30 & echo started"], env)
    assert t.finish() == 0, t.out
    assert b"started" in t.out
    assert t.holders() == []
