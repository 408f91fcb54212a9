"""Guests on the host's network stack (``--net host``, ``ip:``) cannot reach the host's abstract
unix sockets: abstract socket names are per network namespace, so without berth's Landlock
scope (berth.runtime.scope) such a guest could connect to any host daemon listening on one
(``@/tmp/.X11-unix/X0``, a D-Bus bus, containerd's old shim socket: CVE-2020-15257).

The host side is this test: it listens on an abstract socket named with the session prefix,
the guest's probe tries to connect.  Each refusal is checked against the same guest with
``--security-opt landlock=unconfined``, which reaches the socket: the EPERM is the scope's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_guests import Guests, guests  # noqa: F401  (the fixture)
from test_net import net_env  # noqa: F401  (the fixture)
from test_oci_lifecycle import Runtime, rt  # noqa: F401  (the fixture)


@pytest.fixture(autouse=True)
def _needs_scopes() -> None:
    from berth.linux import landlock

    if landlock.abi_version() < landlock.SCOPES_ABI:
        pytest.skip(f"this kernel's Landlock ABI is {landlock.abi_version()}: scopes need 6 (Linux 6.12)")


@contextlib.contextmanager
def host_listens(name: str) -> Iterator[socket.socket]:
    """The host (this test) listening on the abstract socket ``@name``."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind("\0" + name)
        srv.listen(16)
        yield srv
    finally:
        srv.close()


def _net(mode: str, env: dict[str, str]) -> str:
    return "host" if mode == "host" else f"ip:{ipaddress.IPv4Network(env['BERTH_SUBNET'])[23]}"


@pytest.mark.parametrize("mode", ["host", "ip"])
def test_host_stack_guest_cannot_reach_host_abstract_socket(
    berth,
    busybox_rootfs: Path,
    net_env: dict[str, str],  # noqa: F811
    unique: str,
    mode: str,
) -> None:
    name = f"h10a-{unique}-{mode}"
    net = _net(mode, net_env)
    with host_listens(name):
        res = berth("--rootfs", str(busybox_rootfs), "--net", net, "--", "/probe", "abstract-connect", name)
        assert res.field("abstract-connect") == "denied EPERM (1)", res
        # The same guest without the scope reaches it (what every such guest could before).
        loose = berth("--rootfs", str(busybox_rootfs), "--net", net, "--security-opt", "landlock=unconfined",
                      "--", "/probe", "abstract-connect", name)  # fmt: skip
        assert loose.field("abstract-connect") == "ALLOWED", loose


def test_guest_processes_reach_each_others_abstract_sockets(
    berth,
    busybox_rootfs: Path,
    net_env: dict[str, str],  # noqa: F811
    unique: str,
) -> None:
    """Within the guest's domain abstract sockets work as ever: one guest process listens, a
    later one (another program, forked by the guest's shell) connects."""
    name = f"h10a-{unique}-own"
    script = f"/probe abstract-serve {name} & s=$!; /probe abstract-connect {name}; kill $s"
    res = berth("--rootfs", str(busybox_rootfs), "--net", "host", "--", "sh", "-c", script)
    assert res.field("abstract-serve") == "listening", res
    assert res.field("abstract-connect") == "ALLOWED", res


def _exec(g: Guests, *args: str) -> subprocess.CompletedProcess:
    return g("exec", *args, check=False, timeout=30)


def _install_probe(g: Guests, n: str, probe_bin: Path) -> None:
    dest = g.store / "guests" / n / "upper" / "probe"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(probe_bin.read_bytes())
    os.chmod(dest, 0o755)


