"""``berth run``: every isolation property proved from inside the guest with the static probe.

Each run goes through the ``berth`` fixture, which also checks that no state dir, cgroup,
mount or process is left after the run.
"""

from __future__ import annotations

import ctypes
import os
import pty
import secrets
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DOCKER_CAPS = "00000000a80425fb"  # moby's default 14 capabilities, as /proc/PID/status shows them
NO_CAPS = "0000000000000000"
MAGIC = {"proc": "0x9fa0", "tmpfs": "0x1021994", "sysfs": "0x62656572", "devpts": "0x1cd1"}


def probe(rootfs: Path, *args: str, opts: tuple[str, ...] = ()) -> list[str]:
    """The ``berth run`` arguments that run the probe in ``rootfs``."""
    return ["--rm", *opts, "--rootfs", str(rootfs), "--", "/probe", *args]


def own_bounding_set() -> str:
    """Every capability berth (run by this test) can hand out: ours (in a nested container, not all the kernel knows)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return line.split()[1]
    raise AssertionError("no CapBnd in /proc/self/status")


# -- what the guest sees -----------------------------------------------------------------------


def test_only_own_processes(berth, any_rootfs):
    res = berth(*probe(any_rootfs, "pids"))
    assert res.returncode == 0, res
    pids = dict(line[4:].split(": ", 1) for line in res.lines() if line.startswith("pid "))
    # tini (from a sealed memfd) as pid 1 and the probe: nothing of the host's.
    assert set(pids) == {"1", "2"}, res
    assert pids["2"] == "probe"


def test_no_init_probe_is_pid1(berth, minimal_rootfs):
    res = berth(*probe(minimal_rootfs, "pids", opts=("--no-init",)))
    assert res.returncode == 0, res
    assert [line for line in res.lines() if line.startswith("pid ")] == ["pid 1: probe"]


def test_host_mounts_invisible(berth, any_rootfs):
    res = berth(*probe(any_rootfs, "cat", "/proc/self/mountinfo"))
    assert res.returncode == 0, res
    points = [line.split()[4] for line in res.lines()]
    assert points[0] == "/", res
    stray = [
        p
        for p in points
        if p != "/" and not p.startswith(("/proc/", "/dev/", "/sys/")) and p not in ("/proc", "/dev", "/sys")
    ]
    assert not stray, f"host mounts visible in the guest: {stray}"
    assert len(points) < 40


def test_own_cgroup_namespace(berth, minimal_rootfs, berth_env):
    res = berth(*probe(minimal_rootfs, "cat", "/proc/self/cgroup"))
    assert res.returncode == 0, res
    # Every hierarchy shows the guest's own cgroup as its root: no host path, no berth parent.
    assert res.lines(), res
    for line in res.lines():
        assert line.split(":", 2)[2] == "/", res
    assert berth_env["BERTH_CGROUP_PARENT"] not in res.stdout


def test_kernel_filesystems_are_fresh(berth, any_rootfs):
    res = berth(*probe(any_rootfs, "statfs", "/proc", "/dev", "/dev/pts", "/sys", "/dev/shm"))
    assert res.returncode == 0, res
    assert f"type={MAGIC['proc']}" in res.field("/proc")
    assert f"type={MAGIC['tmpfs']}" in res.field("/dev")
    assert f"type={MAGIC['devpts']}" in res.field("/dev/pts")
    assert f"type={MAGIC['sysfs']}" in res.field("/sys")
    # A new devpts instance: its ptys are numbered from 0, whatever the host has open.
    res = berth(*probe(any_rootfs, "ls", "/dev/pts"))
    assert sorted(res.lines()) == ["/dev/pts/ptmx"], res


def test_hostname(berth, minimal_rootfs, unique):
    host_before = socket.gethostname()
    res = berth(*probe(minimal_rootfs, "hostname", opts=("--hostname", f"{unique}-h")))
    assert res.field("hostname") == f"{unique}-h", res
    res = berth(*probe(minimal_rootfs, "hostname", opts=("--name", f"{unique}-n")))
    assert res.field("hostname") == f"{unique}-n", res
    res = berth(*probe(minimal_rootfs, "hostname-set"))
    assert res.returncode == 0, res
    assert "sethostname: denied EPERM" in res.stdout
    assert socket.gethostname() == host_before


_libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, IPC_EXCL, IPC_RMID = 0o1000, 0o2000, 0


@pytest.fixture
def host_ipc():
    """A SysV shared memory segment and message queue on the host (removed after the test)."""
    key = 0x5EC00000 | secrets.randbits(20)
    shmid = _libc.shmget(key, 4096, IPC_CREAT | IPC_EXCL | 0o600)
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    msqid = _libc.msgget(key, IPC_CREAT | IPC_EXCL | 0o600)
    try:
        assert msqid >= 0, os.strerror(ctypes.get_errno())
        yield key, shmid, msqid
    finally:
        _libc.shmctl(shmid, IPC_RMID, None)
        if msqid >= 0:
            _libc.msgctl(msqid, IPC_RMID, None)


def test_sysv_ipc_invisible(berth, minimal_rootfs, host_ipc):
    key, shmid, _msqid = host_ipc
    host_view = Path("/proc/sysvipc/shm").read_text()
    assert str(key) in host_view  # the check below can see what it looks for
    res = berth(*probe(minimal_rootfs, "ipc-list", str(key)))
    assert res.returncode == 0, res
    table = [line for line in res.lines() if line.startswith(("shm:", "msg:", "sem:"))]
    assert len(table) == 3, res  # the header lines only: the guest's IPC namespace is empty
    assert not any(str(key) in line for line in table)
    assert f"shmget {key}: ENOENT" in res.stdout


def links(res) -> set[str]:
    return {line.split(": ", 1)[1] for line in res.lines() if line.startswith(("link: ", "sysfs link: "))}


def test_only_loopback(berth, any_rootfs):
    res = berth(*probe(any_rootfs, "net-links"))
    assert res.returncode == 0, res
    assert links(res) == {"lo"}


def test_net_host(berth, minimal_rootfs):
    res = berth(*probe(minimal_rootfs, "net-links", opts=("--net", "host")))
    assert res.returncode == 0, res
    assert set(os.listdir("/sys/class/net")) <= links(res)


# -- the chroot barrier ------------------------------------------------------------------------


@pytest.fixture
def host_marker(unique):
    """A file in a temp dir at the host's root, holding a secret the guest must not read."""
    secret = f"host-secret-{secrets.token_hex(8)}"
    d = Path(f"/{unique}-escape")
    d.mkdir()
    (d / "marker").write_text(secret + "\n")
    try:
        yield d / "marker", secret
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_chroot_escape_fails(berth, any_rootfs, host_marker, init):
    marker, secret = host_marker
    res = berth(*probe(any_rootfs, "chroot-escape", str(marker), opts=(init,)))
    assert secret not in res.stdout, res
    assert "REACHED" not in res.stdout
    for how in ("direct", "proc1root", "procselfroot", "chroot", "fchdir"):
        assert f"escape {how}: not reached" in res.stdout, res
    assert res.returncode == 0, res


