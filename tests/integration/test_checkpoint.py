"""Checkpoint/restore of a guest with CRIU: a busybox guest running a counter and a TCP echo
server with an open client connection (over the guest's loopback: guests have no bridge yet);
after restore the counter continues and the same connection still answers.  Both kinds of
guest: --userns host --no-lxcfs --no-init (as migration uses), and berth's defaults."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BERTH = str(REPO / ".venv" / "bin" / "berth")
# A counter, an echo server and one client connection that pings it every 0.2 s.
GUEST = (
    "i=0; (while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done) & "
    "nc -l -p 7000 -e cat & sleep 0.3; "
    "(while true; do echo ping $(cat /count); sleep 0.2; done) | nc 127.0.0.1 7000 > /replies & wait"
)


def criu_or_skip() -> str:
    from berth.errors import UnsupportedError
    from berth.runtime import criu

    try:
        return criu.find()
    except UnsupportedError as e:
        pytest.skip(str(e))


def berth(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    p = subprocess.run([BERTH, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"berth {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def wait(cond, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Host:
    """One berth host: a store, a state root and a cgroup parent of its own."""

    def __init__(self, env: dict[str, str], store: Path, run: Path, parent: str) -> None:
        self.env = {**env, "BERTH_ROOT": str(store), "BERTH_RUN": str(run), "BERTH_CGROUP_PARENT": parent}
        self.store, self.run, self.parent = store, run, parent

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return berth(self.env, *args, **kw)

    def upper(self, name: str) -> Path:
        return self.store / "guests" / name / "upper"

    def replies(self, name: str) -> list[int]:
        try:
            text = (self.upper(name) / "replies").read_text()
        except FileNotFoundError:
            return []
        return [int(m) for m in re.findall(r"ping (\d+)", text)]

    def count(self, name: str) -> int:
        try:
            return int((self.upper(name) / "count").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def record(self, name: str) -> dict:
        import json

        try:
            return json.loads((self.run / ".guests" / f"{name}.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def cleanup(self) -> None:
        d = self.store / "guests"
        for name in os.listdir(d) if d.is_dir() else []:
            if not name.startswith("."):
                self("destroy", "--force", name, check=False)
        try:
            pid = int((self.run / ".guests" / "guestd.pid").read_text())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        self("gc", check=False)
        for top in Path("/sys/fs/cgroup").iterdir():
            for sub in sorted(top.glob(f"{self.parent}*"), reverse=True):
                if sub.is_dir():
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
            base = top / self.parent.split("/")[0]
            try:
                base.rmdir()
            except OSError:
                pass


def make_host(tmp_path: Path, prefix: str, tag: str, shared: str) -> Host:
    from berth.rootfs import template

    store = tmp_path / f"store-{tag}"
    store.mkdir()
    # Share the session's templates (the lower layer) instead of building them again.
    template.ensure(shared, "busybox")
    (store / "templates").symlink_to(Path(shared) / "templates")
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return Host(env, store, tmp_path / f"run-{tag}", f"{prefix}/{tag}")


@pytest.fixture
def host_a(tmp_path: Path, prefix: str, unique: str, berth_env: dict[str, str]):
    criu_or_skip()
    h = make_host(tmp_path, prefix, f"{unique}a", berth_env["BERTH_ROOT"])
    yield h
    h.cleanup()


@pytest.fixture
def default_host(host_a: Host):
    """host_a made ready for berth's default guests (a user namespace of their own, lxcfs, tini):
    their mapped root reaches its state dir and upper layer, lxcfs at a point of the session's."""
    import test_guests

    point = test_guests.userns_ready(host_a.env)
    yield host_a
    host_a.cleanup()
    test_guests.lxcfs_stop(point)


def start_guest(h: Host, name: str, *, default: bool = False) -> None:
    # Host ids, no lxcfs, no tini: the guest the migration tests use too (a migrated guest's id
    # range would not exist in the receiving store's pool).  ``default``: berth's defaults
    # (--userns auto, lxcfs, tini) but for the network.
    opts = [] if default else ["--userns", "host", "--no-lxcfs", "--no-init"]
    h("create", name, "--net", "none", *opts, "--", "sh", "-c", GUEST)
    h("start", name)
    wait(lambda: len(h.replies(name)) >= 3, what="the guest's client to get replies")


def guest_pid(h: Host, name: str) -> int:
    return int(h.record(name)["pid"])