def test_exec_into_host_net_guest_is_scoped_too(guests: Guests, probe_bin: Path, unique: str) -> None:  # noqa: F811
    """``berth exec`` gives its process the guest's scope, in a domain of its own (a Landlock
    domain cannot be joined): no host abstract socket, and none of the guest's own processes
    either (the documented limit), while the guest's processes reach theirs."""
    g = guests
    n = g.name("llx")
    own = f"h10a-{unique}-guest"
    g("create", n, "--net", "host", "--userns", "host", "--no-lxcfs",
      "--cmd", f"/probe abstract-serve {own} 100000")  # fmt: skip
    _install_probe(g, n, probe_bin)
    g("start", n)
    with host_listens(f"h10a-{unique}-host"):
        r = _exec(g, n, "--", "/probe", "abstract-connect", f"h10a-{unique}-host")
        assert r.returncode == 0 and "abstract-connect: denied EPERM (1)" in r.stdout, r
    g.wait(lambda: f"@{own}" in Path("/proc/net/unix").read_text(), what="the guest's abstract socket")
    r = _exec(g, n, "--", "/probe", "abstract-connect", own)
    assert "abstract-connect: denied EPERM (1)" in r.stdout, r  # a sibling domain
    r = _exec(g, n, "--", "sh", "-c", f"/probe abstract-connect {own}")
    assert "abstract-connect: denied EPERM (1)" in r.stdout, r
    # Landlock's ptrace rule, which every domain has: no ptrace access across sibling domains
    # (/proc/PID/environ of the guest's init), while the guest's own processes keep it.
    read_init = ("--", "sh", "-c", "cat /proc/1/environ >/dev/null && echo read || echo refused")
    r = _exec(g, n, *read_init)
    assert "refused" in r.stdout and "Permission denied" in r.stderr, r
    loose = g.name("llu")
    g("create", loose, "--net", "host", "--userns", "host", "--no-lxcfs", "--security-opt", "landlock=unconfined",
      "--cmd", "sleep 100000")  # fmt: skip
    g("start", loose)
    r = _exec(g, loose, *read_init)
    assert "read" in r.stdout, r  # the same without the scope: the refusal is Landlock's
    # The host itself (no domain) still reaches the guest's socket.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect("\0" + own)


def test_checkpoint_of_a_scoped_guest_is_refused(guests: Guests, unique: str) -> None:  # noqa: F811
    """CRIU cannot dump a scoped guest (its parasite's control socket is an abstract socket of
    CRIU's) nor give a restored one its domain back: berth refuses, one line, before CRIU runs;
    the guest runs on.  Unscoped (landlock=unconfined) the same guest checkpoints."""
    g = guests
    n = g.name("llc")
    g("create", n, "--net", "host", "--userns", "host", "--no-lxcfs", "--no-init", "--cmd", "sleep 100000")
    g("start", n)
    pid = g.info(n)["pid"]
    r = g("checkpoint", n, check=False)
    assert r.returncode == 125, r
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, r
    assert "Landlock scope" in line and "landlock=unconfined" in line, r
    assert g.info(n)["state"] == "running" and g.info(n)["pid"] == pid
    # berth migrate says so before it connects anywhere (nothing listens on that port)
    r = g("migrate", n, "--to", "127.0.0.1:9", check=False)
    assert r.returncode == 125 and len(r.stderr.strip().splitlines()) == 1, r
    assert "Landlock scope" in r.stderr, r
    assert g.info(n)["state"] == "running" and g.info(n)["pid"] == pid
    assert not [e for e in os.listdir(g.store / "guests" / n) if "checkpoint" in e], os.listdir(
        g.store / "guests" / n
    )


def test_restore_refuses_a_checkpoint_made_without_the_scope(guests: Guests, unique: str) -> None:  # noqa: F811
    """A checkpoint of the guest made unscoped (an older berth's) is not restored as a guest
    whose spec asks for the scope: CRIU would bring it back unscoped, silently."""
    g = guests
    n = g.name("llr")
    g("create", n, "--net", "host", "--userns", "host", "--no-lxcfs", "--no-init",
      "--security-opt", "landlock=unconfined", "--cmd", "sleep 100000")  # fmt: skip
    g("start", n)
    g("checkpoint", n)
    assert g.info(n)["state"] != "running"
    spec_file = g.store / "guests" / n / "spec.json"
    saved = json.loads(spec_file.read_text())
    saved["spec"].setdefault("annotations", {})["org.berth.landlock"] = "abstract-unix"
    spec_file.write_text(json.dumps(saved))
    r = g("restore", n, check=False)
    assert r.returncode == 125, r
    assert len(r.stderr.strip().splitlines()) == 1, r
    assert "made without the Landlock scope" in r.stderr, r
    assert g.info(n)["state"] != "running"


