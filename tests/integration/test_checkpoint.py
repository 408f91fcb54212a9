"""Checkpoint/restore of a guest with CRIU: a busybox guest running a counter and a TCP echo
server with an open client connection (over the guest's loopback: guests have no bridge yet);
after restore the counter continues and the same connection still answers.  Both kinds of
guest: --userns host --no-lxcfs --no-init (as migration uses), and berth's defaults."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import cgroup_roots, free_subnet

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

    def create_plain(self, name: str, script: str) -> None:
        """Guest ``name`` running ``sh -c script`` as the migration tests make it: no network,
        host ids, no lxcfs, no tini (what CRIU moves is the script's processes alone)."""
        self(
            "create",
            name,
            "--net",
            "none",
            "--userns",
            "host",
            "--no-lxcfs",
            "--no-init",
            "--",
            "sh",
            "-c",
            script,
        )

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
        for top in cgroup_roots():
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
    # berth's /sys/fs/cgroup: cgroup2 on a cgroup-v2-only host, else a tmpfs of the v1 hierarchies.
    v2_only = len(cgroup_roots()) == 1
    assert mounts["/sys/fs/cgroup"][1] == ("cgroup2" if v2_only else "tmpfs")


# Files whose owner, mode, file capabilities and extended attributes must all survive a copy
# (a chown clears security.capability and the set-id bits: the copy must chown first):
# {path: (uid, gid, mode, file capabilities for setcap or None, user.note or None)}
SPECIAL = {
    "opt/ping": (0, 0, 0o755, "cap_net_raw+ep", None),
    "opt/suid": (0, 0, 0o4755, None, None),
    "opt/sgid": (1000, 1001, 0o2750, None, b"sgid"),
    "opt/user": (1000, 1001, 0o640, None, b"user"),
    "opt/usercap": (1000, 1000, 0o750, "cap_net_bind_service+ep", b"usercap"),
}


def put_special_files(root: Path) -> None:
    """The files of :data:`SPECIAL` under ``root`` (setcap, like the guest's admin would)."""
    if shutil.which("setcap") is None:
        pytest.skip("setcap is not installed (libcap2-bin)")
    (root / "opt").mkdir(parents=True, exist_ok=True)
    for rel, (uid, gid, mode, cap, note) in SPECIAL.items():
        path = root / rel
        path.write_bytes(b"#!/bin/sh\nexit 0\n")
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        if cap:
            subprocess.run(["setcap", cap, str(path)], check=True)
        if note:
            os.setxattr(path, "user.note", note)


def check_special_files(root: Path) -> None:
    """The files of :data:`SPECIAL` under ``root`` as :func:`put_special_files` made them
    (getcap, stat, getxattr)."""
    for rel, (uid, gid, mode, cap, note) in SPECIAL.items():
        path = root / rel
        st = path.lstat()
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (uid, gid, oct(mode)), rel
        got = subprocess.run(["getcap", str(path)], capture_output=True, text=True, check=True).stdout.split()
        want = [cap.replace("+", "=")] if cap else []
        assert got[1:] == want, (rel, got)
        assert (os.getxattr(path, "user.note") if note else None) == note, rel
        if not note:
            assert "user.note" not in os.listxattr(path), rel


def test_copy_tree_keeps_caps_setid_owners_and_xattrs(tmp_path: Path) -> None:
    """berth.runtime.checkpoint.copy_tree (a guest's tmpfs mounts, at dump and restore): owner,
    mode, file capabilities and extended attributes all as they were."""
    from berth.runtime.checkpoint import copy_tree

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    put_special_files(src)
    copy_tree(str(src), str(dst))
    check_special_files(dst)


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
    pids_root = cgroup_roots()[0] if len(cgroup_roots()) == 1 else Path("/sys/fs/cgroup/pids")  # v2, else v1
    procs = [int(x) for x in (pids_root / h.parent / name / "cgroup.procs").read_text().split()]
    assert rec["pid"] in procs
    # Checkpointed again into the same place: the new images replace the old ones whole.
    h("checkpoint", name)
    again = h.count(name)
    h("restore", name)
    wait(lambda: h.count(name) > again + 3, what="the counter to continue after a second round")
    left = [p.name for p in (h.store / "guests" / name).iterdir() if ".new-" in p.name or ".old-" in p.name]
    assert not left, left
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


def _links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if prefix in ln]


