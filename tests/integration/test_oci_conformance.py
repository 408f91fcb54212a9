"""berth-runtime beside runc: the same bundles through both, their answers compared.

Where the runtime spec and runc agree, berth-runtime must answer as runc does: exit status
(zero or not), the ``state`` fields, ``kill``/``delete`` semantics, and what the container's
process sees (its cwd, groups, rlimits, HOME, capabilities, read-only and masked paths).  Each
scenario runs once per runtime with its own --root, bundle and cgroup; the observations are
compared as data.  Skipped where runc is not installed.

Also run by hand, to list every difference (known ones included)::

    .venv/bin/python -m pytest tests/integration/test_oci_conformance.py -q -rs

Differences kept on purpose are asserted as berth's behaviour in their own tests below
(``start`` failing when the init fails before its exec; exit statuses 125/126/127).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_oci_lifecycle import RUNTIME, _reap_all, _subreaper

from helpers import cgroup_roots

RUNC = shutil.which("runc")


class Rt:
    """One runtime (``runc`` or berth-runtime) with its own --root, bundle and cgroup."""

    def __init__(self, name: str, argv0: str, tmp: Path, rootfs: Path, cgroup: str, cid: str) -> None:
        self.name = name
        self.argv0 = argv0
        self.root = tmp / f"root-{name}"
        self.bundle = tmp / f"bundle-{name}"
        self.bundle.mkdir()
        self.rootfs = rootfs
        self.cgroup = cgroup
        self.cid = cid
        self.made: set[str] = set()

    def write(self, cfg: dict[str, Any]) -> None:
        cfg = copy.deepcopy(cfg)
        cfg["root"]["path"] = str(self.rootfs)
        cfg["linux"]["cgroupsPath"] = self.cgroup
        (self.bundle / "config.json").write_text(json.dumps(cfg))

    def __call__(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            [self.argv0, "--root", str(self.root), *args], text=True, timeout=30, check=False, **kw
        )

    def create(self, *extra: str, cid: str | None = None) -> int:
        """create, the container's stdio on the file ``out`` of the bundle."""
        cid = cid or self.cid
        self.made.add(cid)
        with open(self.bundle / "out", "w") as sink:
            return self("create", "--bundle", str(self.bundle), *extra, cid, capture_output=False,
                        stdout=sink, stderr=sink).returncode  # fmt: skip

    def output(self) -> str:
        return (self.bundle / "out").read_text()

    def state(self) -> dict[str, Any]:
        proc = self("state", self.cid)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def wait_stopped(self, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            _reap_all()
            st = self.state()
            if st.get("status") in ("stopped", None) or time.monotonic() > deadline:
                return st
            time.sleep(0.02)

    def cleanup(self) -> None:
        for cid in self.made:
            self("delete", "--force", cid)
        _reap_all()


def base_config(args: list[str]) -> dict[str, Any]:
    from berth.spec import runc_spec

    cfg = runc_spec()
    cfg["root"] = {"path": "", "readonly": True}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    return cfg


@pytest.fixture
def pair(tmp_path: Path, busybox_rootfs: Path, prefix: str, unique: str):
    """(runc, berth): each its own root, bundle, cgroup and container id."""
    if RUNC is None:
        pytest.skip("runc is not installed: nothing to compare berth-runtime with")
    _subreaper()
    both = [
        Rt("runc", RUNC, tmp_path, busybox_rootfs, f"/{prefix}/{unique}/runc", unique + "r"),
        Rt("berth", str(RUNTIME), tmp_path, busybox_rootfs, f"/{prefix}/{unique}/berth", unique + "b"),
    ]
    yield both
    for rt in both:
        rt.cleanup()
    _subreaper(False)
    for top in cgroup_roots():
        for d in (top / prefix / unique, top / prefix):
            try:
                d.rmdir()
            except OSError:
                pass
    left = [str(top / prefix / unique) for top in cgroup_roots() if (top / prefix / unique).exists()]
    assert not left, f"cgroups left: {left}"
    for rt in both:
        assert not rt.root.exists() or not [n for n in os.listdir(rt.root) if not n.startswith(".")], rt.name


def compare(pair: list[Rt], scenario: Callable[[Rt], dict[str, Any]]) -> dict[str, Any]:
    """Run ``scenario`` with runc, then berth-runtime; their observations must be equal."""
    runc, berth = pair
    want = scenario(runc)
    got = scenario(berth)
    diff = {k: (want.get(k), got.get(k)) for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)}
    assert not diff, "berth-runtime differs from runc (runc, berth): " + json.dumps(diff, indent=1)
    return got


