"""Unprivileged guests (``berth run --userns``): root inside is a range of host ids outside.

Asserted from inside the guest (busybox, the static probe) and on the host (the overlay
upper layer, the allocation file).  Every run goes through the ``berth`` or ``background``
fixture, which checks that no state dir, cgroup, mount or process is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from berth.runtime import userns

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run_isolation import DENIED, probe  # noqa: E402


@pytest.fixture(autouse=True)
def _searchable_state_root(tmp_path):
    """The guest's mapped root must reach its state dir (berth's /run/berth is 0711); pytest's
    tmp dirs are 0700: open them for search (not reading) up to /tmp."""
    d = tmp_path
    while str(d) not in ("/", "/tmp"):
        os.chmod(d, os.stat(d).st_mode | 0o011)
        d = d.parent


def uid_map(text: str) -> tuple[int, int, int]:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1]), int(parts[2])
    raise AssertionError(f"no uid_map line in {text!r}")


def test_uid_map_and_upper_owner(background, berth_env, unique):
    """uid 0's new file lands in the overlay upper owned by the guest's first mapped id."""
    g = background(
        "--userns", "auto", "--name", unique, "--",
        "sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; touch /made-inside; mkdir /d; "
        "stat -c 'tpl %u' /bin/busybox; id -u; echo ready; exec sleep 60",
    )  # fmt: skip
    try:
        g.wait_for("^ready")
        inside, outside, size = uid_map(g.out.decode())
        assert (inside, size) == (0, userns.BLOCK)
        assert outside >= 100000
        assert "tpl 0" in g.out.decode()  # the template is idmapped: root's files are root's inside
        held = userns.allocations(berth_env["BERTH_ROOT"])
        assert (outside, size) in held.values()
        upper = Path(berth_env["BERTH_RUN"]) / unique / "upper"
        st = os.stat(upper / "made-inside")
        assert (st.st_uid, st.st_gid) == (outside, outside)
        assert os.stat(upper / "d").st_uid == outside
        # The shared template itself is untouched: still host root's.
        tpl = Path(berth_env["BERTH_ROOT"]) / "templates" / "busybox" / "rootfs" / "bin" / "busybox"
        assert os.stat(tpl).st_uid == 0
        g.proc.send_signal(signal.SIGTERM)
        res = g.finish()
        assert res.returncode in (0, 143), res
    finally:
        g.kill()
    assert (outside, size) not in userns.allocations(berth_env["BERTH_ROOT"]).values()  # freed


def test_template_writable_and_removable(berth):
    """Copy-up, whiteouts and opaque dirs work from a user namespace (overlay userxattr)."""
    res = berth(
        "--userns", "auto", "--", "sh", "-c",
        "echo x >> /etc/passwd && rm -rf /etc/init.d /bin/ls && mkdir -p /etc/init.d && "
        "ls /etc/init.d | wc -l && test ! -e /bin/ls && echo done",
    )  # fmt: skip
    assert res.returncode == 0, res
    assert res.lines()[-2:] == ["0", "done"], res


def test_two_guests_never_share_ids(background):
    gs = [
        background("--userns", "auto", "--", "sh", "-c", "cat /proc/self/uid_map; echo ready; exec sleep 60")
        for _ in range(2)
    ]
    try:
        maps = []
        for g in gs:
            g.wait_for("^ready")
            maps.append(uid_map(g.out.decode()))
        (_, a, n), (_, b, m) = maps
        assert not userns.overlaps((a, n), (b, m)), maps
    finally:
        for g in gs:
            g.proc.send_signal(signal.SIGTERM)
        for g in gs:
            g.finish()


def test_explicit_range(berth):
    res = berth("--userns", "3000000:65536", "--", "cat", "/proc/self/uid_map")
    assert res.returncode == 0, res
    assert uid_map(res.stdout) == (0, 3000000, 65536)


def test_host_is_default(berth):
    res = berth("--", "cat", "/proc/self/uid_map")
    assert uid_map(res.stdout) == (0, 0, 4294967295)


SCRIPT = r"""
import os, sys
from berth.cli import run as cli
from berth.runtime import run as runner, userns
store, state, cg, secret, mode = sys.argv[1:6]
o = cli.parse(["--", "sh", "-c", "id -u; cat /mnt/secret && echo READ; ls -ln /mnt/secret"])
spec, _rootfs, overlay = cli.build(o, "g" + os.urandom(4).hex(), store)
spec["mounts"].append({"destination": "/mnt/secret", "type": "bind", "source": secret, "options": ["bind"]})
if mode == "userns":
    userns.apply(spec, (3100000, 65536))
