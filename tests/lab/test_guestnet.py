"""The lab's guest networking (bench/lab/guestnet.py): a UML guest on a tap and a gVisor sandbox on
a netns+veth reach the host over TCP with the bench's static ping-pong program, the runner relays
output and exit status, bad input is a usage error, and no device, netns or guest is left."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.lab import guestnet, gvisor, names, uml
from bench.lab.errors import LabError

# This session's own names (as test_lab.py): a benchmark's devices beside the tests are not ours.
os.environ.setdefault("BERTH_LAB_PREFIX", f"berth-lab-t{secrets.token_hex(3)}")

PINGPONG_C = Path(__file__).resolve().parents[2] / "bench" / "net.py"


# ---------------------------------------------------------------- pure logic


def test_ifname_fits_and_carries_the_session():
    n = names.ifname("tap")
    assert len(n) <= 15
    assert n.startswith(names.ifname_prefix())
    assert names.ifname("tap") != n


def test_ifname_prefix_follows_the_lab_prefix(monkeypatch):
    monkeypatch.setenv("BERTH_LAB_PREFIX", "berth-lab-a")
    a = names.ifname_prefix()
    monkeypatch.setenv("BERTH_LAB_PREFIX", "berth-lab-b")
    assert names.ifname_prefix() != a


def test_free_p30_avoids_taken_networks():
    taken = [ipaddress.IPv4Network("10.0.0.0/9")]  # half of 10/8
    for _ in range(50):
        net = guestnet.free_p30(taken)
        assert net.prefixlen == 30
        assert net.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))
        assert not net.overlaps(taken[0])


def test_free_p30_fails_when_nothing_is_free():
    with pytest.raises(LabError, match="no free"):
        guestnet.free_p30([ipaddress.IPv4Network("10.0.0.0/8")])


def test_uml_init_configures_the_nic_and_quotes_binds():
    lines = uml._setup(("tap0", "10.9.9.2/30"), [("/tmp/a b", "/opt/x")]).splitlines()
    assert lines[0].startswith("$B ip addr add 10.9.9.2/30 dev vec0 && $B ip link set vec0 up")
    assert "mount --bind '/tmp/a b' $R/opt/x" in lines[1]
    assert "remount,bind,ro" in lines[1]
    assert uml._setup(None, ()) == ""


def test_runner_without_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        guestnet.main(["uml", "--dev", "x", "--addr", "10.1.1.2/30", "--"])
    assert e.value.code == 2
    assert "command" in capsys.readouterr().err


# ---------------------------------------------------------------- real guests

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="taps, netns and runsc need root")


def _state() -> dict[str, set[str]]:
    pre = names.ifname_prefix()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    devs = {ln.split(": ")[1].split("@")[0] for ln in links.splitlines() if ": " in ln}
    nss = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    procs = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if os.environ["BERTH_LAB_PREFIX"] in cmd:
                procs.add(f"{d.name} {cmd[:100]}")
    return {
        "devices": {n for n in devs if n.startswith(pre)},
        "netns": {n for n in nss if n.startswith(pre)},
        "processes": procs,
    }


@pytest.fixture
def clean() -> Iterator[None]:
    before = _state()
    yield
    after = _state()
    left = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    assert not left, f"guestnet left things behind: {left}"


@pytest.fixture(scope="module")
def pp(tmp_path_factory) -> Path:
    """The bench's static ping-pong program, in a directory to bind into the guests."""
    d = tmp_path_factory.mktemp("guestnet")
    src = PINGPONG_C.read_text().split('PINGPONG_C = r"""', 1)[1].split('"""', 1)[0]
    subprocess.run(
        ["gcc", "-O2", "-static", "-o", str(d / "pp"), "-x", "c", "-"], input=src, text=True, check=True
    )
    return d


def _echo_server(host: str) -> tuple[socket.socket, threading.Thread, list[int]]:
    """One connection on ``host``: echo every byte, count them."""
    s = socket.socket()
    s.bind((host, 0))
    s.listen(1)
    s.settimeout(60)
    got = [0]

    def serve() -> None:
        try:
            c, _ = s.accept()
        except OSError:
            return
        with c:
            while b := c.recv(1):
                got[0] += 1
                c.sendall(b)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return s, t, got


def _round_trips(link: guestnet.Link, pp: Path) -> None:
    srv, t, got = _echo_server(link.host_ip)
    try:
        port = srv.getsockname()[1]
        pre = guestnet.prefix(link, binds=[(str(pp), "/opt/lab-pp")], timeout=90)
        r = subprocess.run(
            [*pre, "/opt/lab-pp/pp", "c", link.host_ip, str(port), "50"],
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert r.returncode == 0, r.stderr
        assert float(r.stdout.split()[-1]) > 0  # mean round trip, microseconds
        t.join(10)
        assert got[0] == 50
    finally:
        srv.close()


@root_only
def test_uml_guest_reaches_host_over_its_tap(clean, pp):
    if why := uml.available():
        pytest.skip(why)
    with guestnet.tap() as link:
        pre = guestnet.prefix(link, timeout=90)
        r = subprocess.run(
            [*pre, "sh", "-c", "ip -o -4 addr show vec0; exit 4"], capture_output=True, text=True, timeout=150
        )
        assert r.returncode == 4, r.stderr
        assert link.guest_cidr in r.stdout
        _round_trips(link, pp)


@root_only
def test_gvisor_sandbox_reaches_host_over_its_veth(clean, pp):
    if why := gvisor.available():
        pytest.skip(why)
    try:
        gvisor.busybox_rootfs()
    except LabError as e:
        pytest.skip(f"no busybox rootfs for runsc: {e}")
    with guestnet.netns() as link:
        pre = guestnet.prefix(link, timeout=60)
        r = subprocess.run([*pre, "sh", "-c", "ip addr; exit 4"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 4, r.stderr
        assert f"inet {link.guest_cidr}" in r.stdout
        _round_trips(link, pp)  # a second sandbox on the same netns: the runner gives the address back
