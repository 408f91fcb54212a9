"""Network links for the lab's peer guests, and a runner that uses such a guest as a command prefix.

``tap()`` makes a tap device for UML (its ``vec0``, the vector driver's tap transport);
``netns()`` a network namespace with a veth pair to the host for gVisor (``runsc
--network=sandbox`` takes the namespace's veth). Each link has a private /30 that overlaps no
host route, names from ``names.ifname`` (the session's prefix), and is removed on leaving the
``with`` block, also on failure. Traffic on them goes only between the host and the guest.

``prefix(link, ...)`` is an argv prefix that runs the rest of its argv inside a fresh guest on that
link and relays the guest's output and exit status (``python -c ... uml|gvisor ... -- ARGV``),
so bench/net.py drives these guests like ``berth exec``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.lab import names
from bench.lab.errors import LabError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Link:
    """One host<->guest link: the host's device and address, the guest's address (same /30)."""

    kind: str  # "uml" (a tap) or "gvisor" (a netns with a veth)
    dev: str  # the host's end: the tap, or the host's veth
    host_ip: str
    guest_ip: str
    prefixlen: int = 30
    netns: str = ""  # gvisor: the namespace, and its end of the veth
    guest_dev: str = ""

    @property
    def guest_cidr(self) -> str:
        return f"{self.guest_ip}/{self.prefixlen}"


def _ip(*args: str, check: bool = True) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination in the host's routing tables (all tables)."""
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True
    ).stdout
    nets = []
    for line in out.splitlines():
        words = line.split()
        dst = words[1] if words[0] in ("broadcast", "local", "unreachable", "blackhole") else words[0]
        with contextlib.suppress(ValueError):
            if dst != "default":
                nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def free_p30(taken: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A random 10.x.y.z/30 overlapping none of ``taken``."""
    for _ in range(500):
        n = secrets.randbits(22)  # 10.0.0.0/8 has 2**22 /30s
        net = ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.0.0.0")) + 4 * n, 30))
        if not any(t.overlaps(net) for t in taken):
            return net
    raise LabError("no free 10.x.y.z/30 for a lab link")


@contextlib.contextmanager
def tap() -> Iterator[Link]:
    """A tap with the host's address of a free /30; UML's vec0 gets the other one."""
    net = free_p30(host_networks())
    host, guest = (str(a) for a in net.hosts())
    name = names.ifname("tap")
    try:
        _ip("tuntap", "add", "dev", name, "mode", "tap")
        _ip("addr", "add", f"{host}/30", "dev", name)
        _ip("link", "set", name, "up")
        yield Link("uml", name, host, guest)
    finally:
        _ip("link", "del", name, check=False)


@contextlib.contextmanager
def netns() -> Iterator[Link]:
    """A netns with a veth to the host, both ends addressed in a free /30 and up."""
    net = free_p30(host_networks())
    host, guest = (str(a) for a in net.hosts())
    ns, hdev, gdev = names.ifname("ns"), names.ifname("veh"), names.ifname("veg")
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", hdev, "type", "veth", "peer", "name", gdev, "netns", ns)
        _ip("addr", "add", f"{host}/30", "dev", hdev)
        _ip("link", "set", hdev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{guest}/30", "dev", gdev)
        _ip("-n", ns, "link", "set", gdev, "up")
        yield Link("gvisor", hdev, host, guest, netns=ns, guest_dev=gdev)
    finally:
        _ip("netns", "del", ns, check=False)  # takes its veth end, and so the pair, with it
        _ip("link", "del", hdev, check=False)


def prefix(link: Link, *, binds: Sequence[tuple[str, str]] = (), timeout: float = 60.0) -> list[str]:
    """An argv prefix: what follows it runs in a fresh guest of ``link.kind`` on ``link``."""
    code = (
        f"import sys; sys.path[:0] = [{str(REPO)!r}]; from bench.lab.guestnet import main; sys.exit(main())"
    )
    argv = [sys.executable, "-c", code, link.kind, "--dev", link.dev, "--addr", link.guest_cidr]
    if link.netns:
        argv += ["--netns", link.netns, "--guest-dev", link.guest_dev]
    for src, dst in binds:
        argv += ["--bind", f"{src}:{dst}"]
    return [*argv, "--timeout", str(timeout), "--"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command after ``--`` in a guest; its output on stdout, its exit status as ours."""
    p = argparse.ArgumentParser(prog="guestnet")
    p.add_argument("kind", choices=("uml", "gvisor"))
    p.add_argument("--dev", required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--netns", default="")
    p.add_argument("--guest-dev", default="")
    p.add_argument("--bind", action="append", default=[])
    p.add_argument("--timeout", type=float, default=60.0)
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args or args.index("--") == len(args) - 1:
        p.error("command: missing (after --)")
    cut = args.index("--")
    a, cmd = p.parse_args(args[:cut]), args[cut + 1 :]
    binds = [tuple(b.split(":", 1)) for b in a.bind]
    try:
        if a.kind == "uml":
            from bench.lab import uml

            c = uml.run(
                shlex.join(cmd),
                timeout=a.timeout,
                boot_timeout=min(30.0, a.timeout),
                nic=(a.dev, a.addr),
                binds=binds,
            )
            status, output = c.exit_status, c.output
        else:
            from bench.lab import gvisor

            # runsc moved the address into the last sandbox: give it back to the veth.
            _ip("-n", a.netns, "addr", "replace", a.addr, "dev", a.guest_dev)
            r = gvisor.run("", argv=cmd, binds=binds, netns=a.netns, timeout=a.timeout)
            status, output = r.exit_status, r.output
            if status == 128 and not output:
                print(f"guestnet: gvisor: {r.console_log.strip()[-300:]}", file=sys.stderr)
    except LabError as e:
        print(f"guestnet: {a.kind}: {e}", file=sys.stderr)
        return 125
    sys.stdout.write(output)
    return status