def _netns_owner(pid: int) -> tuple[int, int]:
    """(the inode of the user namespace owning ``pid``'s network namespace, of ``pid``'s own)."""
    import fcntl

    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        owner = fcntl.ioctl(fd, 0xB701)  # NS_GET_USERNS
    finally:
        os.close(fd)
    try:
        return os.fstat(owner).st_ino, os.stat(f"/proc/{pid}/ns/user").st_ino
    finally:
        os.close(owner)


def test_checkpoint_restore_bridged_default_guest(default_host: Host, unique: str, prefix: str) -> None:
    """A guest as ``berth create`` makes it by default — bridged, in a user namespace of its own
    — is checkpointed and restored: same address, same MAC, its network namespace again owned by
    its own user namespace (not the host's), its shaping and nft table back, its own connection
    to its bridge address and a host's connection to it both survive, and nothing is left."""
    import socket

    from test_migrate import BRIDGED

    h = default_host
    net_prefix = f"{unique[:8]}"
    h.env.update(
        BERTH_NET_PREFIX=net_prefix,
        BERTH_BRIDGE=f"{net_prefix}br",
        BERTH_NFT_TABLE=f"{unique}nft",
        BERTH_SUBNET=free_subnet(),
    )
    name = f"{unique}-br"
    try:
        h("create", name, "--net-rate", "40mbit", "--", "sh", "-c", BRIDGED)
        h("start", name)
        wait(lambda: len(h.replies(name)) >= 3, what="the guest's client to get replies")
        lease = json.loads((h.store / "net" / f"{net_prefix}br.json").read_text())["active"][name]
        ip, veth, pid = lease["ip"], lease["veth"], guest_pid(h, name)
        mac_before = h("exec", name, "--", "cat", "/sys/class/net/eth0/address").stdout.strip()
        outside = socket.create_connection((ip, 7300), timeout=5)
        outside.settimeout(10)
        outside.sendall(b"before\n")
        assert outside.recv(16) == b"before\n"
        h("checkpoint", name)
        assert h.record(name)["status"] == "checkpointed"
        assert veth not in _links(net_prefix)
        stopped_at, n = h.count(name), len(h.replies(name))
        h("restore", name)
        pid = guest_pid(h, name)
        wait(lambda: h.count(name) > stopped_at + 3, what="the counter to continue")
        wait(lambda: len(h.replies(name)) > n + 3, what="the guest's own connection to answer")
        outside.sendall(b"after\n")
        assert outside.recv(16) == b"after\n"
        outside.close()
        owner, own = _netns_owner(pid)
        assert owner == own != os.stat("/proc/self/ns/user").st_ino
        lease = json.loads((h.store / "net" / f"{net_prefix}br.json").read_text())["active"][name]
        assert (lease["ip"], lease["veth"], lease["pid"]) == (ip, veth, pid)
        assert "handoff" not in lease
        inside = h("exec", name, "--", "sh", "-c", "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0")
        assert inside.stdout.split()[0] == mac_before and f"inet {ip}/" in inside.stdout, inside.stdout
        assert f"{ip}\t{name}" in (Path(f"/proc/{pid}/root/etc/hosts")).read_text()
        classes = subprocess.run(
            ["tc", "class", "show", "dev", f"{net_prefix}br"], capture_output=True, text=True
        )
        assert "rate 40Mbit" in classes.stdout, classes.stdout
    finally:
        h("destroy", "--force", name, check=False)
        h("gc", check=False)
    assert not _links(net_prefix), _links(net_prefix)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"{unique}nft" not in tables


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


class _Echo:
    """A TCP echo server of the test's on 127.0.0.1 that records its peers' addresses."""

    def __init__(self) -> None:
        import socket
        import threading

        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self.open = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                c, peer = self.srv.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    def _echo(self, c) -> None:
        self.open += 1
        try:
            while data := c.recv(4096):
                c.sendall(data)
        except OSError:
            pass
        finally:
            self.open -= 1
            c.close()

    def close(self) -> None:
        self.srv.close()


