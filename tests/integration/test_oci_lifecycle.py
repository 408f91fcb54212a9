"""berth-runtime driven as podman's conmon and containerd's shim drive it: the OCI lifecycle,
run, exec, the console socket, hooks, config errors, pause/resume, update, events, ps.

Each test has its own --root and a cgroupsPath under the session prefix; the test process is a
child subreaper, so container inits (whose runtime parent exits after ``create``) are reparented
to it and reaped at teardown.
"""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import cgroup_roots

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / ".venv" / "bin" / "berth-runtime"


def _subreaper(on: bool = True) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Runtime:
    """``berth-runtime --root ROOT``, with a bundle of the busybox copy (read-only root)."""

    def __init__(self, tmp: Path, rootfs: Path, cgroup: str) -> None:
        self.root = tmp / "state"
        self.bundle = tmp / "bundle"
        self.bundle.mkdir()
        self.rootfs = rootfs
        self.cgroup = cgroup
        self.log = tmp / "runtime.log"
        self.made: list[str] = []

    def config(self, args: list[str], **changes) -> dict:
        from berth.spec import runc_spec

        cfg = runc_spec()
        cfg["root"] = {"path": str(self.rootfs), "readonly": True}
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = args
        cfg["linux"]["cgroupsPath"] = self.cgroup
        for key, value in changes.items():
            cfg[key] = value
        return cfg

    def write(self, cfg: dict | str) -> None:
        text = cfg if isinstance(cfg, str) else json.dumps(cfg)
        (self.bundle / "config.json").write_text(text)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 30, **kw
    ) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("cwd", self.bundle)
        proc = subprocess.run(
            [str(RUNTIME), "--root", str(self.root), "--log", str(self.log), "--log-format", "json", *args],
            text=True, timeout=timeout, check=False, **kw,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def create(self, cid: str, *extra: str, out: Path | None = None) -> None:
        """create, with the container's stdio on a file (a pipe would keep subprocess.run waiting)."""
        self.made.append(cid)
        sink = open(out or os.devnull, "w")  # noqa: SIM115
        try:
            self("create", "--bundle", str(self.bundle), *extra, cid, capture_output=False,
                 stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)  # fmt: skip
        finally:
            sink.close()

    def state(self, cid: str) -> dict:
        return json.loads(self("state", cid).stdout)

    def wait_status(self, cid: str, want: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            _reap_all()
            st = self.state(cid)
            if st["status"] == want:
                return st
            assert time.monotonic() < deadline, f"{cid} is {st['status']}, not {want}"
            time.sleep(0.02)

    def cleanup(self) -> None:
        for cid in self.made:
            self("delete", "--force", cid, check=False)
        _reap_all()


@pytest.fixture
def rt(tmp_path: Path, busybox_rootfs: Path, prefix: str, unique: str):
    _subreaper()
    r = Runtime(tmp_path, busybox_rootfs, f"/{prefix}/{unique}/c")
    yield r
    r.cleanup()
    _subreaper(False)  # other tests expect orphans to go to the host's init
    for top in cgroup_roots():
        for d in (top / prefix / unique / "c", top / prefix / unique, top / prefix):
            try:
                d.rmdir()
            except OSError:
                pass
    left = [p for top in cgroup_roots() for p in [top / prefix / unique] if p.exists()]
    assert not left, f"cgroups left: {left}"
    assert not [n for n in os.listdir(r.root) if not n.startswith(".")] if r.root.exists() else True


def test_lifecycle(rt: Runtime, unique: str) -> None:
    rt.write(rt.config(["sleep", "100"]))
    rt.create(unique, "--pid-file", str(rt.bundle / "pid"))
    st = rt.state(unique)
    assert st["status"] == "created"
    assert st["pid"] == int((rt.bundle / "pid").read_text())
    assert st["bundle"] == str(rt.bundle)
    assert st["ociVersion"].startswith("1.")
    assert "created" in st
    assert "rootfs" in st
    # Not yet running: the init waits, its command has not been exec'd.
    assert "sleep" not in Path(f"/proc/{st['pid']}/cmdline").read_text()
    rt("start", unique)
    st = rt.wait_status(unique, "running")
    assert Path(f"/proc/{st['pid']}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"
    listed = json.loads(rt("list", "--format", "json").stdout)
    assert [c["id"] for c in listed] == [unique]
    rt("kill", unique, "KILL")
    rt.wait_status(unique, "stopped")
    again = rt("kill", unique, "KILL", check=False)
    assert again.returncode != 0
    assert "container not running" in again.stderr
    rt("delete", unique)
    gone = rt("state", unique, check=False)
    assert gone.returncode != 0
    assert "does not exist" in gone.stderr
    # errors are JSON lines in the log, as conmon and the shim read them
    last = json.loads(rt.log.read_text().splitlines()[-1])
    assert last["level"] == "error"
    assert "does not exist" in last["msg"]


def test_start_twice_and_delete_running(rt: Runtime, unique: str) -> None:
    rt.write(rt.config(["sleep", "100"]))
    rt.create(unique)
    rt("start", unique)
    second = rt("start", unique, check=False)
    assert second.returncode != 0
    busy = rt("delete", unique, check=False)
    assert busy.returncode != 0
    assert rt.state(unique)["status"] == "running"
    rt("delete", "--force", unique)
    assert rt("state", unique, check=False).returncode != 0


def test_run_exit_status_and_output(rt: Runtime, unique: str) -> None:
    rt.write(rt.config(["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3"]))
    proc = rt("run", unique, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "out-42\n"
    assert "err" in proc.stderr
    assert rt("state", unique, check=False).returncode != 0  # run deletes the container


def test_run_detached_and_exec(rt: Runtime, unique: str) -> None:
    rt.write(rt.config(["sleep", "100"], hostname="h" + unique))
    rt.made.append(unique)
    sink = open(os.devnull, "w")  # noqa: SIM115
    try:
        rt("run", "-d", "--bundle", str(rt.bundle), unique, capture_output=False, stdin=subprocess.DEVNULL,
           stdout=sink, stderr=sink)  # fmt: skip
    finally:
        sink.close()
    st = rt.wait_status(unique, "running")
    out = rt("exec", unique, "sh", "-c", "hostname; echo $$; cat /proc/1/cmdline | tr '\\0' ' '")
    host, mypid, init_cmd = out.stdout.splitlines()
    assert host == "h" + unique
    assert int(mypid) > 1  # in the container's pid namespace
    assert init_cmd.startswith("sleep 100")
    assert rt("exec", unique, "sh", "-c", "exit 7", check=False).returncode == 7
    missing = rt("exec", unique, "no-such-command", check=False)
    assert missing.returncode != 0
    assert "executable file not found" in missing.stderr
    # --process FILE with a user and cwd, detached with a pid file (conmon's and the shim's way)
    proc_file = rt.bundle / "process.json"
    proc_file.write_text(json.dumps({"args": ["sh", "-c", "id -u > /dev/null; sleep 30"], "cwd": "/tmp",
                                     "user": {"uid": 1000, "gid": 1000}, "env": ["PATH=/bin"]}))  # fmt: skip
    pid_file = rt.bundle / "exec.pid"
    rt("exec", "--detach", "--process", str(proc_file), "--pid-file", str(pid_file), unique,
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, capture_output=False)  # fmt: skip
    epid = int(pid_file.read_text())
    status = Path(f"/proc/{epid}/status").read_text()
    assert "Uid:\t1000\t1000" in status
    assert os.readlink(f"/proc/{epid}/cwd") == "/tmp"
    assert os.readlink(f"/proc/{epid}/ns/pid") == os.readlink(f"/proc/{st['pid']}/ns/pid")
    assert os.readlink(f"/proc/{epid}/ns/mnt") == os.readlink(f"/proc/{st['pid']}/ns/mnt")
    pids = json.loads(rt("ps", "--format", "json", unique).stdout)
    assert st["pid"] in pids
    assert epid in pids
    rt("kill", "--all", unique, "KILL")
    rt.wait_status(unique, "stopped")
    rt("delete", unique)


def _console_listener(path: Path) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(20)
    return srv


def _recv_fd(srv: socket.socket) -> int:
    conn, _ = srv.accept()
    try:
        fds = array.array("i")
        _msg, anc, _flags, _addr = conn.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: fds.itemsize])
        return fds[0]
    finally:
        conn.close()


def _read_until(fd: int, needle: bytes, timeout: float = 10) -> bytes:
    import select

    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} on the console; got {out!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_console_socket_delivers_a_working_pty(rt: Runtime, unique: str, tmp_path: Path) -> None:
    cfg = rt.config(["sh"])
    cfg["process"]["terminal"] = True
    cfg["process"]["consoleSize"] = {"height": 33, "width": 111}
    rt.write(cfg)
    srv = _console_listener(tmp_path / "console.sock")
    try:
        rt.create(unique, "--console-socket", str(tmp_path / "console.sock"))
        master = _recv_fd(srv)
    finally:
        srv.close()
    try:
        rt("start", unique)
        os.write(master, b"tty; stty size; echo done-$((40+2))\n")
        out = _read_until(master, b"done-42")
        assert b"/dev/pts/0" in out or b"/dev/console" in out
        assert b"33 111" in out
        os.write(master, b"exit\n")
        rt.wait_status(unique, "stopped")
    finally:
        os.close(master)
    rt("delete", unique)


def test_hooks_in_order_with_state(rt: Runtime, unique: str, tmp_path: Path) -> None:
    logdir = tmp_path / "hooklog"
    logdir.mkdir()
    phases = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
    hooks = {}
    for phase in phases:
        # startContainer runs inside the container: its log dir is bind-mounted at /hooklog
        target = "/hooklog" if phase == "startContainer" else str(logdir)
        script = f"cat > {target}/{phase}.json; echo {phase} >> {target}/order"
        hooks[phase] = [{"path": "/bin/sh", "args": ["sh", "-c", script], "timeout": 10}]
    cfg = rt.config(["sh", "-c", "exit 0"], hooks=hooks)
    cfg["mounts"].append(
        {"destination": "/hooklog", "type": "bind", "source": str(logdir), "options": ["rbind"]}
    )
    rt.write(cfg)
    rt.create(unique)
    pid = rt.state(unique)["pid"]
    assert (logdir / "order").read_text().split() == phases[:3]
    rt("start", unique)
    rt.wait_status(unique, "stopped")
    rt("delete", unique)
    assert (logdir / "order").read_text().split() == phases
    states = {p: json.loads((logdir / f"{p}.json").read_text()) for p in phases}
    assert all(s["id"] == unique for s in states.values())
    assert states["createRuntime"]["pid"] == pid
    assert states["createRuntime"]["status"] == "creating"
    assert states["poststart"]["status"] in ("running", "stopped")
    assert states["poststop"]["status"] == "stopped"


def test_failing_hook_fails_create_and_leaves_nothing(rt: Runtime, unique: str) -> None:
    hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 9"]}]}
    rt.write(rt.config(["true"], hooks=hooks))
    proc = rt("create", "--bundle", str(rt.bundle), unique, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "hooks.createRuntime[0]" in proc.stderr
    assert "exit status 9" in proc.stderr
    assert rt("state", unique, check=False).returncode != 0


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda c: "{not json", "invalid JSON"),
        (lambda c: c["process"].__setitem__("args", "sh"), "process.args"),
        (lambda c: c["process"]["user"].__setitem__("uid", "root"), "process.user.uid"),
        (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "linux.namespaces[6].type"),
        (lambda c: c["mounts"][1].__setitem__("destination", "dev"), "mounts[1].destination"),
        (
            lambda c: c["linux"].__setitem__("resources", {"memory": {"limit": "1G"}}),
            "linux.resources.memory.limit",
        ),
        (lambda c: c.pop("root"), "root"),
    ],
)
def test_bad_config_names_the_json_path_and_creates_nothing(
    rt: Runtime, unique: str, mutate, path: str
) -> None:
    cfg = rt.config(["true"])
    result = mutate(cfg)
    rt.write(result if isinstance(result, str) else cfg)
    proc = rt("create", "--bundle", str(rt.bundle), unique, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert path in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not rt.root.exists() or not [n for n in os.listdir(rt.root) if not n.startswith(".")]


def test_pause_resume_update_events(rt: Runtime, unique: str) -> None:
    rt.write(rt.config(["sleep", "100"]))
    rt.create(unique)
    rt("start", unique)
    rt("pause", unique)
    assert rt.state(unique)["status"] == "paused"
    rt("resume", unique)
    assert rt.state(unique)["status"] == "running"
    rt("update", "--resources", "-", unique, input=json.dumps({"pids": {"limit": 42}}))
    ev = json.loads(rt("events", "--stats", unique).stdout)
    assert ev["type"] == "stats"
    assert ev["data"]["pids"]["limit"] == 42
    assert ev["data"]["pids"]["current"] >= 1
    rt("update", "--pids-limit", "43", unique)
    assert json.loads(rt("events", "--stats", unique).stdout)["data"]["pids"]["limit"] == 43
    rt("kill", unique, "9")
    rt.wait_status(unique, "stopped")
    rt("delete", unique)


def test_rlimit_above_host_is_lowered_with_a_warning_in_the_log(rt: Runtime, unique: str) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= 1 << 30:
        pytest.skip("the host's hard RLIMIT_NOFILE is unlimited: nothing to lower")
    cfg = rt.config(["sh", "-c", "ulimit -Hn"])
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1 << 30, "hard": 1 << 30}]
    rt.write(cfg)
    proc = rt("run", unique, stdin=subprocess.DEVNULL)
    assert proc.stdout.strip() == str(hard)
    assert "warning" not in proc.stdout + proc.stderr  # not in the container's output
    warnings = [json.loads(line) for line in rt.log.read_text().splitlines()]
    assert any(w["level"] == "warning" and "RLIMIT_NOFILE" in w["msg"] for w in warnings)
    # strict: the annotation makes it an error instead
    cfg["annotations"] = {"org.berth.rlimits": "strict"}
    rt.write(cfg)
    strict = rt("run", unique + "s", check=False, stdin=subprocess.DEVNULL)
    assert strict.returncode != 0
    assert "process.rlimits" in strict.stderr