def _ok(proc: subprocess.CompletedProcess[str] | int) -> bool:
    return (proc if isinstance(proc, int) else proc.returncode) == 0


# -- the container's own lifecycle ------------------------------------------------------------------


def test_state_fields_through_the_lifecycle(pair: list[Rt]) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        cfg = base_config(["sleep", "100"])
        cfg["annotations"] = {"org.example.key": "value"}
        rt.write(cfg)
        seen: dict[str, Any] = {"create": rt.create()}
        for phase, step in (("created", None), ("running", ("start",)), ("stopped", ("kill", "KILL"))):
            if step:
                seen[f"{step[0]} ok"] = _ok(rt(step[0], rt.cid, *step[1:]))
            st = rt.wait_stopped() if phase == "stopped" else rt.state()
            pid = st.get("pid")
            seen[phase] = {
                "status": st.get("status"),
                "pid": "live" if pid and Path(f"/proc/{pid}").exists() else pid,
                "bundle": st.get("bundle") == str(rt.bundle),
                "id": st.get("id") == rt.cid,
                "annotations": st.get("annotations"),
                "keys": sorted(set(st) - {"ociVersion"}),
            }
        seen["delete ok"] = _ok(rt("delete", rt.cid))
        seen["state after delete ok"] = _ok(rt("state", rt.cid))
        return seen

    got = compare(pair, scenario)
    assert got["stopped"]["pid"] == 0 and got["running"]["pid"] == "live"


def test_state_without_annotations_leaves_the_field_out(pair: list[Rt]) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        rt.write(base_config(["sleep", "100"]))
        rt.create()
        st = rt.state()
        listed = json.loads(rt("list", "--format", "json").stdout)
        rt("delete", "--force", rt.cid)
        return {"state keys": sorted(st), "list keys": sorted(listed[0]), "list owner": listed[0]["owner"]}

    compare(pair, scenario)


def test_kill_semantics(pair: list[Rt]) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        rt.write(base_config(["sh", "-c", "trap 'exit 3' USR1; while :; do sleep 0.05; done"]))
        seen: dict[str, Any] = {"create": rt.create()}
        seen["signal 0 to a created container"] = _ok(rt("kill", rt.cid, "0"))
        rt("start", rt.cid)
        time.sleep(0.3)  # the shell's trap in place
        for sig in ("0", "usr2x", "99", "WINCH", "sigwinch", "28", "CHLD"):
            seen[f"kill {sig}"] = _ok(rt("kill", rt.cid, sig))
        seen["still"] = rt.state().get("status")
        seen["kill USR1"] = _ok(rt("kill", rt.cid, "USR1"))
        seen["after USR1"] = rt.wait_stopped().get("status")
        seen["kill a stopped container"] = _ok(rt("kill", rt.cid, "KILL"))
        seen["kill a missing container"] = _ok(rt("kill", rt.cid + "x", "KILL"))
        seen["delete"] = _ok(rt("delete", rt.cid))
        return seen

    compare(pair, scenario)