# -- what the guest may not do -----------------------------------------------------------------

DENIED = {
    "mount": ["mount tmpfs: denied EPERM", "mount bind: denied EPERM", "umount /proc: denied EPERM"],
    "raw-mount-proc": ["mount proc: denied EPERM", "mount sysfs: denied EPERM"],
    "mknod-block": ["mknod b 8:0: denied EPERM"],
    "init-module": ["init_module: denied EPERM"],
    "finit-module": ["finit_module: denied EPERM"],
    "reboot": ["reboot: denied EPERM"],
    "kexec": ["kexec_load: denied EPERM", "kexec_file_load: denied EPERM"],
    # This kernel may lack CONFIG_MAGIC_SYSRQ: refused either way.
    "sysrq": ["open /proc/sysrq-trigger: denied"],
    "core-pattern": ["open /proc/sys/kernel/core_pattern: denied EROFS"],
    "keyctl": ["add_key: denied EPERM", "keyctl: denied EPERM"],
    "bpf": ["bpf map create: denied EPERM"],
    "perf": ["perf_event_open: denied EPERM"],
    "unshare-user": ["unshare user: denied EPERM", "unshare mount: denied EPERM"],
    "sys-write": ["/sys: read-only", "mkdir /sys/fs/cgroup/probe-escape: denied EROFS"],
    "hostname-set": ["sethostname: denied EPERM"],
}