def test_oci_runtime_scope_is_opt_in(rt: Runtime, unique: str) -> None:  # noqa: F811
    """berth-runtime with a spec that has no network namespace: as runc, no scope by default; the
    annotation org.berth.landlock asks for it (exec'd processes get it too); a bad value is one
    line naming the annotation, and nothing is made."""
    name = f"h10a-{unique}-oci"
    rootfs_probe = rt.rootfs / "probe"
    assert rootfs_probe.exists()

    def cfg(args: list[str], annotation: str | None = None) -> dict:
        c = rt.config(args)
        c["linux"]["namespaces"] = [ns for ns in c["linux"]["namespaces"] if ns["type"] != "network"]
        if annotation is not None:
            c["annotations"] = {"org.berth.landlock": annotation}
        return c

    with host_listens(name):
        rt.write(cfg(["/probe", "abstract-connect", name]))
        p = rt("run", unique + "a", check=False, stdin=subprocess.DEVNULL)
        assert "abstract-connect: ALLOWED" in p.stdout, p
        rt.write(cfg(["/probe", "abstract-connect", name], "abstract-unix"))
        p = rt("run", unique + "b", check=False, stdin=subprocess.DEVNULL)
        assert "abstract-connect: denied EPERM (1)" in p.stdout, p
        # exec into a scoped container: scoped as well
        rt.write(cfg(["sleep", "100000"], "abstract-unix"))
        rt.create(unique + "c")
        rt("start", unique + "c")
        p = rt(
            "exec", unique + "c", "/probe", "abstract-connect", name, check=False, stdin=subprocess.DEVNULL
        )
        assert "abstract-connect: denied EPERM (1)" in p.stdout, p
        assert rt.state(unique + "c")["annotations"]["org.berth.landlock"] == "abstract-unix"
        rt("delete", "--force", unique + "c")
    rt.write(cfg(["true"], "abstract-unix,nonsense"))
    p = rt("run", unique + "d", check=False, stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert "annotations.org.berth.landlock: unknown scope 'nonsense'" in p.stderr, p
    assert rt("state", unique + "d", check=False).returncode != 0


def test_oci_signal_scope(rt: Runtime, unique: str) -> None:  # noqa: F811
    """A container in the host's pid namespace signals host processes (as runc's); with the
    ``signal`` scope it cannot."""
    script = f"kill -0 {os.getpid()} && echo signal-sent || echo signal-refused"
    c = rt.config(["sh", "-c", script])
    c["linux"]["namespaces"] = [ns for ns in c["linux"]["namespaces"] if ns["type"] != "pid"]
    rt.write(c)
    p = rt("run", unique + "a", check=False, stdin=subprocess.DEVNULL)
    assert "signal-sent" in p.stdout, p
    c["annotations"] = {"org.berth.landlock": "signal"}
    rt.write(c)
    p = rt("run", unique + "b", check=False, stdin=subprocess.DEVNULL)
    assert "signal-refused" in p.stdout, p


def test_oci_restore_of_a_scoped_bundle_is_refused(rt: Runtime, unique: str, tmp_path: Path) -> None:  # noqa: F811
    """berth-runtime restore of a bundle whose annotation asks for a Landlock scope: refused in
    one line naming the annotation, before any image is read or anything made (CRIU gives the
    processes back with no domain; R21)."""
    c = rt.config(["sleep", "100000"])
    c["annotations"] = {"org.berth.landlock": "abstract-unix"}
    rt.write(c)
    images = tmp_path / "images"  # none there: the refusal comes first
    images.mkdir()
    p = rt("restore", "--bundle", str(rt.bundle), "--image-path", str(images), unique, check=False,
           stdin=subprocess.DEVNULL)  # fmt: skip
    assert p.returncode != 0, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "annotations.org.berth.landlock" in lines[0], p.stderr
    assert rt("state", unique, check=False).returncode != 0
