"""berth metrics: Prometheus metrics of real guests (cgroup accounting, the veth's counters), one
scrape and served over HTTP on loopback."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from test_guest_net import NetGuests, net  # noqa: F401 - the fixture
from test_guests import berth_cmd

from berth.cli.metrics import MAX_CONNECTIONS


def _samples(text: str) -> dict[str, dict[str, float]]:
    """{sample name: {guest: value}}."""
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[s.labels.get("guest", "")] = s.value
    return out


def test_metrics_of_running_and_stopped_guests(net: NetGuests) -> None:  # noqa: F811
    g = net
    a, b = g.name("a"), g.name("b")
    g("create", a, "--memory", "64M", "--pids-limit", "50", "--cmd", "sleep 1000")
    g("create", b, "--net", "none", "--cmd", "sleep 1000")
    g("start", a)
    gateway = str(next(ipaddress.IPv4Network(g.env["BERTH_SUBNET"]).hosts()))
    g("exec", a, "--", "ping", "-c", "3", "-i", "0.2", "-W", "3", gateway)
    got = _samples(g("metrics").stdout)
    assert got["berth_guest_up"] == {a: 1, b: 0}
    assert got["berth_memory_limit_bytes"][a] == 64 << 20
    assert got["berth_tasks_limit"][a] == 50
    assert got["berth_tasks"][a] >= 1
    assert got["berth_cpu_seconds_total"][a] > 0
    assert got["berth_memory_usage_bytes"][a] > 0
    assert got["berth_network_transmit_packets_total"][a] >= 3  # the pings (and ARP)
    assert got["berth_network_receive_packets_total"][a] >= 3  # their replies
    assert b not in got["berth_cpu_seconds_total"]
    before = got["berth_cpu_seconds_total"][a]
    g("exec", a, "--", "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
    assert _samples(g("metrics").stdout)["berth_cpu_seconds_total"][a] > before  # read at each scrape


def test_metrics_served_over_http_until_sigterm(net: NetGuests) -> None:  # noqa: F811
    g = net
    a = g.name("a")
    g("create", a, "--net", "none", "--cmd", "sleep 1000")
    g("start", a)
    p = subprocess.Popen(
        [*berth_cmd(), "metrics", "--listen", "127.0.0.1:0"],
        env=g.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stdout.readline() if p.stdout else ""
        assert line.startswith("listening on 127.0.0.1:"), (line, p.poll())
        port = int(line.rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            got = _samples(r.read().decode())
        assert got["berth_guest_up"][a] == 1
        assert got["berth_cpu_seconds_total"][a] > 0
        # Silent clients hold at most MAX_CONNECTIONS threads, and do not hold up SIGTERM.
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_CONNECTIONS + 8)]
        try:
            time.sleep(0.5)
            assert len(os.listdir(f"/proc/{p.pid}/task")) <= MAX_CONNECTIONS + 2
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=5) == 0
        finally:
            for c in idle:
                c.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_metrics_bad_listen_is_one_line(net: NetGuests) -> None:  # noqa: F811
    for bad in ("127.0.0.1:70000", "nohost:80", "127.0.0.1", ":9478"):
        r = net("metrics", "--listen", bad, check=False)
        assert r.returncode == 125, r
        assert r.stderr.count("\n") == 1 and "--listen" in r.stderr, r.stderr
    # a port already taken: one line, no traceback
    with subprocess.Popen(
        [*berth_cmd(), "metrics", "--listen", "127.0.0.1:0"], env=net.env, stdout=subprocess.PIPE, text=True
    ) as p:
        try:
            port = int((p.stdout.readline() if p.stdout else "").rsplit(":", 1)[1])
            r = net("metrics", "--listen", f"127.0.0.1:{port}", check=False)
            assert r.returncode == 125 and r.stderr.count("\n") == 1 and "cannot listen" in r.stderr, r.stderr
        finally:
            p.terminate()
            p.wait(timeout=10)