def _host_has(addr: str) -> bool:
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return f" {addr}/" in out


def _ip_guest_round_trip(h: Host, unique: str, *, userns_host: bool) -> None:
    subnet = free_subnet()
    addr = subnet.rsplit(".", 1)[0] + ".5"
    h.env.update(
        BERTH_NET_PREFIX=unique[:8],
        BERTH_BRIDGE=f"{unique[:8]}br",
        BERTH_NFT_TABLE=f"{unique}nft",
        BERTH_SUBNET=subnet,
    )
    echo = _Echo()
    name = f"{unique}-ip"
    script = (
        "i=0; (while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done) & "
        f"(while true; do echo ping $(cat /count); sleep 0.2; done) | nc 127.0.0.1 {echo.port} > /replies & wait"
    )
    opts = ["--userns", "host", "--no-lxcfs"] if userns_host else []
    criu_tables = _criu_tables()
    try:
        # unscoped: CRIU cannot checkpoint a guest under berth's Landlock scope (berth.runtime.scope)
        h("create", name, "--net", f"ip:{addr}", "--security-opt", "landlock=unconfined", *opts,
          "--", "sh", "-c", script)  # fmt: skip
        h("start", name)
        wait(lambda: len(h.replies(name)) >= 3, what="the guest's client to get replies")
        assert echo.peers[0][0] == addr  # its connection leaves from its own address
        pid = guest_pid(h, name)
        sys_mounts = [ln.split()[4] for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
        if not userns_host:
            # Its /sys is the host's sysfs alone: none of the host's mounts below it (tracefs,
            # the host's cgroup hierarchies) is held, hidden, in the guest.
            assert "/sys/kernel/tracing" not in sys_mounts
            assert sys_mounts.count("/sys/fs/cgroup") == 1, sys_mounts
        assert _host_has(addr)
        h("checkpoint", name)
        assert not _host_has(addr)  # berth added it for the guest: gone with it
        stopped_at, n = h.count(name), len(h.replies(name))
        h("restore", name)
        assert _host_has(addr)
        wait(lambda: h.count(name) > stopped_at + 3, what="the counter to continue")
        if userns_host:
            wait(lambda: len(h.replies(name)) > n + 3, what="replies on the restored connection")
            assert len(echo.peers) == 1  # the same connection, not a new one
        else:
            # From its own user namespace on the host's network: the connection came back
            # closed (the peer learns it at its next send); a new one still leaves from the
            # guest's address (its filter is back).
            out = h("exec", name, "--", "sh", "-c", f"echo again | nc -w 2 127.0.0.1 {echo.port}")
            assert out.stdout.strip() == "again"
            assert echo.peers[-1][0] == addr
        if userns_host:
            out = h("exec", name, "--", "sh", "-c", f"echo again | nc -w 2 127.0.0.1 {echo.port}")
            assert out.stdout.strip() == "again" and echo.peers[-1][0] == addr
    finally:
        echo.close()
        h("destroy", "--force", name, check=False)
        h("gc", check=False)
    assert not _host_has(addr)
    assert not _links(unique[:8])
    # CRIU's lock of the guest's connection on the host's network (an nftables table) is gone
    # too, also when the connection came back closed (CRIU leaves it then: berth removes it).
    assert _criu_tables() <= criu_tables


def _criu_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables", "inet"], capture_output=True, text=True).stdout
    return {
        ln.split()[-1] for ln in out.splitlines() if ln.split()[-1:] and ln.split()[-1].startswith("CRIU-")
    }


def test_checkpoint_restore_ip_mode_guest(host_a: Host, unique: str) -> None:
    """An ip: mode guest (--userns host): its address is back on the host and its filter on its
    new cgroup before its processes are, and its TCP connection survives."""
    _ip_guest_round_trip(host_a, unique, userns_host=True)


def test_checkpoint_restore_ip_mode_default_guest(default_host: Host, unique: str) -> None:
    """An ip: mode guest in its own user namespace: restored with its address and filter; its
    established connection comes back closed (documented), new ones work."""
    _ip_guest_round_trip(default_host, unique, userns_host=False)
