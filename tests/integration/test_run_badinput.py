"""``berth run`` with bad input: one line on stderr naming what is wrong, the right exit
status (125 berth failed, 126 cannot execute, 127 not found), and nothing left behind (the
``berth`` fixture checks state dirs, cgroups, mounts and processes after every run)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest


def probe(rootfs: Path, *args: str, opts: tuple[str, ...] = ()) -> list[str]:
    return ["--rm", *opts, "--rootfs", str(rootfs), "--", "/probe", *args]


def test_missing_rootfs(berth, tmp_path):
    missing = tmp_path / "no-such-rootfs"
    res = berth("--rootfs", str(missing), "--", "/probe")
    assert res.returncode == 125, res
    line = res.error_line()
    assert "rootfs" in line
    assert str(missing) in line
    assert "does not exist" in line


def test_rootfs_is_a_file(berth, tmp_path):
    f = tmp_path / "rootfs-file"
    f.write_text("")
    res = berth("--rootfs", str(f), "--", "/probe")
    assert res.returncode == 125, res
    assert "not a directory" in res.error_line()


@pytest.mark.parametrize("cmd", ["/no-such-command", "no-such-command", "/no/such/dir/cmd"])
def test_command_not_found(berth, minimal_rootfs, cmd):
    res = berth("--rootfs", str(minimal_rootfs), "--", cmd)
    assert res.returncode == 127, res
    assert "not found" in res.error_line()
    assert cmd in res.error_line()


def test_command_not_executable(berth, fresh_rootfs):
    (fresh_rootfs / "data").write_text("not a program\n")
    (fresh_rootfs / "data").chmod(0o644)
    res = berth("--rootfs", str(fresh_rootfs), "--", "/data")
    assert res.returncode == 126, res
    assert "/data" in res.error_line()


def test_command_is_a_directory(berth, fresh_rootfs):
    (fresh_rootfs / "adir").mkdir()
    res = berth("--rootfs", str(fresh_rootfs), "--", "/adir")
    assert res.returncode == 126, res
    assert "directory" in res.error_line()


def test_command_bad_binary(berth, fresh_rootfs):
    # Executable bits, but not a format the kernel can run (ENOEXEC).
    (fresh_rootfs / "garbage").write_bytes(b"\x7fELF" + b"\0" * 60)
    (fresh_rootfs / "garbage").chmod(0o755)
    res = berth("--no-init", "--rootfs", str(fresh_rootfs), "--", "/garbage")
    assert res.returncode == 126, res
    assert "/garbage" in res.error_line()
    # Behind tini the exec fails in tini (execvp falls back to /bin/sh, which this rootfs lacks).
    res = berth("--rootfs", str(fresh_rootfs), "--", "/garbage")
    assert res.returncode in (126, 127), res
    assert "/garbage" in res.error_line()


@pytest.mark.parametrize(
    ("user", "what"),
    [("nosuchuser", "nosuchuser"), ("root:nosuchgroup", "nosuchgroup"), ("99999999999", "range")],
)
def test_unknown_user(berth, busybox_rootfs, user, what):
    res = berth(*probe(busybox_rootfs, "id", opts=("-u", user)))
    assert res.returncode == 125, res
    line = res.error_line()
    assert "user" in line
    assert what in line


def test_unknown_user_without_passwd(berth, minimal_rootfs):
    # No /etc/passwd at all: names cannot be resolved, numbers still work.
    res = berth(*probe(minimal_rootfs, "id", opts=("-u", "daemon")))
    assert res.returncode == 125, res
    assert "daemon" in res.error_line()
    res = berth(*probe(minimal_rootfs, "id", opts=("-u", "4321:4321")))
    assert res.returncode == 0, res
    assert res.field("uid") == "4321"


@pytest.mark.parametrize("opt", ["--cap-add", "--cap-drop"])
def test_unknown_capability(berth, minimal_rootfs, opt):
    res = berth(*probe(minimal_rootfs, "caps", opts=(opt, "CAP_NOT_A_CAP")))
    assert res.returncode == 125, res
    line = res.error_line()
    assert opt.lstrip("-") in line
    assert "CAP_NOT_A_CAP" in line


def test_seccomp_profile_missing(berth, minimal_rootfs, tmp_path):
    missing = tmp_path / "nope.json"
    res = berth(*probe(minimal_rootfs, "seccomp", opts=("--security-opt", f"seccomp={missing}")))
    assert res.returncode == 125, res
    assert str(missing) in res.error_line()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"defaultAction": "SCMP_ACT_NOPE"}', ""])
def test_seccomp_profile_unparsable(berth, minimal_rootfs, tmp_path, text):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    res = berth(*probe(minimal_rootfs, "seccomp", opts=("--security-opt", f"seccomp={bad}")))
    assert res.returncode == 125, res
    assert "seccomp" in res.error_line()


def test_seccomp_profile_unreadable_directory(berth, minimal_rootfs, tmp_path):
    res = berth(*probe(minimal_rootfs, "seccomp", opts=("--security-opt", f"seccomp={tmp_path}")))
    assert res.returncode == 125, res
    res.error_line()


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["--no-such-option", "--", "true"], "--no-such-option"),
        (["-Z", "--", "true"], "-Z"),
        (["--net", "carrier-pigeon", "--", "true"], "carrier-pigeon"),
        (["--net=nonsense", "--", "true"], "nonsense"),
        (["--security-opt", "apparmor=x", "--", "true"], "apparmor"),
        (["--security-opt", "seccomp=", "--", "true"], "seccomp"),
        (["--name", "bad/name", "--", "true"], "name"),
        (["-e", "=value", "--", "true"], "env"),
        (["-w", "relative/dir", "--", "true"], "workdir"),
        (["--rootfs"], "--rootfs"),
        ([], "COMMAND"),
        (["--"], "COMMAND"),
        (["--template", "no-such-template", "--", "true"], "no-such-template"),
    ],
)
def test_usage_errors(berth, args, what):
    res = berth(*args)
    assert res.returncode == 125, res
    assert what in res.error_line()


def test_workdir_missing_in_guest_is_created(berth, minimal_rootfs):
    # As docker does: a missing working directory is created inside the guest (in the given rootfs).
    res = berth(*probe(minimal_rootfs, "cwd", opts=("-w", "/no/such/dir")))
    assert res.returncode == 0, res
    assert res.field("cwd") == "/no/such/dir"


def test_workdir_missing_on_read_only_root(berth, minimal_rootfs):
    # As runc and docker: created before the root turns read-only.
    res = berth(*probe(minimal_rootfs, "cwd", opts=("--read-only", "-w", "/not/on/ro/root")))
    assert res.returncode == 0, res
    assert res.field("cwd") == "/not/on/ro/root"


def test_workdir_that_cannot_be_made_is_named(berth, minimal_rootfs):
    (minimal_rootfs / "afile").touch()
    try:
        res = berth(*probe(minimal_rootfs, "cwd", opts=("-w", "/afile/below")))
    finally:
        (minimal_rootfs / "afile").unlink()
    assert res.returncode in (125, 126), res
    assert "/afile/below" in res.error_line()


def test_name_taken(berth, background, minimal_rootfs, unique):
    first = background(*probe(minimal_rootfs, "trap-term", opts=("--name", unique)))
    first.wait_for("^ready$")
    res = berth(*probe(minimal_rootfs, "exit", "0", opts=("--name", unique)), check_clean=False)
    assert res.returncode == 125, res
    line = res.error_line()
    assert unique in line
    assert "exists" in line
    # The first guest is untouched: still running, and it still gets its signals.
    assert first.proc.poll() is None
    os.kill(first.proc.pid, signal.SIGTERM)
    done = first.finish()
    assert "got SIGTERM" in done.stdout, done
    assert done.returncode == 0, done