def test_kill_all_and_sigkill_of_a_paused_container(pair: list[Rt]) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        rt.write(base_config(["sh", "-c", "sleep 100 & sleep 100 & wait"]))
        rt.create()
        rt("start", rt.cid)
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while len(json.loads(rt("ps", "--format", "json", rt.cid).stdout or "[]")) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        seen["pause"] = _ok(rt("pause", rt.cid))
        seen["paused"] = rt.state().get("status")
        seen["kill KILL"] = _ok(rt("kill", rt.cid, "KILL"))
        seen["after"] = rt.wait_stopped().get("status")  # runc thaws after SIGKILL
        seen["ps"] = json.loads(rt("ps", "--format", "json", rt.cid).stdout or "null") or []
        seen["delete"] = _ok(rt("delete", rt.cid))
        rt.cid += "2"
        rt.create()
        rt("start", rt.cid)
        seen["kill --all"] = _ok(rt("kill", "--all", rt.cid, "KILL"))
        seen["after --all"] = rt.wait_stopped().get("status")
        rt("delete", rt.cid)
        return seen

    compare(pair, scenario)


def test_delete_semantics(pair: list[Rt]) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        rt.write(base_config(["sleep", "100"]))
        seen: dict[str, Any] = {"create": rt.create()}
        seen["delete created"] = _ok(rt("delete", rt.cid))
        seen["gone"] = rt.state() == {}
        rt.create()
        rt("start", rt.cid)
        seen["delete running"] = _ok(rt("delete", rt.cid))
        seen["still running"] = rt.state().get("status")
        seen["delete --force running"] = _ok(rt("delete", "--force", rt.cid))
        seen["gone after force"] = rt.state() == {}
        seen["delete missing"] = _ok(rt("delete", rt.cid))
        seen["delete --force missing"] = _ok(rt("delete", "--force", rt.cid))
        seen["create twice"] = [rt.create(), rt.create() == 0]
        seen["start twice"] = [_ok(rt("start", rt.cid)), _ok(rt("start", rt.cid))]
        rt("delete", "--force", rt.cid)
        return seen

    compare(pair, scenario)


def test_ps_and_list(pair: list[Rt]) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        rt.write(base_config(["sleep", "100"]))
        rt.create()
        rt("start", rt.cid)
        pid = rt.state()["pid"]
        seen: dict[str, Any] = {"ps json": json.loads(rt("ps", "--format", "json", rt.cid).stdout) == [pid]}
        table = rt("ps", rt.cid, "-o", "pid,comm").stdout.split()
        seen["ps -o"] = [table[0], table[1], table[2] == str(pid), table[3]]
        listed = json.loads(rt("list", "--format", "json").stdout)
        seen["list"] = [(c["id"] == rt.cid, c["status"], c["pid"] == pid, c["bundle"] == str(rt.bundle))
                        for c in listed]  # fmt: skip
        seen["list -q"] = rt("list", "-q").stdout.split() == [rt.cid]
        seen["list header"] = rt("list").stdout.splitlines()[0].split()
        rt("delete", "--force", rt.cid)
        return seen

    compare(pair, scenario)


def test_terminal_needs_a_console_socket_when_detached(pair: list[Rt], tmp_path: Path) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        cfg = base_config(["sh"])
        cfg["process"]["terminal"] = True
        rt.write(cfg)
        seen: dict[str, Any] = {"create without --console-socket": _ok(rt.create())}
        seen["made"] = rt.state() != {}
        proc = rt("run", "--detach", "--bundle", str(rt.bundle), rt.cid)
        seen["run -d without --console-socket"] = _ok(proc)
        cfg["process"]["terminal"] = False
        rt.write(cfg)
        seen["--console-socket without a terminal"] = _ok(
            rt.create("--console-socket", str(tmp_path / "nosock"))
        )
        seen["made 2"] = rt.state() != {}
        return seen

    got = compare(pair, scenario)
    assert got["create without --console-socket"] is False


# -- what the container's process sees ----------------------------------------------------------


def _observe(rt: Rt, cfg: dict[str, Any]) -> dict[str, Any]:
    rt.write(cfg)
    seen: dict[str, Any] = {"create": _ok(rt.create())}
    if seen["create"]:
        seen["start"] = _ok(rt("start", rt.cid))
        seen["status"] = rt.wait_stopped().get("status")
        rt("delete", "--force", rt.cid)
    seen["output"] = rt.output().strip() if seen["create"] else ""
    return seen


