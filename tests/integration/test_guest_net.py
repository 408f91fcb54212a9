"""Guests from ``berth create`` on the network: bridge by default, reachable by name, an address
kept across restarts, live bandwidth changes, nothing left after destroy (or a crash + gc), bad
input refused before anything exists.

All traffic stays between the test's own bridge and guests; the bridge, nft table and link names
carry the session prefix, the subnet is a free 10.x /24 (as in test_net.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time

import pytest
import test_guests
from test_guests import Guests, berth_cmd
from test_net import _links, _tables

from helpers import free_subnet, timing_matters

# Under TCG (make test-v2) every process runs some 30 times slower: starting two bridged guests
# took longer than a minute there.  Every wait of this file is stretched by this much then.
SLOW = 1 if timing_matters() else 5


class NetGuests(Guests):
    """test_guests' helper without its ``--net none`` default: ``create`` here means bridge."""

    def __call__(self, *args: str, check: bool = True, timeout: float = 60, env: dict | None = None):
        p = subprocess.run(
            [*berth_cmd(), *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout * SLOW,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"berth {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def wait(self, cond, timeout: float = 15, what: str = "condition"):
        return super().wait(cond, timeout * SLOW, what)


def _tc(prefix: str) -> list[str]:
    out = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if prefix in ln]


def _nothing_left(prefix: str) -> None:
    deadline = time.monotonic() + 5 * SLOW
    while (_links(prefix) or _tables(prefix) or _tc(prefix)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _links(prefix), _links(prefix)
    assert not _tables(prefix), _tables(prefix)
    assert not _tc(prefix), _tc(prefix)


@pytest.fixture
def net(berth_env: dict[str, str], prefix: str, unique: str, check_clean):
    berth_env.update(
        BERTH_NET_PREFIX=prefix,
        BERTH_BRIDGE=f"{prefix}br0",
        BERTH_NFT_TABLE=prefix,
        BERTH_SUBNET=free_subnet(),
    )
    g = NetGuests(berth_env, unique)
    point = test_guests.userns_ready(berth_env)
    yield g
    for name in g.mine():
        if not name.startswith("."):
            g("destroy", "--force", name, check=False)
    test_guests.kill_daemons(g.run_root)
    g("gc", check=False)
    g.wait(lambda: not test_guests.cgroup_dirs(berth_env["BERTH_CGROUP_PARENT"]), what="cgroups to go")
    test_guests.lxcfs_stop(point)
    check_clean()
    _nothing_left(prefix)


def _ip(g: NetGuests, name: str) -> str:
    ips = g.info(name)["ips"]
    assert len(ips) == 1, ips
    return ips[0]


def test_bridge_guests_by_name_tcp_and_restart_keeps_address(net: NetGuests, prefix: str) -> None:
    g = net
    a, b = g.name("a"), g.name("b")
    g("create", a, "--cmd", "sh -c 'while :; do echo pong-from-a | nc -l -p 7000; done'")  # default: bridge
    g("create", b, "--net", "bridge", "--cmd", "sleep 1000")
    cfg = (g.store / "guests" / a / "config.toml").read_text()
    assert 'net = "bridge"' in cfg and f'bridge = "{prefix}br0"' in cfg
    ip_a, ip_b = _ip(g, a), _ip(g, b)  # allocated at create
    subnet = ipaddress.IPv4Network(g.env["BERTH_SUBNET"])
    assert ipaddress.IPv4Address(ip_a) in subnet and ipaddress.IPv4Address(ip_b) in subnet and ip_a != ip_b
    g("start", a, b)
    listing = g("list").stdout
    assert ip_a in listing and ip_b in listing
    r = g("exec", b, "--", "ping", "-c", "1", "-W", "3", a)
    assert f"({ip_a})" in r.stdout
    g("exec", a, "--", "ping", "-c", "1", "-W", "3", b)
    got = g.wait(
        lambda: "pong-from-a"
        in g("exec", b, "--", "sh", "-c", f"nc -w 2 {a} 7000 </dev/null", check=False).stdout,
        what="TCP from b to a by name",
    )
    assert got
    # TCP the other way, and the guest's own view of its address.
    assert f"inet {ip_a}/" in g("exec", a, "--", "ip", "-4", "addr", "show", "eth0").stdout
    assert len(_links(f"{prefix}v")) == 2
    # Stop: the veths go (the bridge with the last guest); start: the same addresses come back.
    g("stop", "--timeout", "2", a, b)
    _nothing_left(prefix)
    g("start", b, a)
    assert _ip(g, a) == ip_a and _ip(g, b) == ip_b
    assert f"inet {ip_a}/" in g("exec", a, "--", "ip", "-4", "addr", "show", "eth0").stdout
    g("exec", b, "--", "ping", "-c", "1", "-W", "3", a)
    g("destroy", "--force", a)
    g("destroy", "--force", b)
    _nothing_left(prefix)
    leases = json.loads((g.store / "net" / f"{prefix}br0.json").read_text())
    assert a not in leases["leases"] and b not in leases["leases"]


def test_set_net_rate_changes_the_class_live(net: NetGuests, prefix: str) -> None:
    g = net
    n = g.name("s")
    g("create", n, "--net-rate", "100mbit", "--net-ceil", "200mbit", "--cmd", "sleep 1000")
    g("start", n)
    ifb = f"{prefix}br0ifb"

    def classes() -> str:
        return subprocess.run(["tc", "class", "show", "dev", ifb], capture_output=True, text=True).stdout

    assert "rate 100Mbit ceil 200Mbit" in classes()
    info = g("info", n).stdout
    assert "htb classes" in info and "rate 100Mbit/s  ceil 200Mbit/s" in info
    assert "applied live" in g("set", n, "--net-rate", "50mbit", "--net-ceil", "80mbit").stdout
    assert "rate 50Mbit ceil 80Mbit" in classes()
    cfg = (g.store / "guests" / n / "config.toml").read_text()
    assert 'net_rate = "50mbit"' in cfg and 'net_ceil = "80mbit"' in cfg
    r = g("set", n, "--net-rate", "90mbit", check=False)  # above the ceil: refused, nothing changed
    assert r.returncode == 125 and len(r.stderr.strip().splitlines()) == 1 and "net-ceil" in r.stderr
    assert "rate 50Mbit ceil 80Mbit" in classes()
    # Persisted: the next start builds the class from the config.
    g("stop", "--timeout", "1", n)
    _nothing_left(prefix)
    g("start", n)
    assert "rate 50Mbit ceil 80Mbit" in classes()
    g("destroy", "--force", n)
    _nothing_left(prefix)


def test_rates_of_2_32_bytes_per_second_and_more(net: NetGuests, prefix: str) -> None:
    """A 100 Gbit/s link and classes above 34.4 Gbit/s: HTB's 64-bit rate attributes (tc_htb_opt's
    32-bit bytes/s overflowed: the start failed with a struct error)."""
    g = net
    g.env["BERTH_NET_LINK_RATE"] = "100gbit"
    n = g.name("f")
    g("create", n, "--net-rate", "40gbit", "--net-ceil", "60gbit", "--cmd", "sleep 1000")
    g("start", n)
    ifb = f"{prefix}br0ifb"

    def classes() -> str:
        return subprocess.run(["tc", "class", "show", "dev", ifb], capture_output=True, text=True).stdout

    assert "root rate 100Gbit ceil 100Gbit" in classes()
    assert "rate 40Gbit ceil 60Gbit" in classes()
    assert "rate 40Gbit/s  ceil 60Gbit/s" in g("info", n).stdout  # read back from the kernel's dump
    g("set", n, "--net-rate", "1gbit", "--net-ceil", "50gbit")
    assert "rate 1Gbit ceil 50Gbit" in classes()
    g("destroy", "--force", n)
    _nothing_left(prefix)


def test_guest_exit_and_crash_leave_nothing(net: NetGuests, prefix: str) -> None:
    g = net
    short, crash = g.name("x"), g.name("y")
    # The short one ends on its own once told to (a fixed "sleep 1" can end before the second guest
    # has started where a start takes seconds, as under TCG: then there are never 2 veths).
    g("create", short, "--net-rate", "10mbit", "--cmd", "sh -c 'until [ -e /tmp/go ]; do sleep 0.1; done'")
    g("create", crash, "--cmd", "sleep 1000")
    g("start", short, crash)
    assert len(_links(f"{prefix}v")) == 2
    g("exec", short, "--", "touch", "/tmp/go")
    # guestd's exit handling unplugs it.
    g.wait(lambda: len(_links(f"{prefix}v")) == 1, timeout=20, what="the exited guest's veth to go")
    # The supervisor and the guest die with SIGKILL: berth gc removes the network.
    pid = g.record(crash)["pid"]
    test_guests.kill_daemons(g.run_root)
    os.kill(pid, signal.SIGKILL)
    g.wait(lambda: not test_guests._pid_alive(pid), what="the guest to die")
    assert _links(prefix)  # nobody cleaned up yet
    out = g("gc").stdout
    assert crash in out
    _nothing_left(prefix)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--net", "bogus"], "net: unknown mode 'bogus'"),
        (["--ip", "192.0.2.77"], "ip: 192.0.2.77 is outside the subnet"),
        (["--net-rate", "fast"], "net-rate:"),
        (["--net-rate", "300mbit", "--net-ceil", "100mbit"], "net-ceil:"),
        (["-p", "80"], "publish:"),
        (["--net", "none", "--net-isolate"], "net-isolate: needs --net bridge"),
        (["--net-share", "0"], "net-share:"),
    ],
)
def test_bad_input_one_line_nothing_created(net: NetGuests, prefix: str, args: list[str], field: str) -> None:
    n = net.name("bad")
    r = net("create", n, *args, "--cmd", "true", check=False)
    assert r.returncode == 125, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], r.stderr
    assert net.mine() == []
    assert (
        not (net.store / "net" / f"{prefix}br0.json").exists()
        or n not in (net.store / "net" / f"{prefix}br0.json").read_text()
    )
    _nothing_left(prefix)


def test_taken_address_refused_at_create(net: NetGuests, prefix: str) -> None:
    g = net
    ip = str(ipaddress.IPv4Network(g.env["BERTH_SUBNET"])[20])
    g("create", g.name("p"), "--ip", ip, "--cmd", "sleep 1000")
    r = g("create", g.name("q"), "--ip", ip, "--cmd", "sleep 1000", check=False)
    assert r.returncode == 125 and f"ip: {ip} is taken" in r.stderr.strip(), r.stderr
    assert g.mine() == [g.name("p")]
