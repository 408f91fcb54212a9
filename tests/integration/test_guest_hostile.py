"""Hostile guests and crashes at awkward moments, as a checker would try them.

* files berth writes into a running guest (/etc/hosts, /etc/resolv.conf of bridge guests,
  rewritten whenever another bridge guest starts or stops) that the guest has replaced with a
  FIFO or a symlink out of it (test_guest_net's ``net`` fixture: the test's own bridge, nft table
  and subnet, cleaned up and checked for leaks at teardown);
* ``berth run --net bridge`` SIGKILLed, then one ``berth gc``: nothing may be left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_guest_net import NetGuests, net  # noqa: F401  (the fixture)
from test_guests import Guests, berth_cmd, cgroup_dirs, guests  # noqa: F401  (the fixture)

from helpers import cgroup_roots, free_subnet


def _unblock(path: Path) -> None:
    """Open a FIFO for reading without blocking: a writer stuck opening it goes on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "etc-symlink", "bind"])
def test_etc_hosts_replaced_by_the_guest(net: NetGuests, tmp_path: Path, kind: str) -> None:  # noqa: F811
    """Guest A makes its /etc/hosts a FIFO (berth's write blocked forever, and every later bridge
    guest's start with it), a symlink to a host file, or its /etc a symlink to a host directory,
    or (as a guest with CAP_SYS_ADMIN could: done here from the host, in its mount namespace)
    binds another file over its /etc/hosts — any file it sees, a sysctl's too, would be written
    by berth as the host's root.  Starting guest B must neither hang nor write anywhere but into
    the guests' own root mounts; A keeps what it made."""
    g = net
    a, b = g.name("a"), g.name("b")
    host = tmp_path / "host"
    host.mkdir(mode=0o755)
    sentinel = host / "sentinel"
    sentinel.write_text("host file\n")
    make = {
        "fifo": "rm /etc/hosts && mkfifo /etc/hosts",
        "symlink": f"rm /etc/hosts && ln -s {sentinel} /etc/hosts",
        "etc-symlink": f"mv /etc /etc.old && ln -s {host} /etc",
        "bind": "mkdir -p /mnt && mount -t tmpfs bindtest /mnt && echo guest file > /mnt/f"
        " && mount --bind /mnt/f /etc/hosts",
    }[kind]
    g("create", a, "--cmd", "sleep 1000")
    g("create", b, "--cmd", "sleep 1000")
    g("start", a)
    pid = g.info(a)["pid"]
    if kind == "bind":
        subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "/bin/sh", "-c", make], check=True)
    else:
        g("exec", a, "--", "sh", "-c", make)
    hosts_a = Path(f"/proc/{pid}/root/etc/hosts")
    try:
        r = g("start", b, check=False, timeout=20)
    finally:
        if kind == "fifo":
            _unblock(hosts_a)
    assert r.returncode == 0, r.stderr
    assert sentinel.read_text() == "host file\n"
    assert sorted(os.listdir(host)) == ["sentinel"]
    if kind == "fifo":
        assert g("exec", a, "--", "test", "-p", "/etc/hosts", check=False).returncode == 0
    if kind == "bind":
        assert Path(f"/proc/{pid}/root/mnt/f").read_text() == "guest file\n"
    hosts_b = g("exec", b, "--", "cat", "/etc/hosts").stdout
    assert a in hosts_b and b in hosts_b, hosts_b
    g("stop", b, "--timeout", "2")
    g("stop", a, "--timeout", "2")


# -- berth run --net bridge killed: one berth gc takes everything down ----------------------------


