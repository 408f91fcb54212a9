"""gVisor (Debian's ``runsc``, ``--platform=ptrace``): an application kernel that is itself an OCI runtime.

The container's root is berth's busybox template (built once into the lab cache with
``berth template build busybox``), read-only; host directories can be bound in read-only. No
network (``--network=none``) unless given a network namespace (``netns=``): then runsc's own
``--network=sandbox``, gVisor's netstack in the sentry on an AF_PACKET socket on that namespace's
veth (runsc moves the veth's address into the sandbox). Each call uses its own ``--root`` state directory, removed after
``runsc delete --force``, so no runsc container outlives it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.lab import names
from bench.lab.console import reap
from bench.lab.errors import CommandTimeout, LabError, ToolMissing
from bench.lab.kernel import CACHE

REPO = Path(__file__).resolve().parents[2]
PLATFORM = os.environ.get("BERTH_LAB_RUNSC_PLATFORM", "ptrace")
NETNS_DIR = Path("/var/run/netns")
# Debian's runsc (20221219) tells the root netns by /proc/sys/net/core/rmem_default existing,
# which it does in every netns on recent kernels (the core rmem/wmem sysctls are per netns; 6.18 here), so
# --network=sandbox always fails with "cannot run with network enabled in root network
# namespace" (upstream checks otherwise since). runsc run gets a private mount namespace with an
# empty tmpfs on /proc/sys/net: nothing but that runsc process tree sees the change.
HIDE_SYSCTL_NET = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs lab-net /proc/sys/net && exec "$@"', "runsc"]


def runsc_binary() -> str:
    r = shutil.which("runsc")
    if r is None:
        raise ToolMissing("runsc is not installed (Debian package runsc)")
    return r


def busybox_rootfs() -> Path:
    """berth's busybox template, built once into the lab cache."""
    store = CACHE / "berth-root"
    rootfs = store / "templates" / "busybox" / "rootfs"
    if not (rootfs / "bin" / "busybox").exists():
        berth = REPO / ".venv" / "bin" / "berth"
        if not berth.exists():
            raise ToolMissing(f"{berth} is missing: run make setup")
        r = subprocess.run(
            [str(berth), "template", "build", "busybox"],
            env=dict(os.environ, BERTH_ROOT=str(store)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode != 0 or not rootfs.is_dir():
            raise LabError(f"berth template build busybox failed: {r.stderr.strip()[-300:]}")
    return rootfs


def bundle_config(
    rootfs: Path, argv: list[str], binds: Sequence[tuple[str, str]] = (), netns: str | None = None
) -> dict:
    """A minimal OCI config: read-only root, the usual pseudo filesystems, ``binds`` read-only;
    the network namespace a new empty one, or ``netns`` (a name under /var/run/netns)."""
    namespaces: list[dict] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    if netns is not None:
        namespaces[1]["path"] = str(NETNS_DIR / netns)
    mounts: list[dict] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777"]},
    ]
    mounts += [
        {"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]} for src, dst in binds
    ]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": argv,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {
                k: ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN"]
                for k in ("bounding", "effective", "permitted")
            },
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "lab",
        "mounts": mounts,
        "linux": {"namespaces": namespaces},
    }


def run(
    command: str,
    *,
    timeout: float = 60.0,
    share_host_ro: bool = True,
    binds: Sequence[tuple[str, str]] = (),
    watch: Callable[[int], None] | None = None,
    argv: list[str] | None = None,
    netns: str | None = None,
):
    """``runsc run`` of ``sh -c command`` in the busybox rootfs; the Result carries runsc's exit status.

    ``share_host_ro`` has no effect here (the root is the busybox template); bind host paths with
    ``binds=[(host, guest)]``. ``netns``: run in that existing network namespace (a name under
    /var/run/netns) with gVisor's netstack on its interfaces; the caller owns the namespace.
    """
    from bench.lab.runner import Result

    del share_host_ro
    runsc = runsc_binary()
    rootfs = busybox_rootfs()
    cid = f"{names.prefix('ctr')}{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix=names.prefix("runsc")) as tmp:
        bundle = Path(tmp) / "bundle"
        state = Path(tmp) / "state"
        bundle.mkdir()
        state.mkdir()
        cfg = bundle_config(rootfs, argv or ["/bin/sh", "-c", command], binds, netns)
        (bundle / "config.json").write_text(json.dumps(cfg))
        network = "--network=none" if netns is None else "--network=sandbox"
        base = [runsc, "--root", str(state), f"--platform={PLATFORM}", network, "--ignore-cgroups"]
        wrap = HIDE_SYSCTL_NET if netns is not None else []
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*wrap, *base, "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            if watch is not None:
                watch(proc.pid)
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(
                f"gvisor: command did not finish within {timeout:.0f} s; sandbox killed"
            ) from None
        finally:
            seconds = time.monotonic() - t0
            subprocess.run([*base, "delete", "--force", cid], capture_output=True, timeout=60)
            reap(proc)
            left = subprocess.run([*base, "list", "-quiet"], capture_output=True, text=True, timeout=60)
            if left.stdout.strip():
                raise LabError(f"gvisor: runsc containers left in {state}: {left.stdout.split()}")
        status = proc.returncode
        output, log = out.decode(errors="replace"), err.decode(errors="replace")
        if status < 0:
            raise LabError(f"gvisor: runsc killed by signal {-status}: {log.strip()[-300:]}")
        return Result(status, output, log, seconds, f"gvisor-{PLATFORM}", 0.0, "runsc application kernel")


def available() -> str | None:
    try:
        runsc_binary()
    except ToolMissing as e:
        return str(e)
    return None