PROCESS_CASES: dict[str, Callable[[dict[str, Any], str], None]] = {}


def _case(name: str, args: str):
    def register(mutate: Callable[[dict[str, Any], str], None]) -> Callable[[dict[str, Any], str], None]:
        def apply(cfg: dict[str, Any], tag: str) -> None:
            cfg["process"]["args"] = ["sh", "-c", args.replace("TAG", tag)]
            mutate(cfg, tag)

        PROCESS_CASES[name] = apply
        return mutate

    return register


@_case("cwd missing, root read-only", "pwd; ls -ld . | cut -c1-10")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["cwd"] = f"/tmp/zz-{tag}/a/b"


@_case("cwd missing, as a user", "pwd; id -u")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["root"]["readonly"] = False
    cfg["process"]["cwd"] = f"/zz-{tag}"
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}


@_case("additionalGids", "id; grep Groups /proc/self/status")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [5, 20, 1000]}


@_case("umask", "umask")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["user"] = {"uid": 0, "gid": 0, "umask": 0o77}


@_case("rlimits", "ulimit -n; ulimit -Hn; ulimit -c; ulimit -u")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        {"type": "RLIMIT_NPROC", "soft": 77, "hard": 77},
    ]


@_case("env without PATH or HOME", "env | sort | tr '\\n' ' '")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["args"][0] = "/bin/sh"
    cfg["process"]["env"] = ["FOO=bar"]


@_case("HOME of a user from /etc/passwd", "echo $HOME")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["env"] = ["PATH=/bin"]
    cfg["process"]["user"] = {"uid": 65534, "gid": 65534}


@_case("HOME kept", "echo $HOME")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["env"] = ["PATH=/bin", "HOME=/somewhere"]


@_case("noNewPrivileges", "grep -E 'NoNewPrivs|Seccomp:|^Cap' /proc/self/status")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["noNewPrivileges"] = True


@_case("privileges of a user", "grep -E 'NoNewPrivs|^Cap' /proc/self/status")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["noNewPrivileges"] = False
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}


@_case("read-only root", "touch /x-TAG 2>&1 | cut -d: -f3; touch /tmp/x-TAG 2>&1 | cut -d: -f3; echo done")
def _(cfg: dict[str, Any], tag: str) -> None:
    pass


@_case(
    "masked and read-only paths that do not exist",
    "wc -c < /proc/kcore; ls /zz-TAG 2>&1 | cut -d: -f3; echo x > /proc/sys/kernel/hostname 2>&1 | cut -d: -f3",
)
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["linux"]["maskedPaths"] = ["/proc/kcore", "/proc/nonexistent", f"/zz-{tag}/x", "/proc/acpi"]
    cfg["linux"]["readonlyPaths"] = ["/proc/sys", "/proc/nonexistent-ro", f"/zz-{tag}/y"]


@_case("oomScoreAdj and hostname", "cat /proc/self/oom_score_adj; hostname")
def _(cfg: dict[str, Any], tag: str) -> None:
    cfg["process"]["oomScoreAdj"] = 123
    cfg["hostname"] = "h-" + tag


@_case("signal dispositions", "grep -E '^Sig(Ign|Blk)' /proc/self/status")
def _(cfg: dict[str, Any], tag: str) -> None:
    pass


@_case("default devices", "ls -l /dev | grep -v '^total' | awk '{print $1, $NF}' | sort")
def _(cfg: dict[str, Any], tag: str) -> None:
    pass