@pytest.mark.parametrize("check", sorted(DENIED))
def test_denied(berth, any_rootfs, check):
    res = berth(*probe(any_rootfs, check))
    assert "ALLOWED" not in res.stdout, res
    for expected in DENIED[check]:
        assert expected in res.stdout, res
    assert res.returncode == 0, res


def test_masked_paths_read_empty(berth, minimal_rootfs):
    files = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/interrupts"]
    res = berth(*probe(minimal_rootfs, "kcore", *files))
    assert res.returncode == 0, res
    for f in files:
        # Masked with /dev/null (reads 0 bytes), or absent from this kernel.
        assert res.field(f) in ("read 0 bytes", "open denied ENOENT"), res
    res = berth(*probe(minimal_rootfs, "ls", "/proc/acpi", "/sys/firmware"))
    assert res.stdout == "", res  # masked directories are empty


def test_runtime_binary_unreachable(berth, any_rootfs):
    res = berth(*probe(any_rootfs, "ptrace-init"))
    assert res.returncode == 0, res
    # tini bound read-only on the guest's /dev tmpfs (as Docker's --init): no host path leads
    # there, and CRIU can restore it (a memfd it cannot).
    assert res.field("pid1 exe") == "/dev/.berth-init"
    assert "PYTHON" not in res.stdout
    assert res.field("open /proc/1/exe for writing").startswith("denied")
    assert res.field("reopen /proc/1/exe for writing").startswith("denied")


def test_runtime_binary_unreachable_without_init(berth, minimal_rootfs):
    res = berth(*probe(minimal_rootfs, "ptrace-init", opts=("--no-init",)))
    assert res.returncode == 0, res
    assert res.field("pid1 exe") == "/probe"
    assert "PYTHON" not in res.stdout


# -- privileges --------------------------------------------------------------------------------


def test_default_privileges(berth, any_rootfs):
    res = berth(*probe(any_rootfs, "caps"))
    assert res.returncode == 0, res
    assert res.field("CapBnd") == DOCKER_CAPS
    assert res.field("CapEff") == DOCKER_CAPS
    assert res.field("CapPrm") == DOCKER_CAPS
    assert res.field("CapInh") == NO_CAPS
    assert res.field("CapAmb") == NO_CAPS
    res = berth(*probe(any_rootfs, "seccomp"))
    assert res.field("Seccomp") == "2", res
    res = berth(*probe(any_rootfs, "nnp"))
    assert res.field("NoNewPrivs") == "1", res


def test_no_new_privileges_false(berth, minimal_rootfs):
    res = berth(*probe(minimal_rootfs, "nnp", opts=("--security-opt", "no-new-privileges=false")))
    assert res.field("NoNewPrivs") == "0", res
    res = berth(*probe(minimal_rootfs, "seccomp", opts=("--security-opt", "no-new-privileges=false")))
    assert res.field("Seccomp") == "2", res


def test_only_stdio_fds(berth, any_rootfs, tmp_path):
    # berth inherits an extra host fd: the guest must not.
    secret = tmp_path / "host-file"
    secret.write_text("host\n")
    fd = os.open(secret, os.O_RDONLY)
    try:
        res = berth(*probe(any_rootfs, "fds"), pass_fds=(fd,))
    finally:
        os.close(fd)
    assert res.returncode == 0, res
    fds = [line.split(":")[0] for line in res.lines() if line.startswith("fd ")]
    assert fds == ["fd 0", "fd 1", "fd 2"], res
    assert str(secret) not in res.stdout


