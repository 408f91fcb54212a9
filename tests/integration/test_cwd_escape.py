"""process.cwd never lands outside the guest (the CVE-2024-21626 class, R20 HIGH 1).

The container's init and an exec'd process enter their working directory while they still hold
the runtime's fds, the host's /proc among them.  A cwd of ``/proc/self/fd/N`` (from ``-w``, an
image's WorkingDir, a spec's ``process.cwd``, or a symlink the guest planted in its own workdir)
followed as a plain path leads to that fd: the host's procfs, its processes and, in the host's
user namespace, a writable ``sys/kernel/core_pattern``.  Each such start or exec must fail with
one line naming process.cwd (126), or land inside the guest; never in the host's /proc.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_guests import Guests, guests  # noqa: F401  (the fixture)
from test_oci_lifecycle import Runtime, rt  # noqa: F401  (the fixture)

HOST_INIT = Path("/proc/1/comm").read_text().strip()
SHOW = "echo cwd=$(pwd); ls | wc -l; cat 1/comm; (exec 3>>sys/kernel/core_pattern) && echo CORE-PATTERN-OPEN"


def _refused(proc_rc: int, stdout: str, stderr: str, cwd: str) -> None:
    """The start or exec failed with one line naming process.cwd, and ran nothing."""
    assert proc_rc == 126, (proc_rc, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "process.cwd" in lines[0] and repr(cwd) in lines[0], lines
    assert HOST_INIT not in stdout and "CORE-PATTERN-OPEN" not in stdout, stdout


@pytest.mark.parametrize("n", range(3, 40))
def test_berth_run_workdir_through_a_runtime_fd_is_refused(berth, fresh_rootfs: Path, n: int) -> None:
    cwd = f"/proc/self/fd/{n}"
    res = berth("--rm", "-w", cwd, "--rootfs", str(fresh_rootfs), "--", "/probe", "ls", ".")
    _refused(res.returncode, res.stdout, res.stderr, cwd)
    assert "/self" not in res.stdout and "/1\n" not in res.stdout, res.stdout
    assert not (fresh_rootfs / "proc" / "self").exists()  # nothing made in the rootfs


def test_berth_run_workdir_symlinks_inside_the_guest_still_work(berth, fresh_rootfs: Path) -> None:
    (fresh_rootfs / "srv" / "work").mkdir(parents=True)
    (fresh_rootfs / "abs").symlink_to("/srv/work")  # absolute: resolved in the guest's root
    (fresh_rootfs / "rel").symlink_to("srv/work")
    (fresh_rootfs / "up").symlink_to("../../../../srv")  # '..' stops at the guest's root
    for cwd, want in (("/abs", "/srv/work"), ("/rel", "/srv/work"), ("/up/work", "/srv/work"),
                      ("/abs/../new/dir", "/srv/new/dir")):  # fmt: skip
        res = berth("--rm", "-w", cwd, "--rootfs", str(fresh_rootfs), "--", "/probe", "cwd")
        assert res.returncode == 0, res
        assert res.field("cwd") == want, res
    assert (fresh_rootfs / "srv" / "new" / "dir").is_dir()  # a missing workdir is created, as before


def test_berth_run_workdir_made_then_refused_leaves_nothing(berth, fresh_rootfs: Path) -> None:
    # the missing /made is created on the way, then the path goes on through a magic link:
    # refused, and what was made for it removed again
    cwd = "/made/../proc/self/fd/5"
    res = berth("--rm", "-w", cwd, "--rootfs", str(fresh_rootfs), "--", "/probe", "ls", ".")
    _refused(res.returncode, res.stdout, res.stderr, cwd)
    assert not (fresh_rootfs / "made").exists()


def _exec(g: Guests, *args: str) -> subprocess.CompletedProcess:
    return g("exec", *args, check=False, timeout=30)


@pytest.mark.parametrize("userns", ["host", "auto"])
def test_guest_planted_workdir_symlink_refused_by_berth_exec(guests: Guests, userns: str) -> None:  # noqa: F811
    g = guests
    n = g.name("ex" + userns[0])
    g("create", n, "--no-lxcfs", "--userns", userns, "-w", "/app", "--", "sleep", "100000")
    g("start", n)
    r = _exec(g, n, "--", "sh", "-c", "readlink /proc/self/cwd")
    assert r.returncode == 0 and r.stdout.strip() == "/app", r  # made by the start, as before
    for fd in range(3, 14):
        cwd = f"/proc/self/fd/{fd}"
        r = _exec(g, "-w", "/", n, "--", "sh", "-c", f"rm -rf /app; ln -s {cwd} /app")
        assert r.returncode == 0, r
        for opts in ((), ("-w", "/app"), ("-w", cwd)):
            r = _exec(g, *opts, n, "--", "sh", "-c", SHOW)
            _refused(r.returncode, r.stdout, r.stderr, opts[1] if opts else "/app")
    # a workdir that is a symlink inside the guest, absolute or relative, is entered as before
    for target in ("/srv/work", "srv/work"):
        r = _exec(g, "-w", "/", n, "--", "sh", "-c", f"rm -f /app; mkdir -p /srv/work; ln -s {target} /app")
        assert r.returncode == 0, r
        r = _exec(g, n, "--", "sh", "-c", "readlink /proc/self/cwd")
        assert r.returncode == 0 and r.stdout.strip() == "/srv/work", r
    # a missing workdir of berth exec is not made (as before): one line
    r = _exec(g, "-w", "/no/such", n, "--", "true")
    assert r.returncode == 126 and "process.cwd" in r.stderr, r
    assert _exec(g, n, "--", "test", "-e", "/no/such").returncode == 1


@pytest.mark.parametrize("fd", range(6, 14))  # the host's /proc in a guestd-started init: 11 (R20)
def test_restart_onto_a_planted_workdir_symlink_is_refused(guests: Guests, fd: int) -> None:  # noqa: F811
    g = guests
    n = g.name(f"rs{fd}")
    script = (
        'if [ -L /app ]; then echo "restarted: $(ls | wc -l) $(cat 1/comm)"; '
        "(exec 3>>sys/kernel/core_pattern) && echo CORE-PATTERN-OPEN; sleep 100000; "
        f"else echo first-run; cd /; rm -rf /app; ln -s /proc/self/fd/{fd} /app; sleep 1; exit 1; fi"
    )
    g(
        "create",
        n,
        "--no-lxcfs",
        "--userns",
        "host",
        "-w",
        "/app",
        "--restart",
        "always",
        "--",
        "sh",
        "-c",
        script,
    )
    g("start", n)
    g.wait(lambda: g.record(n).get("exit_code") == 1, timeout=30, what="the first run to end")
    # guestd restarts it under the guest's lock: a start waits for that lock, so once it answers
    # the restart was tried (and failed: there is no trace of it but the guest still stopped)
    r = g("start", n, check=False)
    assert r.returncode == 126, r
    assert len(r.stderr.strip().splitlines()) == 1 and "process.cwd" in r.stderr and "'/app'" in r.stderr, r
    logs = g("logs", n, check=False).stdout
    assert "first-run" in logs, logs
    assert "restarted" not in logs and HOST_INIT not in logs and "CORE-PATTERN-OPEN" not in logs, logs
    assert g.info(n)["state"] == "stopped"


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
def test_runtime_spec_cwd_through_a_runtime_fd_is_refused(rt: Runtime, unique: str, n: int) -> None:  # noqa: F811
    cwd = f"/proc/self/fd/{n}"
    cfg = rt.config(["sh", "-c", SHOW])
    cfg["process"]["cwd"] = cwd
    rt.write(cfg)
    rt.made.append(unique)
    proc = rt("create", "--bundle", str(rt.bundle), unique, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, proc
    assert "process.cwd" in proc.stderr and repr(cwd) in proc.stderr, proc.stderr
    assert HOST_INIT not in proc.stdout + proc.stderr
    assert rt("state", unique, check=False).returncode != 0  # nothing left


def test_runtime_exec_cwd_through_a_runtime_fd_is_refused(rt: Runtime, unique: str) -> None:  # noqa: F811
    rt.write(rt.config(["sleep", "100"]))
    rt.create(unique)
    rt("start", unique)
    rt.wait_status(unique, "running")
    for n in range(3, 14):
        cwd = f"/proc/self/fd/{n}"
        r = rt("exec", "--cwd", cwd, unique, "sh", "-c", SHOW, check=False)
        assert r.returncode != 0, r
        assert "process.cwd" in r.stderr and repr(cwd) in r.stderr, r.stderr
        assert HOST_INIT not in r.stdout and "CORE-PATTERN-OPEN" not in r.stdout, r.stdout
        proc_file = rt.bundle / "process.json"
        proc_file.write_text(
            json.dumps(
                {"args": ["sh", "-c", SHOW], "cwd": cwd, "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}
            )
        )
        r = rt("exec", "--process", str(proc_file), unique, check=False)
        assert r.returncode != 0 and "process.cwd" in r.stderr, r
        assert HOST_INIT not in r.stdout and "CORE-PATTERN-OPEN" not in r.stdout, r.stdout
    r = rt("exec", "--cwd", "/tmp", unique, "sh", "-c", "pwd")
    assert r.stdout.strip() == "/tmp", r
    rt("kill", unique, "KILL")
    rt.wait_status(unique, "stopped")
    rt("delete", unique)