@pytest.mark.parametrize("case", sorted(PROCESS_CASES))
def test_process_sees_the_same(pair: list[Rt], unique: str, case: str, busybox_rootfs: Path) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        cfg = base_config([])
        PROCESS_CASES[case](cfg, f"{unique}-{rt.name}")
        seen = _observe(rt, cfg)
        seen["output"] = seen["output"].replace(f"{unique}-{rt.name}", "TAG")
        return seen

    try:
        got = compare(pair, scenario)
    finally:
        for made in [*busybox_rootfs.glob(f"zz-{unique}-*"), *busybox_rootfs.glob(f"tmp/zz-{unique}-*")]:
            shutil.rmtree(made, ignore_errors=True)
    assert got["create"], got


def test_run_exit_statuses(pair: list[Rt]) -> None:
    def scenario(rt: Rt) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for name, args in (("exit 42", ["sh", "-c", "exit 42"]), ("not found", ["no-such-command"]),
                           ("a directory", ["/etc"])):  # fmt: skip
            rt.write(base_config(args))
            proc = rt("run", "--bundle", str(rt.bundle), rt.cid)
            seen[name] = proc.returncode if name == "exit 42" else proc.returncode != 0
            seen[name + ": left"] = rt.state() != {}
        # killed by a signal: 128+N
        rt.write(base_config(["sleep", "100"]))
        run = subprocess.Popen([rt.argv0, "--root", str(rt.root), "run", "--bundle", str(rt.bundle), rt.cid],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while rt.state().get("status") != "running":
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.02)
        rt("kill", rt.cid, "KILL")
        seen["killed"] = run.wait(timeout=20)
        seen["killed: left"] = rt.state() != {}
        return seen

    got = compare(pair, scenario)
    assert (got["exit 42"], got["killed"]) == (42, 137)


def test_failing_start_container_hook_stops_the_container(pair: list[Rt]) -> None:
    """Both stop the container; runc 1.1's ``start`` still exits 0 there (its init's error goes
    to the container's stderr), berth-runtime's fails as the runtime spec asks (lifecycle 8)."""

    start_status = {}

    def scenario(rt: Rt) -> dict[str, Any]:
        rt.write({**base_config(["sleep", "100"]), "hooks": {"startContainer": [{"path": "/bin/false"}]}})
        seen: dict[str, Any] = {"create": rt.create()}
        start_status[rt.name] = rt("start", rt.cid).returncode
        st = rt.wait_stopped()
        seen["after start"] = (st.get("status"), st.get("pid"))
        seen["delete"] = _ok(rt("delete", rt.cid))
        return seen

    compare(pair, scenario)
    assert start_status["berth"] != 0


# -- berth's own, where runc 1.1 falls short of the spec or keeps less ------------------------------


@pytest.fixture
def berth_rt(tmp_path: Path, busybox_rootfs: Path, prefix: str, unique: str):
    _subreaper()
    rt = Rt("berth", str(RUNTIME), tmp_path, busybox_rootfs, f"/{prefix}/{unique}/c", unique)
    yield rt
    rt.cleanup()
    _subreaper(False)
    for top in cgroup_roots():
        for d in (top / prefix / unique / "c", top / prefix / unique, top / prefix):
            try:
                d.rmdir()
            except OSError:
                pass
    assert not [top for top in cgroup_roots() if (top / prefix / unique).exists()]
    assert not rt.root.exists() or not [n for n in os.listdir(rt.root) if not n.startswith(".")]


def test_hook_output_is_kept_out_of_the_container_stdio(berth_rt: Rt, tmp_path: Path) -> None:
    """As runc: a hook's stdout and stderr are not the runtime's (for ``create`` they are the
    container's, its log); a failing hook's last line is in the error."""
    ok = {"path": "/bin/sh", "args": ["sh", "-c", "echo hook-chatter; echo hook-err >&2"]}
    bad = {"path": "/bin/sh", "args": ["sh", "-c", "echo first; echo 'why: disk full' >&2; exit 4"]}
    cfg = base_config(["sh", "-c", "echo container-out"])
    cfg["hooks"] = {"createRuntime": [ok], "createContainer": [ok], "startContainer": [ok]}
    berth_rt.write(cfg)
    assert berth_rt.create() == 0
    berth_rt("start", berth_rt.cid)
    berth_rt.wait_stopped()
    assert berth_rt.output() == "container-out\n"
    berth_rt("delete", berth_rt.cid)
    cfg["hooks"] = {"createRuntime": [bad]}
    berth_rt.write(cfg)
    proc = berth_rt("create", "--bundle", str(berth_rt.bundle), berth_rt.cid)
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, proc.stderr
    assert "hooks.createRuntime[0]" in line and "exit status 4" in line and "why: disk full" in line