sys.exit(runner.run("g" + os.urandom(4).hex(), spec, state_root=state, cgroup_parent=cg,
                    overlay=overlay, use_init=True, interactive=False))
"""


@pytest.mark.parametrize("mode", ["host", "userns"])
def test_host_root_file_unreadable_through_bind(berth_env, tmp_path, check_clean, mode):
    """A host file only host root may read, bound into the guest: root inside cannot read it."""
    secret = tmp_path / "secret"
    secret.write_text("host-only-secret\n")
    os.chmod(secret, 0o600)
    os.chmod(tmp_path, 0o755)
    script = tmp_path / "lib_run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), str(script), berth_env["BERTH_ROOT"], berth_env["BERTH_RUN"],
         berth_env["BERTH_CGROUP_PARENT"], str(secret), mode],
        env=berth_env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    check_clean()
    if mode == "host":  # the control: the same bind without a user namespace is readable
        assert "host-only-secret" in proc.stdout, proc
        return
    assert "host-only-secret" not in proc.stdout, proc
    assert "READ" not in proc.stdout
    assert "Permission denied" in proc.stderr, proc
    assert " 65534 " in proc.stdout  # owned by an id outside the guest's map: nobody


# -- the foundation's escape battery, in a user namespace ---------------------------------------


@pytest.fixture
def host_marker(unique):
    d = Path(f"/{unique}-escape")
    d.mkdir()
    (d / "marker").write_text("host-secret-userns\n")
    try:
        yield d / "marker", "host-secret-userns"
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def test_chroot_escape_fails_userns(berth, any_rootfs, host_marker):
    marker, secret = host_marker
    res = berth(*probe(any_rootfs, "chroot-escape", str(marker), opts=("--userns", "auto")))
    assert secret not in res.stdout, res
    assert "REACHED" not in res.stdout
    for how in ("direct", "proc1root", "procselfroot", "chroot", "fchdir"):
        assert f"escape {how}: not reached" in res.stdout, res
    assert res.returncode == 0, res


# Refused earlier in a user namespace: the file belongs to an id outside the guest's map.
USERNS_DENIED = {"core-pattern": ["open /proc/sys/kernel/core_pattern: denied EACCES"]}


@pytest.mark.parametrize("check", sorted(DENIED))
def test_denied_userns(berth, any_rootfs, check):
    res = berth(*probe(any_rootfs, check, opts=("--userns", "auto")))
    assert "ALLOWED" not in res.stdout, res
    for expected in USERNS_DENIED.get(check, DENIED[check]):
        assert expected in res.stdout, res
    assert res.returncode == 0, res


# -- bad input: one line, exit 125, nothing created ---------------------------------------------


def _nothing_held(env):
    path = Path(env["BERTH_ROOT"]) / "userns" / "allocations.json"
    if path.exists():
        assert not [
            k for k in json.loads(path.read_text())["allocations"] if k.startswith("run:")
        ], path.read_text()


@pytest.mark.parametrize(
    ("arg", "msg"),
    [("1000:65536", "holds the host"), ("1:10", "holds the host user"), ("nope", "expected auto, host"),
     ("0:65536", "start above 0")],
)  # fmt: skip
def test_bad_range(berth, berth_env, arg, msg):
    res = berth("--userns", arg, "--", "true")
    assert res.returncode == 125, res
    assert msg in res.error_line()
    _nothing_held(berth_env)


def test_range_of_another_guest(background, berth, berth_env):
    g = background("--userns", "3200000:65536", "--", "sh", "-c", "echo ready; exec sleep 60")
    try:
        g.wait_for("^ready")
        res = berth("--userns", "3200100:10", "--", "true", check_clean=False)  # the first still runs
        assert res.returncode == 125, res
        assert "overlaps guest" in res.error_line()
    finally:
        g.proc.send_signal(signal.SIGTERM)
        g.finish()


def test_pool_exhausted(berth, berth_env):
    berth_env["BERTH_USERNS_POOL"] = "4000000:1000"  # smaller than one block
    res = berth("--userns", "auto", "--", "true")
    assert res.returncode == 125, res
    assert "exhausted" in res.error_line()
    _nothing_held(berth_env)


def test_idmap_unsupported(berth, berth_env, tmp_path, minimal_rootfs):
    """ramfs cannot be idmapped: refused in one line, nothing left."""
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], check=True)
    try:
        (mnt / "probe").write_bytes((minimal_rootfs / "probe").read_bytes())
        os.chmod(mnt / "probe", 0o755)
        res = berth("--userns", "auto", "--rootfs", str(mnt), "--", "/probe", "true")
        assert res.returncode == 125, res
        assert "cannot idmap" in res.error_line()
        _nothing_held(berth_env)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