def test_features_and_spec(rt: Runtime, tmp_path: Path) -> None:
    feats = json.loads(rt("features").stdout)
    assert "createContainer" in feats["hooks"]
    assert "pid" in feats["linux"]["namespaces"]
    assert feats["linux"]["seccomp"]["enabled"] is True
    d = tmp_path / "specdir"
    d.mkdir()
    rt("spec", "--bundle", str(d))
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["process"]["args"] == ["sh"]
    assert rt("spec", "--bundle", str(d), check=False).returncode != 0
    version = subprocess.run([str(RUNTIME), "--version"], capture_output=True, text=True, check=True).stdout
    assert "spec: 1." in version


def test_signal_names(rt: Runtime, unique: str) -> None:
    # pid 1 of a pid namespace gets only the signals it handles: the shell traps USR1
    rt.write(rt.config(["sh", "-c", "trap 'exit 0' USR1; while :; do sleep 0.05; done"]))
    rt.create(unique)
    rt("start", unique)
    time.sleep(0.2)  # let the shell install its trap (no event to wait for from outside)
    rt("kill", unique, "SIGUSR1")
    st = rt.wait_status(unique, "stopped")
    assert st["pid"] == 0
    assert rt("kill", unique, "NOSUCHSIG", check=False).returncode != 0
    rt("delete", unique)