def test_failing_poststart_and_poststop_hooks_warn_and_the_rest_run(berth_rt: Rt, tmp_path: Path) -> None:
    """runtime-spec lifecycle 10 and 13: a failing poststart or poststop hook is a warning; the
    remaining hooks and the lifecycle continue."""
    log = tmp_path / "ran"

    def hook(phase: str, i: int, status: int) -> dict[str, Any]:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"echo {phase}{i} >> {log}; exit {status}"]}

    cfg = base_config(["sleep", "100"])
    cfg["hooks"] = {p: [hook(p, 0, 1), hook(p, 1, 0)] for p in ("poststart", "poststop")}
    berth_rt.write(cfg)
    assert berth_rt.create() == 0
    start = berth_rt("start", berth_rt.cid)
    assert start.returncode == 0 and "hooks.poststart[0]" in start.stderr
    assert berth_rt.state()["status"] == "running"
    delete = berth_rt("delete", "--force", berth_rt.cid)
    assert delete.returncode == 0 and "hooks.poststop[0]" in delete.stderr
    assert log.read_text().split() == ["poststart0", "poststart1", "poststop0", "poststop1"]


def test_real_time_signal_names(berth_rt: Rt) -> None:
    import signal

    rt2 = int(signal.SIGRTMIN) + 2
    berth_rt.write(base_config(["sh", "-c", f"trap 'exit 7' {rt2}; while :; do sleep 0.05; done"]))
    berth_rt.create()
    berth_rt("start", berth_rt.cid)
    time.sleep(0.3)
    assert berth_rt("kill", berth_rt.cid, "RTMIN+40").returncode != 0
    assert berth_rt("kill", berth_rt.cid, "65").returncode != 0
    assert berth_rt.state()["status"] == "running"
    assert berth_rt("kill", berth_rt.cid, "SIGRTMIN+2").returncode == 0
    assert berth_rt.wait_stopped()["status"] == "stopped"
    berth_rt("delete", berth_rt.cid)


def test_pid_file_in_a_missing_directory_is_refused_first(berth_rt: Rt, tmp_path: Path) -> None:
    berth_rt.write(base_config(["sleep", "100"]))
    proc = berth_rt("create", "--bundle", str(berth_rt.bundle), "--pid-file", str(tmp_path / "no" / "pid"),
                    berth_rt.cid)  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "pid-file" in proc.stderr and str(tmp_path / "no" / "pid") in proc.stderr
    assert berth_rt.state() == {}


def test_device_that_cannot_be_made_names_its_field(berth_rt: Rt) -> None:
    cfg = base_config(["true"])
    cfg["linux"]["devices"] = [
        {"path": "/dev/zz-ok", "type": "c", "major": 1, "minor": 3},
        {"path": "/etc/passwd/below", "type": "c", "major": 1, "minor": 3},
    ]
    berth_rt.write(cfg)
    proc = berth_rt("create", "--bundle", str(berth_rt.bundle), berth_rt.cid)
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, proc.stderr
    assert "linux.devices[1].path" in line and "/etc/passwd/below" in line and "Not a directory" in line
    assert berth_rt.state() == {}