def put_tmpfs_files(h: Host, name: str) -> dict[str, bytes]:
    """Files in the running guest's /dev/shm (a tmpfs) and /tmp (its upper layer), written
    through its root; what :func:`check_tmpfs_files` expects back."""
    root = Path(f"/proc/{guest_pid(h, name)}/root")
    files = {
        "dev/shm/keep": b"kept in shm\n",
        "dev/shm/d/big": os.urandom(3 << 20),
        "tmp/keep": b"kept in tmp\n",
    }
    (root / "dev/shm/d").mkdir()
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.link(root / "dev/shm/keep", root / "dev/shm/d/hard")
    (root / "dev/shm/link").symlink_to("keep")
    os.mkfifo(root / "dev/shm/fifo", 0o640)
    os.chmod(root / "dev/shm/keep", 0o604)
    return files


def check_tmpfs_files(h: Host, name: str, files: dict[str, bytes]) -> None:
    """The restored guest's /dev/shm and /tmp hold what :func:`put_tmpfs_files` wrote, its /dev
    its device nodes, and the tmpfs mounts are tmpfs again with the same options."""
    import stat

    pid = guest_pid(h, name)
    root = Path(f"/proc/{pid}/root")
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel
    keep, hard = (root / "dev/shm/keep").stat(), (root / "dev/shm/d/hard").stat()
    assert (keep.st_ino, keep.st_nlink) == (hard.st_ino, 2), "the hard link was not kept"
    assert stat.S_IMODE(keep.st_mode) == 0o604
    assert os.readlink(root / "dev/shm/link") == "keep"
    assert stat.S_ISFIFO((root / "dev/shm/fifo").lstat().st_mode)
    null = (root / "dev/null").stat()
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    mounts = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        f = line.split()
        sep = f.index("-")
        mounts[f[4]] = (f[5], f[sep + 1], f[sep + 3])
    assert mounts["/dev/shm"][1] == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(mounts["/dev/shm"][0].split(","))
    assert mounts["/dev"][1] == "tmpfs" and "mode=755" in mounts["/dev"][2]
    assert mounts["/sys/fs/cgroup"][1] == "tmpfs"


def test_tmpfs_content_survives_without_criu_tar(host_a: Host, unique: str) -> None:
    """The guest's tmpfs mounts are copied by berth, not tarred by CRIU (one tar and gzip
    process per mount, in the downtime), and come back with their content and options."""
    h = host_a
    name = f"{unique}-tf"
    start_guest(h, name)
    files = put_tmpfs_files(h, name)
    img = h.store / "img"
    h("checkpoint", name, "--image", str(img))
    assert not list(img.glob("tmpfs-dev-*")), "CRIU tarred a tmpfs"
    assert (img / "tmpfs").is_dir()
    h("restore", name, "--image", str(img))
    check_tmpfs_files(h, name, files)
    stopped_at = h.count(name)
    wait(lambda: h.count(name) > stopped_at + 3, what="the counter to continue")
    h("destroy", "--force", name)


def test_checkpoint_restore_round_trip(host_a: Host, unique: str) -> None:
    h = host_a
    name = f"{unique}-cr"
    start_guest(h, name)
    out = h("checkpoint", name)
    assert "checkpointed" in out.stdout
    assert h.record(name)["status"] == "checkpointed"
    stopped_at = h.count(name)
    n_replies = len(h.replies(name))
    time.sleep(0.5)
    assert h.count(name) == stopped_at, "the guest still ran after its checkpoint"
    h("restore", name)
    rec = h.record(name)
    assert rec["status"] == "running" and rec["pid"]
    # The counter continues from where it stopped (not from 1) ...
    wait(lambda: h.count(name) > stopped_at + 3, what="the counter to continue")
    # ... and the same connection answers: the client's nc was restored, not reconnected
    # (the server accepts one connection only).
    wait(lambda: len(h.replies(name)) > n_replies + 3, what="replies on the restored connection")
    replies = h.replies(name)
    assert replies[n_replies] >= stopped_at - 2
    # Its limits are back: the cgroup exists under this host's parent with the guest's init.
    procs = [int(x) for x in Path(f"/sys/fs/cgroup/pids/{h.parent}/{name}/cgroup.procs").read_text().split()]
    assert rec["pid"] in procs
    h("destroy", "--force", name)


def _init_of(h: Host, name: str) -> tuple[str, str]:
    """The guest's init as the host sees it: (its executable's path inside, its uid_map)."""
    pid = h.record(name)["pid"]
    return os.readlink(f"/proc/{pid}/exe"), " ".join(Path(f"/proc/{pid}/uid_map").read_text().split())


