"""``berth run --rootfs DIR`` with a root filesystem an attacker filled with traps.

Symlinks where the kernel filesystems go, pointing at host paths (here: a sentinel
directory the test owns, so a mount that escaped would be seen there), at the root itself
or in loops; missing or wrong-typed mount points; commands that lead through /proc magic
links to the runtime's own interpreter.  Each case must either fail cleanly (one line,
status 125/126, nothing left) or give a guest whose isolation holds, with the host
untouched.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

DOCKER_CAPS = "00000000a80425fb"
MAGIC = {"/proc": "0x9fa0", "/dev": "0x1021994", "/dev/pts": "0x1cd1", "/sys": "0x62656572"}


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A host directory hostile symlinks point at: nothing may be created or mounted in it."""
    d = tmp_path / "host-sentinel"
    d.mkdir()
    (d / "host-file").write_text("host\n")
    return d


def host_mounts_of(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


def assert_untouched(sentinel: Path) -> None:
    assert sorted(os.listdir(sentinel)) == ["host-file"], f"berth wrote into the host path {sentinel}"
    assert not host_mounts_of(sentinel)


def run_probe(berth, rootfs: Path, *args: str, opts: tuple[str, ...] = ()):
    return berth("--rm", *opts, "--rootfs", str(rootfs), "--", "/probe", *args)


def assert_symlink_refused(berth, rootfs: Path, where: str) -> None:
    """proc and sysfs go onto an ordinary directory only (as runc: CVE-2019-19921)."""
    res = run_probe(berth, rootfs, "exit", "0")
    assert res.returncode == 125, res
    assert f"/{where} is a symlink in the rootfs" in res.error_line()


def assert_isolated(berth, rootfs: Path) -> None:
    """The guest's key properties, whatever the rootfs did to its mount points."""
    res = run_probe(berth, rootfs, "statfs", *MAGIC)
    assert res.returncode == 0, res
    for path, magic in MAGIC.items():
        assert f"type={magic}" in res.field(path), res
    res = run_probe(berth, rootfs, "caps")
    assert res.field("CapEff") == DOCKER_CAPS, res
    for check, expected in (
        ("core-pattern", "denied EROFS"),
        ("sys-write", "/sys: read-only"),
        ("mount", "mount tmpfs: denied EPERM"),
    ):
        res = run_probe(berth, rootfs, check)
        assert res.returncode == 0, res
        assert expected in res.stdout, res
    res = run_probe(berth, rootfs, "kcore", "/proc/keys", "/proc/timer_list")
    assert res.returncode == 0, res


@pytest.mark.parametrize("where", ["proc", "dev", "sys", "dev/pts", "sys/fs/cgroup", "dev/shm", "dev/mqueue"])
def test_mount_point_symlink_to_host_path(berth, fresh_rootfs, sentinel, where):
    # The symlink is followed as if the rootfs were /: the mount lands inside the rootfs.
    link = fresh_rootfs / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(sentinel)
    if where in ("proc", "sys"):
        assert_symlink_refused(berth, fresh_rootfs, where)
        assert_untouched(sentinel)
        return
    assert_isolated(berth, fresh_rootfs)
    assert_untouched(sentinel)
    if "/" not in where:  # (the others lie under /dev's tmpfs or sysfs: the rootfs's own link is hidden)
        assert (fresh_rootfs / str(sentinel).lstrip("/")).is_dir()  # what berth made, it made in the rootfs


@pytest.mark.parametrize("where", ["proc", "dev", "sys"])
def test_mount_point_symlink_dotdot(berth, fresh_rootfs, sentinel, where):
    # ../../.. walks up to the rootfs's own root, never above it.
    rel = os.path.relpath(sentinel, fresh_rootfs)
    (fresh_rootfs / where).symlink_to(rel)
    if where in ("proc", "sys"):
        assert_symlink_refused(berth, fresh_rootfs, where)
    else:
        assert_isolated(berth, fresh_rootfs)
    assert_untouched(sentinel)


@pytest.mark.parametrize(
    ("where", "target"), [("dev", "/"), ("proc", "../../../../.."), ("sys", "."), ("proc", "/nonexistent/..")]
)
def test_mount_point_resolving_to_root_refused(berth, fresh_rootfs, where, target):
    # A mount there would cover the whole guest root: refuse, in one line.
    (fresh_rootfs / where).symlink_to(target)
    res = run_probe(berth, fresh_rootfs, "exit", "0")
    assert res.returncode == 125, res
    assert f"mount /{where}" in res.error_line()


@pytest.mark.parametrize("where", ["proc", "sys", "dev"])
def test_mount_point_symlink_loop(berth, fresh_rootfs, where):
    (fresh_rootfs / where).symlink_to(f"/{where}")
    res = run_probe(berth, fresh_rootfs, "exit", "0")
    assert res.returncode == 125, res
    assert where in res.error_line()


@pytest.mark.parametrize("where", ["proc", "dev", "sys"])
def test_mount_point_is_a_file(berth, fresh_rootfs, where):
    (fresh_rootfs / where).write_text("not a directory\n")
    res = run_probe(berth, fresh_rootfs, "exit", "0")
    assert res.returncode == 125, res
    res.error_line()


def test_dev_entries_are_berths(berth, fresh_rootfs, sentinel):
    # The rootfs's own /dev entries (symlinks to host devices) lie under the guest's /dev tmpfs.
    dev = fresh_rootfs / "dev"
    dev.mkdir()
    (dev / "null").symlink_to(sentinel / "host-file")
    (dev / "sda").symlink_to("/dev/sda")
    (dev / "pts").symlink_to("/dev/pts")
    (dev / "console").symlink_to(sentinel / "host-file")
    res = run_probe(berth, fresh_rootfs, "statfs", "/dev/null", "/dev/sda", "/dev/pts", "/dev/console")
    assert res.returncode == 0, res
    assert res.field("/dev/sda") == "ENOENT"
    assert "mode=20666" in res.field("/dev/null")  # the character device berth made
    assert "type=0x1cd1" in res.field("/dev/pts")
    assert_untouched(sentinel)


def test_minimal_rootfs_gets_its_mount_points(berth, fresh_rootfs):
    # Nothing but the probe: no /proc, /dev, /sys, /etc, /tmp.
    assert_isolated(berth, fresh_rootfs)
    res = run_probe(berth, fresh_rootfs, "id")
    assert res.field("uid") == "0", res


@pytest.mark.parametrize(
    "link", ["/proc/self/exe", "/proc/1/exe", "/proc/thread-self/exe", "/proc/self/root/proc/self/exe"]
)
@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_command_through_proc_magic_link(berth, fresh_rootfs, link, init):
    # /bin/sh -> /proc/self/exe would run the runtime's own interpreter (a host file) in the
    # guest: the CVE-2019-5736 class.  berth refuses the command.
    (fresh_rootfs / "bin").mkdir()
    (fresh_rootfs / "bin" / "sh").symlink_to(link)
    res = berth("--rm", init, "--rootfs", str(fresh_rootfs), "--", "/bin/sh", "-c", "true")
    assert res.returncode == 126, res
    assert "outside the guest" in res.error_line()


@pytest.mark.parametrize("init", ["--init", "--no-init"])
def test_script_interpreter_through_proc_magic_link(berth, fresh_rootfs, init):
    script = fresh_rootfs / "script"
    script.write_text("#!/proc/self/exe -S\nprint('host interpreter')\n")
    script.chmod(0o755)
    res = berth("--rm", init, "--rootfs", str(fresh_rootfs), "--", "/script")
    assert res.returncode == 126, res
    assert "outside the guest" in res.error_line()
    assert "host interpreter" not in res.stdout


def test_command_through_stdio_fd_link(berth, fresh_rootfs, probe_bin, berth_argv, berth_env):
    # /proc/self/fd/0 is a host file (berth's stdin): not a way to run host binaries either.
    import subprocess

    (fresh_rootfs / "bin").mkdir()
    (fresh_rootfs / "bin" / "sh").symlink_to("/proc/self/fd/0")
    with open(probe_bin, "rb") as stdin:
        proc = subprocess.run(
            [*berth_argv, "run", "--rm", "-i", "--rootfs", str(fresh_rootfs), "--", "/bin/sh", "exit", "7"],
            env=berth_env,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 126, proc
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_passwd_symlink_to_host_file(berth, fresh_rootfs, sentinel):
    # -u NAME reads the guest's /etc/passwd; a symlink to a host path resolves inside the rootfs.
    (sentinel / "host-file").write_text("hostonly:x:4242:4242::/:/bin/sh\n")
    (fresh_rootfs / "etc").mkdir()
    (fresh_rootfs / "etc" / "passwd").symlink_to(sentinel / "host-file")
    res = run_probe(berth, fresh_rootfs, "id", opts=("-u", "hostonly"))
    assert res.returncode == 125, res
    assert "hostonly" in res.error_line()
    # The same file inside the rootfs, at the path the symlink names, is the one used.
    inside = fresh_rootfs / str(sentinel).lstrip("/") / "host-file"
    inside.parent.mkdir(parents=True)
    inside.write_text("guestonly:x:4343:4343::/:/bin/sh\n")
    res = run_probe(berth, fresh_rootfs, "id", opts=("-u", "guestonly"))
    assert res.returncode == 0, res
    assert res.field("uid") == "4343"


def test_workdir_symlink_to_host_path(berth, fresh_rootfs, sentinel):
    (fresh_rootfs / "work").symlink_to(sentinel)
    (fresh_rootfs / str(sentinel).lstrip("/")).mkdir(parents=True)
    res = run_probe(berth, fresh_rootfs, "ls", ".", opts=("-w", "/work"))
    assert res.returncode == 0, res
    assert "host-file" not in res.stdout


def test_chroot_escape_from_hostile_rootfs(berth, fresh_rootfs, sentinel):
    # Even with its mount points redirected, the guest cannot reach the host's files.
    (fresh_rootfs / "dev").symlink_to(sentinel)  # (a /proc symlink is refused)
    (fresh_rootfs / "tmp").symlink_to("/")
    res = run_probe(berth, fresh_rootfs, "chroot-escape", str(sentinel / "host-file"))
    assert "REACHED" not in res.stdout, res
    assert res.returncode == 0, res


def test_console_from_the_guests_devpts(berth_env, berth_argv, check_clean, fresh_rootfs):
    # /dev -> /proc/self/cwd/usr/share/../../dev: inside the rootfs (and the guest) it resolves
    # through the rootfs's /usr symlink to /deep/a/b/dev; followed from the host's root with
    # berth's cwd at /, it is the host's /dev.  The console must come from the guest's devpts.
    import pty
    import select
    import subprocess
    import time

    (fresh_rootfs / "deep" / "a" / "b" / "c" / "share").mkdir(parents=True)
    (fresh_rootfs / "usr").symlink_to("/deep/a/b/c")
    (fresh_rootfs / "dev").symlink_to("/proc/self/cwd/usr/share/../../dev")
    master, slave = pty.openpty()
    cmd = [
        *berth_argv,
        "run",
        "-t",
        "--rootfs",
        str(fresh_rootfs),
        "--",
        "/probe",
        "statfs",
        "/dev/console",
        "/dev/pts",
    ]
    proc = subprocess.Popen(
        cmd, env=berth_env, cwd="/", stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
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
    assert proc.returncode == 0, text
    fields = dict(line.split(": ", 1) for line in text.splitlines() if line.startswith("/dev/"))
    dev_of = {path: next(w for w in f.split() if w.startswith("dev=")) for path, f in fields.items()}
    assert dev_of["/dev/console"] == dev_of["/dev/pts"], text
    check_clean()


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_passwd_not_a_regular_file(berth, fresh_rootfs, kind):
    # A FIFO (nobody writes to it) or an endless device as /etc/passwd must not hang berth.
    (fresh_rootfs / "etc").mkdir()
    passwd = fresh_rootfs / "etc" / "passwd"
    if kind == "fifo":
        os.mkfifo(passwd)
    else:
        os.mknod(passwd, 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    res = run_probe(berth, fresh_rootfs, "id", opts=("-u", "someone"))
    assert res.returncode == 125, res
    assert "someone" in res.error_line()