def _with_fds_closed(rt: Rt, closed: list[int], *args: str) -> subprocess.CompletedProcess[str]:
    """``rt`` run with fd 3 (and up) open on /dev/null but for the fds ``closed``: a caller's
    --preserve-fds range with gaps.  Its stdout and stderr are files (a created container would
    hold pipes open)."""
    opened = " ".join(f"{fd}</dev/null" for fd in range(3, 7) if fd not in closed)
    shut = " ".join(f"{fd}<&-" for fd in closed)
    out, err = rt.bundle / "fds-out", rt.bundle / "fds-err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.run(
            ["sh", "-c", f'exec "$@" {opened} {shut}', "sh", rt.argv0, "--root", str(rt.root), *args],
            stdin=subprocess.DEVNULL, stdout=o, stderr=e, timeout=30, check=False,
        )  # fmt: skip
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())


def test_preserve_fds_with_a_gap_is_refused_at_create(berth_rt: Rt, tmp_path: Path) -> None:
    """--preserve-fds N passes fds 3..3+N-1: one of them not open fails create/run/exec at once,
    in one line naming --preserve-fds and the fd, and nothing is made.  (runc 1.1 passes whatever
    it holds itself at the gap: its own O_PATH fd of /sys/fs/cgroup, or an empty slot.)  The
    runtime's own log, opened first, takes the lowest free fd: that gap is found too."""
    berth_rt.write(base_config(["/probe", "fds"]))
    bundle = ("--bundle", str(berth_rt.bundle))
    log = ("--log", str(tmp_path / "log"))
    cases = [
        ([4], (), ("create", *bundle, "--preserve-fds", "2", berth_rt.cid), "fd 4"),
        ([3], (), ("run", *bundle, "--preserve-fds", "1", berth_rt.cid), "fd 3"),
        ([3], log, ("create", *bundle, "--preserve-fds", "1", berth_rt.cid), "fd 3"),
    ]
    berth_rt.made.add(berth_rt.cid)
    for closed, global_opts, args, fd in cases:
        proc = _with_fds_closed(berth_rt, closed, *global_opts, *args)
        assert proc.returncode == 125, proc
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1, proc.stderr
        assert "--preserve-fds" in line and f"{fd} is not open" in line, line
        assert berth_rt.state() == {}
        assert not (berth_rt.root / berth_rt.cid).exists()
    # all open: the container gets them (and nothing more)
    proc = _with_fds_closed(berth_rt, [], "run", "--bundle", str(berth_rt.bundle), "--preserve-fds", "2",
                            berth_rt.cid)  # fmt: skip
    assert proc.returncode == 0, proc
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == [f"fd {n}" for n in range(5)]
    # exec into a container: the same check
    berth_rt.write(base_config(["sleep", "100"]))
    assert berth_rt.create() == 0
    proc = _with_fds_closed(berth_rt, [3], "exec", "--preserve-fds", "1", berth_rt.cid, "true")
    assert proc.returncode == 125 and "--preserve-fds: fd 3 is not open" in proc.stderr, proc
    assert len(proc.stderr.strip().splitlines()) == 1
    berth_rt("delete", "--force", berth_rt.cid)