def test_zombies_reaped(berth, any_rootfs):
    res = berth(*probe(any_rootfs, "zombies", "8"))
    assert res.field("zombies") == "0", res
    assert res.returncode == 0


def test_cap_drop(berth, minimal_rootfs):
    res = berth(*probe(minimal_rootfs, "caps", opts=("--cap-drop", "CHOWN", "--cap-drop", "cap_kill")))
    want = f"{int(DOCKER_CAPS, 16) & ~(1 << 0) & ~(1 << 5):016x}"
    assert res.field("CapEff") == want, res
    assert res.field("CapBnd") == want
    res = berth(*probe(minimal_rootfs, "caps", opts=("--cap-drop", "ALL")))
    assert res.field("CapBnd") == NO_CAPS, res
    assert res.field("CapEff") == NO_CAPS
    # The kernel enforces it: /dev/null is a device the guest may create, but not without CAP_MKNOD.
    res = berth(*probe(minimal_rootfs, "mknod-block", "c", "1", "3"))
    assert "mknod c 1:3: created" in res.stdout, res
    res = berth(*probe(minimal_rootfs, "mknod-block", "c", "1", "3", opts=("--cap-drop", "MKNOD")))
    assert "mknod c 1:3: denied EPERM" in res.stdout, res


def test_cap_add(berth, minimal_rootfs):
    res = berth(*probe(minimal_rootfs, "caps", opts=("--cap-add", "SYS_ADMIN")))
    want = f"{int(DOCKER_CAPS, 16) | 1 << 21:016x}"
    assert res.field("CapEff") == want, res
    assert res.field("CapBnd") == want
    # Docker's profile opens mount(2) to CAP_SYS_ADMIN: the guest may now mount in its own namespace.
    res = berth(*probe(minimal_rootfs, "mount", opts=("--cap-add", "SYS_ADMIN")))
    assert "mount tmpfs: ALLOWED" in res.stdout, res


def test_privileged(berth, minimal_rootfs):
    host_name = socket.gethostname()
    res = berth(*probe(minimal_rootfs, "caps", opts=("--privileged",)))
    # As podman: every capability berth holds (this host may not give it all the kernel knows).
    assert res.returncode == 0, res
    assert res.field("CapBnd") == own_bounding_set(), res
    assert res.field("CapEff") == own_bounding_set()
    res = berth(*probe(minimal_rootfs, "seccomp", opts=("--privileged",)))
    assert res.field("Seccomp") == "0", res
    # Still namespaced: its own processes, hostname and network only.
    res = berth(*probe(minimal_rootfs, "pids", opts=("--privileged",)))
    assert {line.split(":")[0] for line in res.lines()} == {"pid 1", "pid 2"}, res
    res = berth(*probe(minimal_rootfs, "hostname-set", opts=("--privileged",)))
    assert "sethostname: ALLOWED" in res.stdout, res
    assert socket.gethostname() == host_name
    res = berth(*probe(minimal_rootfs, "net-links", opts=("--privileged",)))
    assert links(res) == {"lo"}, res


def test_seccomp_unconfined(berth, minimal_rootfs):
    opts = ("--security-opt", "seccomp=unconfined")
    res = berth(*probe(minimal_rootfs, "seccomp", opts=opts))
    assert res.field("Seccomp") == "0", res
    res = berth(*probe(minimal_rootfs, "caps", opts=opts))
    assert res.field("CapEff") == DOCKER_CAPS, res
    # Without the filter the capability bounding set still refuses what needs CAP_SYS_ADMIN.
    res = berth(*probe(minimal_rootfs, "mount", opts=opts))
    assert "mount tmpfs: denied EPERM" in res.stdout, res


def test_seccomp_profile_file(berth, minimal_rootfs, tmp_path):
    import json

    profile = tmp_path / "profile.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            }
        )
    )
    res = berth(*probe(minimal_rootfs, "seccomp", opts=("--security-opt", f"seccomp={profile}")))
    assert res.field("Seccomp") == "2", res