def _leftovers(rt: Runtime, cid: str) -> list[str]:
    """What of container ``cid`` is still on the host: its state dir, cgroup, processes."""
    left = [str(rt.root / cid)] if (rt.root / cid).exists() else []
    for top in cgroup_roots():
        cg = top / rt.cgroup.lstrip("/")
        if cg.is_dir():
            left.append(str(cg))
    return left


@pytest.mark.parametrize("verb", ["start", "run"])
@pytest.mark.parametrize("failure", ["startContainer", "interpreter"])
def test_failure_between_start_and_exec_fails_start_and_stops(
    rt: Runtime, unique: str, verb: str, failure: str
) -> None:
    """runtime-spec lifecycle step 7: a failing startContainer hook makes ``start`` generate an
    error and the container stops.  The same for an execve that fails only then (a script whose
    #! interpreter is missing: the command is found at create, as runc's LookPath finds it)."""
    if failure == "startContainer":
        cfg = rt.config(["sleep", "100"], hooks={"startContainer": [{"path": "/bin/false"}]})
        want = "hooks.startContainer[0]"
    else:
        script = rt.bundle / "script"
        script.write_text("#!/no/such/interpreter\necho hi\n")
        script.chmod(0o755)
        cfg = rt.config(["/script"])
        cfg["mounts"].append({"destination": "/script", "type": "bind", "source": str(script),
                              "options": ["bind", "ro"]})  # fmt: skip
        want = "/script"
    rt.write(cfg)
    if verb == "start":
        rt.create(unique)  # create succeeds: the failure comes only at the start (as runc)
        assert rt.state(unique)["status"] == "created"
        proc = rt("start", unique, check=False)
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert want in proc.stderr
        st = rt.state(unique)
        assert (st["status"], st["pid"]) == ("stopped", 0)
        assert rt("start", unique, check=False).returncode != 0
        rt("delete", unique)  # a plain delete: it is stopped
    else:
        rt.made.append(unique)
        proc = rt("run", unique, check=False, stdin=subprocess.DEVNULL)
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert want in proc.stderr
        assert proc.stdout == ""
    _reap_all()
    assert _leftovers(rt, unique) == []
    logged = [json.loads(line) for line in rt.log.read_text().splitlines()]
    assert any(e["level"] == "error" and want in e["msg"] for e in logged)