def _named(prefix: str) -> list[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return [ln for text in (links, tables) for ln in text.splitlines() if prefix in ln]


@pytest.fixture
def run_net_env(berth_env: dict[str, str], prefix: str):
    """berth_env with the session's veth prefix and a bridge, nft table and subnet of this file's."""
    if not shutil.which("nft"):
        pytest.skip("nft is not installed")
    env = dict(
        berth_env,
        BERTH_NET_PREFIX=prefix,
        BERTH_BRIDGE=f"{prefix}hbr",
        BERTH_NFT_TABLE=f"{prefix}h",
        BERTH_SUBNET=free_subnet(),
    )
    yield env
    from berth import net as berth_net

    for d in cgroup_dirs(env["BERTH_CGROUP_PARENT"]):  # an init left waiting (if gc missed it)
        for pid in (d / "cgroup.procs").read_text().split() if (d / "cgroup.procs").exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any((d / "cgroup.procs").read_text().strip() for d in cgroup_dirs(env["BERTH_CGROUP_PARENT"])):
        assert time.monotonic() < deadline, "the guest's processes did not die"
        time.sleep(0.05)
    subprocess.run([*berth_cmd(), "gc"], env=env, capture_output=True, check=False)
    berth_net.gc(env["BERTH_ROOT"], berth_net.parse("bridge", env=env))


def _states(env: dict[str, str]) -> dict[str, str]:
    """The status in each of the state root's state.json files, by container id."""
    root = Path(env["BERTH_RUN"])
    out = {}
    for cid in os.listdir(root) if root.is_dir() else []:
        try:
            out[cid] = json.loads((root / cid / "state.json").read_text())["status"]
        except (OSError, ValueError, KeyError):
            out[cid] = ""
    return out


def _gc_once_leaves_nothing(env: dict[str, str], prefix: str) -> None:
    r = subprocess.run([*berth_cmd(), "gc"], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    # at once, no second gc and no waiting: a checker runs gc and looks
    assert _named(prefix) == [], (r.stdout, _named(prefix))
    assert [s for s in os.listdir(env["BERTH_RUN"]) if not s.startswith(".")] == [], r.stdout
    assert cgroup_dirs(env["BERTH_CGROUP_PARENT"]) == []


def test_run_bridge_killed_while_running(run_net_env, prefix, check_clean) -> None:
    """berth run (by then its C waiter) SIGKILLed: its guest's init dies by pdeathsig and is a
    zombie until the host's pid 1 reaps it; the gc right after must still take the network down
    (it took a zombie for a live guest and left the veth, bridge and nft table to a later gc)."""
    env = run_net_env
    mine = env["BERTH_NET_PREFIX"]
    p = subprocess.Popen(
        [*berth_cmd(), "run", "--net", "bridge", "--", "sleep", "30"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(lambda: "running" in _states(env).values(), "the guest to run")
        assert any(env["BERTH_BRIDGE"] in ln for ln in _named(mine))
    finally:
        p.kill()
        p.wait()
    _gc_once_leaves_nothing(env, mine)
    check_clean()


def test_run_bridge_killed_while_plugging_the_network(run_net_env, prefix, check_clean) -> None:
    """berth run SIGKILLed between its container's create and start (while it plugs in the bridge
    network, ~100-300 ms): its init waits on exec.fifo for a start that never comes; gc keeps an
    OCI runtime's live "created" container, but takes one whose berth run (recorded as its
    owner) is gone."""
    env = run_net_env
    mine = env["BERTH_NET_PREFIX"]
    p = subprocess.Popen(
        [*berth_cmd(), "run", "--net", "bridge", "--", "sleep", "30"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(
            lambda: "created" in _states(env).values() or p.poll() is not None,
            "the guest to be created",
            0.001,
        )
    finally:
        p.kill()
        p.wait()
    if "created" not in _states(env).values():
        pytest.skip("the kill missed the window between create and start")
    _gc_once_leaves_nothing(env, mine)
    check_clean()


def _wait(cond, what: str, step: float = 0.02, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


# -- hostile input: one line naming the field, 125, nothing left ---------------------------------


def test_run_hostname_too_long(berth, minimal_rootfs, check_clean) -> None:
    """sethostname(2) takes 64 bytes: a longer --hostname was the init's bare '[Errno 22]'."""
    r = berth("--rootfs", str(minimal_rootfs), "--hostname", "h" * 65, "--", "/probe", "hostname")
    assert r.returncode == 125, r
    assert r.error_line().startswith("berth: hostname: 65 bytes long: at most 64"), r
    check_clean()
    r = berth("--rootfs", str(minimal_rootfs), "--hostname", "h" * 64, "--", "/probe", "hostname")
    assert r.returncode == 0, r
    assert r.field("hostname") == "h" * 64


def test_create_and_config_hostname_too_long(guests: Guests) -> None:  # noqa: F811
    g = guests
    n = g.name("hn")
    r = g("create", n, "--hostname", "h" * 65, "--cmd", "true", check=False)
    assert r.returncode == 125, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "hostname: 65 bytes long" in r.stderr, r.stderr
    assert g.mine() == []
    g("create", n, "--cmd", "true")
    cfg = g.store / "guests" / n / "config.toml"
    cfg.write_text(cfg.read_text() + f'hostname = "{"h" * 70}"\n')
    r = g("start", n, check=False)
    assert r.returncode == 125, r.stderr
    assert r.stderr.strip() == f"berth: {cfg}: hostname: 70 bytes long: at most 64 (the kernel's limit)"


_USERNS = {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")]}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        # written as root into /proc/sys before the capabilities go: the host's core_pattern
        (
            {"linux": {"sysctl": {"kernel.core_pattern": "|/bin/false"}}},
            "linux.sysctl.kernel.core_pattern: not in a kernel namespace",
        ),
        ({"linux": {"sysctl": {"vm.overcommit_memory": "1"}}}, "linux.sysctl.vm.overcommit_memory: not in"),
        (
            {
                "linux": {
                    **_USERNS,
                    "uidMappings": [
                        {"containerID": 0, "hostID": 1100000, "size": 1000},
                        {"containerID": 500, "hostID": 1200000, "size": 10},
                    ],
                    "gidMappings": [{"containerID": 0, "hostID": 1100000, "size": 1000}],
                }
            },
            "linux.uidMappings[1].containerID: its range overlaps linux.uidMappings[0]'s",
        ),
        (
            {
                "linux": {
                    **_USERNS,
                    "uidMappings": [{"containerID": 0, "hostID": 4294967290, "size": 100}],
                    "gidMappings": [{"containerID": 0, "hostID": 1100000, "size": 1000}],
                }
            },
            "linux.uidMappings[0].size: hostID 4294967290 + size 100 runs past",
        ),
        ({"process": {"args": ["sleep", "1\x000"]}}, "process.args[1]: contains a NUL byte"),
        ({"process": {"env": ["A=\x00"]}}, "process.env[0]: contains a NUL byte"),
        ({"hostname": "h" * 65}, "hostname: 65 bytes long"),
    ],
    ids=["core_pattern", "vm", "uidmap-overlap", "uidmap-wraps", "args-nul", "env-nul", "hostname"],
)
def test_oci_hostile_config(tmp_path, busybox_rootfs, prefix, unique, change, needle) -> None:
    """berth-runtime create of a hostile config.json: 125 and one line naming the field, before
    anything exists (before: a host sysctl written, the kernel's bare EINVAL with status 1, an exec
    that failed after start)."""
    from berth.spec import runc_spec

    cfg = runc_spec()
    cfg["root"] = {"path": str(busybox_rootfs), "readonly": True}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["sleep", "100"]
    cfg["linux"]["cgroupsPath"] = f"/{prefix}/{unique}/c"
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(cfg))
    root = tmp_path / "state"
    runtime = Path(berth_cmd()[0]).with_name("berth-runtime")
    r = subprocess.run(
        [str(runtime), "--root", str(root), "create", "--bundle", str(bundle), unique],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 125, r.stderr
    assert r.stderr.strip() == f"berth-runtime: {needle}" or (
        len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(f"berth-runtime: {needle}")
    ), r.stderr
    assert not [n for n in os.listdir(root) if not n.startswith(".")] if root.exists() else True
    assert [p for top in cgroup_roots() for p in [top / prefix / unique] if p.exists()] == []


# -- berth checkpoint killed half-way: the guest runs on and is seen to --------------------------


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_checkpoint_killed_half_way_keeps_the_guest(guests: Guests) -> None:  # noqa: F811
    """``berth checkpoint`` SIGKILLed during its dump: the record said "checkpointing" (pid 0), so
    the guest, still running, was listed stopped and the next ``berth gc`` killed it.  Now the
    guest is either still running (and gc leaves it) or, if CRIU finished and ended it, stopped
    with nothing of it left: never "stopped" with its processes alive."""
    from berth.runtime import criu

    try:
        criu.find()
    except Exception as e:
        pytest.skip(str(e))
    g = guests
    n = g.name("ck")
    g("create", n, "--cmd", "sleep 1000")
    g("start", n)
    init = g.info(n)["pid"]
    home = g.store / "guests" / n
    p = subprocess.Popen([*berth_cmd(), "checkpoint", n], env=g.env, stdin=subprocess.DEVNULL)
    try:
        # the dump goes into a new directory beside the checkpoint's: kill once it is there
        _wait(lambda: any(e.startswith(".checkpoint.new-") for e in os.listdir(home)) or p.poll() is not None,
              "the dump to begin", 0.001)  # fmt: skip
    finally:
        p.kill()
        p.wait()
    if p.returncode != -9:
        pytest.skip("the checkpoint ended before the kill")
    time.sleep(1)  # a CRIU left behind finishes (and then ends the guest) or is gone
    state = g.info(n)["state"]
    if _alive(init):
        assert state == "running", f"the guest runs (init {init}) but berth says {state}"
        g("gc")
        assert _alive(init), "berth gc killed a running guest"
        assert g.info(n)["state"] == "running"
        g("exec", n, "--", "true")
    else:
        g.wait(lambda: g.info(n)["state"] == "stopped", what="the guest to be recorded stopped")
    g("destroy", "--force", n)