def test_checkpoint_restore_default_guest(default_host: Host, unique: str) -> None:
    """A guest as ``berth create`` makes it (tini as pid 1, its own user namespace with idmapped
    template layers, lxcfs views, masked /proc files) is checkpointed and restored: the counter
    continues, the client's connection answers, the ids and tini are as before."""
    h = default_host
    name = f"{unique}-df"
    start_guest(h, name, default=True)
    exe, uid_map = _init_of(h, name)
    # tini runs from a file of the guest's mount namespace (not a memfd CRIU cannot restore).
    assert exe == "/dev/.berth-init", exe
    assert not uid_map.startswith("0 0 "), uid_map
    h("checkpoint", name)
    assert h.record(name)["status"] == "checkpointed"
    stopped_at = h.count(name)
    n_replies = len(h.replies(name))
    h("restore", name)
    assert h.record(name)["status"] == "running"
    wait(lambda: h.count(name) > stopped_at + 3, what="the counter to continue")
    wait(lambda: len(h.replies(name)) > n_replies + 3, what="replies on the restored connection")
    assert h.replies(name)[n_replies] >= stopped_at - 2
    assert _init_of(h, name) == (exe, uid_map)
    # Inside: the template's files owned by root (idmapped), the upper layer writable and a
    # template file removable (userxattr whiteouts), the devices and masks what they were,
    # lxcfs's view in place, tini not writable.
    script = (
        "stat -c %u /bin/busybox; rm /bin/true && test ! -e /bin/true && echo removed; "
        "head -c 2 /dev/zero | od -An -tx1; wc -c < /proc/timer_list; "
        "grep -c lxcfs /proc/self/mountinfo; (echo x > /dev/.berth-init) 2>/dev/null || echo ro"
    )
    out = h("exec", name, "--", "sh", "-c", script).stdout.split()
    assert out == ["0", "removed", "00", "00", "0", out[5], "ro"], out
    assert int(out[5]) >= 1
    h("destroy", "--force", name)


def test_checkpoint_bridged_userns_guest_refused(default_host: Host, unique: str, prefix: str) -> None:
    """A bridged guest in its own user namespace is refused before anything is dumped (one
    line), and keeps running."""
    from test_net import _free_subnet

    h = default_host
    h.env.update(
        BERTH_NET_PREFIX=prefix,
        BERTH_BRIDGE=f"{prefix}br0",
        BERTH_NFT_TABLE=prefix,
        BERTH_SUBNET=_free_subnet(),
    )
    name = f"{unique}-br"
    h("create", name, "--cmd", "sleep 1000")  # berth's defaults: bridge, --userns auto
    h("start", name)
    p = h("checkpoint", name, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 125 and len(lines) == 1 and "user namespace" in lines[0], p
    assert h.record(name)["status"] == "running"
    assert not (h.store / "guests" / name / "checkpoint" / "inventory.img").exists()
    h("destroy", "--force", name)
    h("gc", check=False)


def test_checkpoint_leave_running_and_bad_input(host_a: Host, unique: str) -> None:
    h = host_a
    name = f"{unique}-lr"
    start_guest(h, name)
    img = h.store / "img"
    h("checkpoint", name, "--leave-running", "--image", str(img))
    assert (img / "berth.json").exists() and (img / "inventory.img").exists()
    before = h.count(name)
    wait(lambda: h.count(name) > before + 2, what="the guest to keep running")
    p = h("restore", name, "--image", str(img), check=False)
    assert p.returncode == 125 and "is running" in p.stderr.strip().splitlines()[-1]
    p = h("checkpoint", "nosuchguest", check=False)
    assert p.returncode == 125 and len(p.stderr.strip().splitlines()) == 1
    shutil.rmtree(img)
    h("destroy", "--force", name)


def test_no_working_criu_is_one_line(host_a: Host, unique: str, tmp_path: Path) -> None:
    h = host_a
    name = f"{unique}-nc"
    start_guest(h, name)
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Error (criu/kerndat.c:1): vdso: not supported' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**h.env, "BERTH_CRIU": str(fake), "PATH": "/nonexistent"}
    from berth.runtime import criu

    if Path(criu.DEFAULT_TOOLS, "criu").exists():
        # The bundle would be found next: point it away for this call only.
        env["BERTH_CRIU_ONLY"] = "1"
    p = berth(env, "checkpoint", name, check=False)
    assert p.returncode == 125, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "criu" in lines[0].lower(), lines
    assert h.record(name)["status"] == "running"
    h("destroy", "--force", name)
