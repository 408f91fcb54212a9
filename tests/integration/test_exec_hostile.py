"""A guest that fakes its /proc, plants symlinks or swaps files against processes entering it.

``berth exec`` joins a running guest's mount namespace, where "/proc" is whatever the guest made
of it (done here from the host, in its mount namespace, as a guest with CAP_SYS_ADMIN or with a
``/proc -> realproc`` image could): berth must not trust it for the fds it passes, its
capabilities, its mount table or anything else.  The command itself is opened once and checked
(CVE-2019-5736), and still runs as the kernel would run it, ``#!`` scripts included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_guests import Guests, berth_cmd, guests  # noqa: F401  (the fixture)

# The guest's real procfs stays reachable at /realproc; a tmpfs covers /proc, with
# /proc/self/fd/{0,1,2} (all a listing of /proc/self/fd would find), a mountinfo with an
# empty line, FIFOs where berth might open files, and a kernel claiming 0 capabilities.
FAKE_PROC = """
set -e
mkdir -p /realproc
mount --bind /proc /realproc
mount -t tmpfs fakeproc /proc
mkdir -p /proc/self/fd /proc/sys/kernel
touch /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2
printf '1 2 3\\n\\n' > /proc/self/mountinfo
mkfifo /proc/self/fd/9 /proc/self/oom_score_adj /proc/self/fdinfo
echo 0 > /proc/sys/kernel/cap_last_cap
"""

SCRIPT = '#!/bin/sh -e\necho "script $0 $*"\n'
# A script whose interpreter is a script: the kernel runs /bin/sh -e /s1 "-x y" /s2 ARGS.
NESTED = "#!/s1 -x y\n"
SCRIPTS = {"s1": SCRIPT, "s2": NESTED, "usr/local/bin/s3": SCRIPT, "s4": "no interpreter here\n"}
# (command, what it prints): a script, one found on PATH, a script run by a script.
SCRIPT_RUNS = (
    (["/s1", "a", "b"], "script /s1 a b"),
    (["s3", "c"], "script /usr/local/bin/s3 c"),
    (["/s2", "d"], "script /s1 -x y /s2 d"),
)

# Swaps /x/cmd and /x/alt for ever (renameat2 RENAME_EXCHANGE).
SWAPPER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    for (;;) syscall(SYS_renameat2, AT_FDCWD, "/x/cmd", AT_FDCWD, "/x/alt", RENAME_EXCHANGE);
}
"""


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)


def _exec(g: Guests, *args: str, pass_fds=(), timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*berth_cmd(), "exec", *args],
        env=g.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        pass_fds=pass_fds,
        check=False,
    )