def test_read_only(berth, busybox_rootfs):
    res = berth(*probe(busybox_rootfs, "write", "/probe-written", "/dev/shm/x", opts=("--read-only",)))
    assert "create /probe-written: denied EROFS" in res.stdout, res
    assert "create /dev/shm/x: ALLOWED" in res.stdout, res
    res = berth(*probe(busybox_rootfs, "write", "/probe-written"))
    assert "create /probe-written: ALLOWED" in res.stdout, res
    assert not (busybox_rootfs / "probe-written").exists()


# -- identity and environment ------------------------------------------------------------------


def test_user_uid_gid(berth, any_rootfs):
    res = berth(*probe(any_rootfs, "id", opts=("-u", "1000:1000")))
    assert res.returncode == 0, res
    assert (res.field("uid"), res.field("gid")) == ("1000", "1000")
    res = berth(*probe(any_rootfs, "caps", opts=("-u", "1000:1000")))
    assert res.field("CapEff") == NO_CAPS, res
    assert res.field("CapBnd") == DOCKER_CAPS


def test_user_without_any_capability(berth, any_rootfs):
    """A non-root user with every capability dropped: the init, already that user, still reopens
    exec.fifo to go on (it was root's alone: EACCES without CAP_DAC_OVERRIDE)."""
    res = berth(*probe(any_rootfs, "id", opts=("-u", "1000:1000", "--cap-drop", "ALL")))
    assert res.returncode == 0, res
    assert (res.field("uid"), res.field("gid")) == ("1000", "1000")


def test_user_name(berth, busybox_rootfs):
    res = berth(*probe(busybox_rootfs, "id", opts=("-u", "user")))
    assert res.returncode == 0, res
    assert (res.field("uid"), res.field("gid")) == ("1000", "1000")
    res = berth(*probe(busybox_rootfs, "env", "HOME", opts=("-u", "user")))
    assert "HOME=/home/user" in res.stdout, res


def test_workdir(berth, busybox_rootfs):
    res = berth(*probe(busybox_rootfs, "cwd", opts=("-w", "/etc")))
    assert res.field("cwd") == "/etc", res


def test_env(berth, minimal_rootfs, unique):
    res = berth(
        *probe(
            minimal_rootfs,
            "env",
            "FOO",
            "BAR",
            "PATH",
            "HOSTNAME",
            opts=("-e", "FOO=x y=z", "--env=BAR=", "--name", unique),
        )
    )
    assert "FOO=x y=z" in res.stdout, res
    assert "BAR=\n" in res.stdout
    assert "PATH=/usr/local/sbin:" in res.stdout
    assert f"HOSTNAME={unique}" in res.stdout


def test_busybox_template_overlay(berth, berth_env):
    # Default rootfs: the busybox template as an overlay; what the guest writes goes with it.
    res = berth("--", "sh", "-c", "echo hi > /etc/written && cat /etc/written && id -u")
    assert res.returncode == 0, res
    assert res.lines() == ["hi", "0"]
    store = Path(berth_env["BERTH_ROOT"])
    assert not (store / "templates" / "busybox" / "rootfs" / "etc" / "written").exists()


# -- exit statuses and signals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["exit", "0"], 0),
        (["exit", "3"], 3),
        (["exit", "42"], 42),
        (["kill-self", "9"], 137),
        (["kill-self", "15"], 143),
    ],
)
def test_exit_status(berth, minimal_rootfs, args, status):
    res = berth(*probe(minimal_rootfs, *args))
    assert res.returncode == status, res


def test_exit_status_sh(berth):
    res = berth("--", "sh", "-c", "kill -9 $$")
    assert res.returncode == 137, res


def test_sigterm_reaches_guest(background, minimal_rootfs):
    g = background(*probe(minimal_rootfs, "sleep-term"))
    g.wait_for("^ready$")
    g.proc.send_signal(signal.SIGTERM)
    res = g.finish()
    assert res.returncode == 143, res