def test_start_of_a_command_that_runs_still_succeeds_at_once(rt: Runtime, unique: str) -> None:
    """``start`` waits for the exec (its fifo's end), not for the command."""
    rt.write(rt.config(["sleep", "100"]))
    rt.create(unique)
    t0 = time.monotonic()
    rt("start", unique)
    assert time.monotonic() - t0 < 5
    assert rt.state(unique)["status"] == "running"
    rt("delete", "--force", unique)


@pytest.mark.parametrize(
    ("mount", "field", "reason"),
    [
        (
            {"type": "bind", "source": "/nonexistent-berth-src", "options": ["rbind"]},
            "source",
            "does not exist",
        ),
        ({"type": "nosuchfs", "source": "none"}, "destination", "No such device"),
        ({"type": "tmpfs", "source": "tmpfs", "options": ["size=bogus"]}, "destination", "Invalid argument"),
        (
            {"type": "tmpfs", "source": "tmpfs", "destination": "/etc/passwd/below"},
            "destination",
            "Not a dir",
        ),
    ],
)
def test_mount_error_names_the_field_not_the_fd_path(
    rt: Runtime, unique: str, mount: dict, field: str, reason: str
) -> None:
    cfg = rt.config(["true"])
    index = len(cfg["mounts"])
    cfg["mounts"].append({"destination": "/mnt/m", **mount})
    rt.write(cfg)
    proc = rt("create", "--bundle", str(rt.bundle), unique, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, proc.stderr
    assert f"mounts[{index}].{field}" in line
    assert reason in line
    assert "/proc/self/fd" not in line
    _reap_all()
    assert _leftovers(rt, unique) == []
    assert [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if unique in ln] == []


def test_berth_run_mount_error_is_one_line_status_125(
    berth_env: dict[str, str], busybox_rootfs: Path, berth_argv: list[str], check_clean
) -> None:
    # (fixtures, not "from conftest import": in the whole suite that name is another conftest)
    proc = subprocess.run(
        [*berth_argv, "run", "--rootfs", str(busybox_rootfs), "--tmpfs", "/etc/passwd/below", "true"],
        env=berth_env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert proc.returncode == 125, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, proc.stderr
    assert "].destination" in line and "/etc/passwd/below" in line and "Not a directory" in line
    assert "/proc/self/fd" not in line
    check_clean()


def test_gc_leaves_a_create_in_progress_and_takes_a_crashed_one(
    rt: Runtime, unique: str, berth_env: dict[str, str], tmp_path: Path, berth_argv: list[str]
) -> None:
    """``berth gc`` over the runtime's --root: a state still "creating" whose create is alive (held
    in a createRuntime hook) is left; one whose create was killed is removed with its cgroup."""
    env = {
        **berth_env,
        "BERTH_RUN": str(rt.root),
        "BERTH_CGROUP_PARENT": f"{berth_env['BERTH_CGROUP_PARENT']}gc",
    }
    mark = tmp_path / "in-hook"
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"touch {mark}; sleep 1.5"], "timeout": 20}
    rt.write(rt.config(["sleep", "100"], hooks={"createRuntime": [hook]}))

    def gc() -> str:
        r = subprocess.run(
            [*berth_argv, "gc"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    def held_create(cid: str) -> subprocess.Popen:
        rt.made.append(cid)
        p = subprocess.Popen(
            [str(RUNTIME), "--root", str(rt.root), "create", "--bundle", str(rt.bundle), cid],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not mark.exists():
            assert p.poll() is None, p.stderr.read() if p.stderr else ""
            assert time.monotonic() < deadline, "the createRuntime hook did not run"
            time.sleep(0.02)
        mark.unlink()
        return p

    p = held_create(unique)
    assert json.loads((rt.root / unique / "state.json").read_text())["status"] == "creating"
    assert f"removed state {unique}" not in gc()
    assert p.wait(timeout=30) == 0, p.stderr.read() if p.stderr else ""
    assert rt.state(unique)["status"] == "created"
    rt("delete", "--force", unique)

    crashed = unique + "k"
    p = held_create(crashed)
    p.kill()
    p.wait()
    assert (rt.root / crashed / "state.json").exists()
    assert f"removed state {crashed}" in gc()
    assert not (rt.root / crashed).exists()
    _reap_all()
    assert _leftovers(rt, crashed) == []