class _MemoryCgroup:
    """A memory cgroup of the test's own, for the peak use of what runs in it."""

    def __init__(self, name: str, limit: int) -> None:
        top = Path("/sys/fs/cgroup")
        controllers = top / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            self.path, self.peak_file, self.limit_file = top / name, "memory.peak", "memory.max"
        else:
            self.path = top / "memory" / name
            self.peak_file, self.limit_file = "memory.max_usage_in_bytes", "memory.limit_in_bytes"
        self.path.mkdir(parents=True)
        (self.path / self.limit_file).write_text(str(limit))

    def peak(self) -> int:
        return int((self.path / self.peak_file).read_text())

    def remove(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            try:
                self.path.rmdir()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{self.path} still busy"
                time.sleep(0.05)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass


def test_hook_output_without_end_costs_bounded_memory(berth_rt: Rt, prefix: str, unique: str) -> None:
    """A hook writing without end until its timeout: its output is read and dropped as it comes
    (its end kept for the error), so berth-runtime's memory stays bounded (it grew by about a GiB a
    second into a memfd before) and the error still names the hook."""
    flood = {"path": "/bin/sh", "args": ["sh", "-c", "yes hook-flood-line"], "timeout": 1}
    cfg = base_config(["true"])
    cfg["hooks"] = {"createRuntime": [flood]}
    berth_rt.write(cfg)
    mem = _MemoryCgroup(f"{prefix}/{unique}-mem", 512 << 20)
    try:
        proc = subprocess.run(
            ["sh", "-c", f'echo $$ > {mem.path}/cgroup.procs && exec "$@"', "sh", berth_rt.argv0, "--root",
             str(berth_rt.root), "create", "--bundle", str(berth_rt.bundle), berth_rt.cid],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        peak = mem.peak()
    finally:
        mem.remove()
    assert proc.returncode == 125, proc
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, proc.stderr
    assert "hooks.createRuntime[0]" in line and "timeout of 1s" in line, line
    assert peak < 64 << 20, f"peak memory of berth-runtime and its hook: {peak >> 20} MiB"
    assert berth_rt.state() == {}


def test_start_returns_when_a_start_container_hook_hangs(berth_rt: Rt) -> None:
    """runc 1.1's ``start`` waits for the exec as long as a startContainer hook without a timeout
    runs (for good if it hangs, its client with it).  berth-runtime's waits a bounded time (the
    annotation sets it here), then returns 0 with the container running; the hook's later failure
    goes to the container's stderr and the container ends stopped."""
    hook = {"path": "/bin/sh", "args": ["sh", "-c", "sleep 1.5; echo late-reason >&2; exit 3"]}
    cfg = base_config(["sh", "-c", "echo never"])
    cfg["hooks"] = {"startContainer": [hook]}
    cfg["annotations"] = {"org.berth.start.exec-wait": "0.5"}
    berth_rt.write(cfg)
    assert berth_rt.create() == 0
    t0 = time.monotonic()
    start = berth_rt("start", berth_rt.cid)
    took = time.monotonic() - t0
    assert start.returncode == 0, start
    assert 0.5 <= took < 1.4, took
    assert "not exec'd within 0.5s" in start.stderr
    assert berth_rt.state()["status"] == "running"
    assert berth_rt.wait_stopped()["status"] == "stopped"
    out = berth_rt.output()
    assert "hooks.startContainer[0]" in out and "late-reason" in out and "never" not in out, out
    assert berth_rt("delete", berth_rt.cid).returncode == 0


def test_start_returns_when_the_init_is_stopped_before_its_exec(berth_rt: Rt) -> None:
    """The init SIGSTOPped between its release and its exec (here while its startContainer hook
    runs): ``start`` returns 0 after its bounded wait, the container running; continued, the init
    execs the command."""
    import signal

    cfg = base_config(["sh", "-c", "echo cmd-ran"])
    cfg["hooks"] = {"startContainer": [{"path": "/bin/sleep", "args": ["sleep", "0.3"]}]}
    cfg["annotations"] = {"org.berth.start.exec-wait": "0.8"}
    berth_rt.write(cfg)
    assert berth_rt.create() == 0
    pid = berth_rt.state()["pid"]
    start = subprocess.Popen([berth_rt.argv0, "--root", str(berth_rt.root), "start", berth_rt.cid],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + 10
    while not children.read_text().strip():  # the hook runs: the init was released
        assert time.monotonic() < deadline and start.poll() is None
        time.sleep(0.005)
    os.kill(pid, signal.SIGSTOP)
    try:
        _out, err = start.communicate(timeout=10)
        assert start.returncode == 0, err
        assert "not exec'd within 0.8s" in err
        assert berth_rt.state()["status"] == "running"
        assert berth_rt.output() == ""
    finally:
        os.kill(pid, signal.SIGCONT)
        if start.poll() is None:
            start.kill()
            start.wait()
    assert berth_rt.wait_stopped()["status"] == "stopped"
    assert berth_rt.output() == "cmd-ran\n"
    assert berth_rt("delete", berth_rt.cid).returncode == 0