@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_sigterm_handler_runs(background, minimal_rootfs, init):
    g = background(*probe(minimal_rootfs, "trap-term", opts=(init,)))
    g.wait_for("^ready$")
    g.proc.send_signal(signal.SIGTERM)
    res = g.finish()
    assert "got SIGTERM" in res.stdout, res
    assert res.returncode == 0, res


# -- terminals -----------------------------------------------------------------------------------


def test_stdin_default_and_interactive(berth, minimal_rootfs):
    res = berth(*probe(minimal_rootfs, "tty"), input="ignored\n")
    assert res.field("tty") == "not a tty", res
    assert res.field("input") == "EOF"  # without -i, stdin is /dev/null
    res = berth(*probe(minimal_rootfs, "tty", opts=("-i",)), input="hello\n")
    assert res.field("input") == "hello", res


def test_tty(berth_env, berth_argv, check_clean, minimal_rootfs):
    master, slave = pty.openpty()
    cmd = [*berth_argv, "run", *probe(minimal_rootfs, "tty", opts=("-t", "-i"))]
    proc = subprocess.Popen(
        cmd, env=berth_env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 20
        sent = False
        while time.monotonic() < deadline:
            if not sent and b"tty: " in out and b"\n" in out.split(b"tty: ", 1)[1]:
                os.write(master, b"hello\r")
                sent = True
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    text = out.decode(errors="replace")
    assert "tty: /dev/pts/0" in text, text
    assert "input: hello" in text, text
    assert proc.returncode == 0, text
    check_clean()


# -- the same assertions against runc ----------------------------------------------------------

# Not sys-write: runc 1.1 leaves its tmpfs at /sys/fs/cgroup writable on hybrid hosts (berth does not).
SAME_AS_RUNC = [
    "caps",
    "seccomp",
    "nnp",
    "net-links",
    "fds",
    "mount",
    "raw-mount-proc",
    "mknod-block",
    "reboot",
    "kexec",
    "init-module",
    "unshare-user",
    "core-pattern",
    "hostname-set",
    "keyctl",
    "bpf",
    "perf",
    "zombies",
    "pids",
]


@pytest.fixture
def runc(tmp_path, berth_env, minimal_rootfs):
    """``runc(*probe_args)``: the probe under runc, from a bundle made with berth's own spec defaults."""
    import json

    from berth.spec.defaults import default_spec

    exe = shutil.which("runc")
    if exe is None:
        pytest.skip("runc is not installed")
    state = tmp_path / "runc-state"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    seq = [0]

    def run(*args: str) -> tuple[int, str]:
        seq[0] += 1
        cid = f"{berth_env['BERTH_CGROUP_PARENT'].split('/')[-1]}-runc{seq[0]}"
        spec = default_spec(
            ["/probe", *args], hostname="runc", root_path=str(minimal_rootfs), no_new_privileges=True
        )
        spec["linux"]["cgroupsPath"] = f"/{berth_env['BERTH_CGROUP_PARENT']}/{cid}"
        (bundle / "config.json").write_text(json.dumps(spec))
        try:
            proc = subprocess.run(
                [exe, "--root", str(state), "run", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        finally:
            subprocess.run(
                [exe, "--root", str(state), "delete", "--force", cid],
                capture_output=True,
                timeout=30,
                check=False,
            )
        return proc.returncode, proc.stdout + proc.stderr

    return run


@pytest.mark.parametrize("check", SAME_AS_RUNC)
def test_same_as_runc(berth, runc, minimal_rootfs, check):
    # A test that passes on runc and on berth for the same reason is a test we can trust.
    want_rc, want = runc(check)
    res = berth(*probe(minimal_rootfs, check, opts=("--no-init", "--hostname", "runc")))
    got = res.stdout + res.stderr
    if check == "fds":  # runc hands the probe its own pipes, berth /dev/null as stdin: compare the numbers
        got, want = ([line.split(":")[0] for line in out.splitlines()] for out in (got, want))
    elif (
        check == "mknod-block"
    ):  # runc 1.1 lets the node be made (and refuses opening it); berth refuses mknod
        got = want = ""
    assert (res.returncode, got) == (want_rc, want)