def test_exec_into_a_hostile_guest(guests: Guests, probe_bin: Path, tmp_path: Path) -> None:  # noqa: F811
    """One guest (--userns host: its root is the host's, as berth run's default) that
    1. has #! scripts: they run as the kernel runs them ($0, the interpreter's argument, nested);
    2. swaps /x/cmd (its own program) with a link to /proc/self/exe (the runtime's interpreter,
       a host file) as fast as it can: the check and the exec must see the same file, so the
       host's interpreter never runs (the guest holds its libraries: it would start and say so);
    3. fakes its /proc: ``berth exec`` passes no fd but 0-2 (a root-only host file the caller
       has open stays out of reach, for reading and writing), keeps the bounding set it gives
       every exec, and neither crashes on the odd mountinfo nor hangs on a FIFO."""
    g = guests
    n = g.name("hostile")
    g("create", n, "--userns", "host", "--cmd", "sleep 1000")
    upper = g.store / "guests" / n / "upper"
    _plant(upper, SCRIPTS)
    (upper / "x").mkdir()
    shutil.copy2(probe_bin, upper / "x" / "cmd")
    (upper / "x" / "alt").symlink_to("/proc/self/exe")
    (tmp_path / "swap.c").write_text(SWAPPER)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(upper / "swap"), str(tmp_path / "swap.c")], check=True)
    python = os.path.realpath(sys.executable)
    libs = subprocess.run(["ldd", python], capture_output=True, text=True, check=True).stdout
    for lib in [w for w in libs.split() if w.startswith("/")]:
        dest = upper / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
    g("start", n)

    # 1. scripts, and what ps shows for a program run by its own name
    for cmd, want in SCRIPT_RUNS:
        r = _exec(g, n, "--", *cmd)
        assert (r.returncode, r.stdout.strip()) == (0, want), r
    r = _exec(g, n, "--", "/s4")
    assert r.returncode == 126 and "exec format error" in r.stderr, r
    r = _exec(g, n, "--", "/bin/busybox", "sh", "-c", 'read -r c < /proc/$$/comm; echo "$0 $c"')
    assert r.stdout.strip() == "sh busybox", r

    # 2. the swap race (before berth exec'd what it checked, 1 in 20 (4 in 60) ran the host's python)
    r = _exec(g, n, "--", "sh", "-c", "/swap </dev/null >/dev/null 2>&1 & echo $!")
    swapper = r.stdout.strip()
    assert swapper.isdigit(), r
    outcomes = []
    for _ in range(12):
        r = _exec(g, n, "--", "/x/cmd", "-c", "print('HOST INTERPRETER')")
        assert "HOST INTERPRETER" not in r.stdout, r
        assert "Python" not in r.stderr and "platform independent libraries" not in r.stderr, r
        outcomes.append(r.returncode)
    assert 126 in outcomes, outcomes  # the link was seen (and refused) at least once
    assert _exec(g, n, "--", "kill", swapper).returncode == 0

    # 3. a fake /proc
    bound = _exec(g, n, "--", "grep", "CapBnd", "/proc/self/status")
    assert bound.returncode == 0, bound.stderr
    subprocess.run(
        ["nsenter", "-t", str(g.info(n)["pid"]), "-m", "--", "/bin/sh", "-c", FAKE_PROC], check=True
    )
    secret = tmp_path / "secret"
    secret.write_text("host-secret\n")
    secret.chmod(0o600)
    fd = os.open(secret, os.O_RDWR | os.O_APPEND)
    try:
        r = _exec(
            g,
            n,
            "--",
            "sh",
            "-c",
            f"cat <&{fd}; echo guest-wrote >&{fd}; grep CapBnd /realproc/self/status; ls /realproc/self/fd",
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert "host-secret" not in r.stdout
    assert secret.read_text() == "host-secret\n"
    lines = r.stdout.splitlines()
    assert bound.stdout.strip() in lines, r.stdout
    assert [ln for ln in lines if ln.isdigit()] == ["0", "1", "2", "3"], r.stdout  # 3: ls's own


@pytest.mark.parametrize("kind", ["proc", "sys"])
def test_symlinked_proc_or_sys_is_refused(berth, fresh_rootfs: Path, kind: str) -> None:
    """An image whose /proc (or /sys) is a symlink: the kernel's file system would land where it
    points and the guest could then remove /proc and put files of its own there (runc refuses
    it too: CVE-2019-19921).  One line naming the mount, nothing mounted at the target."""
    (fresh_rootfs / f"real{kind}").mkdir()
    (fresh_rootfs / kind).symlink_to(f"real{kind}")
    res = berth("--rm", "--rootfs", str(fresh_rootfs), "--", "/probe", "id")
    assert res.returncode == 125, res
    line = res.error_line()
    assert "mounts[" in line and "].destination" in line, line
    assert f"/{kind} is a symlink" in line, line
    assert not os.listdir(fresh_rootfs / f"real{kind}")


@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_scripts_run_by_berth_run(berth, busybox_rootfs: Path, tmp_path: Path, init: str) -> None:
    root = tmp_path / "bb"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    _plant(root, SCRIPTS)
    # behind tini (which runs the command by path itself) the nested script is enough
    for cmd, want in SCRIPT_RUNS if init == "--no-init" else SCRIPT_RUNS[2:]:
        res = berth("--rm", init, "--rootfs", str(root), "--", *cmd)
        assert (res.returncode, res.stdout.strip()) == (0, want), res


def test_a_profile_without_execveat_still_runs_commands(berth, busybox_rootfs: Path, tmp_path: Path) -> None:
    """A user's seccomp profile that refuses execveat(2) (runc needs only execve): berth falls
    back to execve by path (R15: the command failed with EPERM, a --no-init guest could not
    start)."""
    profile = tmp_path / "no-execveat.json"
    rules = [{"names": ["execveat"], "action": "SCMP_ACT_ERRNO"}]
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}))
    for init in ("--init", "--no-init"):
        res = berth("--rm", init, "--rootfs", str(busybox_rootfs), "--security-opt", f"seccomp={profile}",
                    "--", "/bin/sh", "-c", "echo ran-$((1+1))")  # fmt: skip
        assert (res.returncode, res.stdout.strip()) == (0, "ran-2"), res
