"""A guest on the host's network namespace gets the host's /sys alone, never what is mounted
below it (the host's tracefs let such a guest trace and uprobe every host process; its cgroup
hierarchies and debugfs, securityfs, bpf lay below too).

Each run goes through the ``berth`` fixture, which also checks that nothing is left after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_userns import _searchable_state_root  # noqa: F401  (autouse: --userns auto)

# Filesystems that live below the host's /sys and must never reach a guest.
HOST_ONLY = {"tracefs", "debugfs", "securityfs", "bpf", "pstore", "fusectl", "configfs", "efivarfs"}


def _mounts(text: str) -> list[tuple[str, str, str]]:
    """(root, mount point, fstype) of each line of a mountinfo."""
    out = []
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        f = pre.split()
        if len(f) >= 5 and post:
            out.append((f[3], f[4], post.split()[0]))
    return out


@pytest.mark.parametrize("userns", ["host", "auto"])
def test_host_net_guest_sees_no_mount_below_sys(berth, busybox_rootfs: Path, userns: str) -> None:
    host = _mounts(Path("/proc/self/mountinfo").read_text())
    if not any(p.startswith("/sys/kernel/") for _, p, _ in host):
        pytest.skip("the host has nothing mounted under /sys/kernel: nothing to leak")
    res = berth(
        "--rm",
        "--net",
        "host",
        "--userns",
        userns,
        "--rootfs",
        str(busybox_rootfs),
        "--",
        "sh",
        "-c",
        "cat /proc/self/mountinfo; echo ===;"
        " mkdir /sys/kernel/tracing/instances/b8x 2>/dev/null && echo MKDIR-OK; true",
    )
    assert res.returncode == 0, res
    info, _, rest = res.stdout.partition("===\n")
    got = _mounts(info)
    assert any(p == "/sys" for _, p, _ in got), res
    leaked = [(p, t) for _, p, t in got if t in HOST_ONLY or p.startswith("/sys/kernel/")]
    assert not leaked, f"host mounts below /sys reached the guest: {leaked}"
    # The host's cgroup hierarchies (their root outside the guest's cgroup namespace) stay out.
    outside = [(r, p) for r, p, t in got if t in ("cgroup", "cgroup2") and r.startswith("/..")]
    assert not outside, f"the host's cgroup hierarchies reached the guest: {outside}"
    assert "MKDIR-OK" not in rest, res
