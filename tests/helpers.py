"""Helpers the test files share: ``from helpers import ...`` (tests/ is on sys.path: pytest puts
the directory of tests/conftest.py there, as of every conftest.py, for every test under it).

Plain functions, no fixtures: a fixture shared by several files belongs in a conftest.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest


def free_subnet() -> str:
    """A /24 in 10.0.0.0/8 that no host route (in any table) overlaps; the test is skipped if
    100 random picks all overlap one."""
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    routes = []
    for line in out.splitlines():
        words = line.split()
        dst = words[1] if words[0] in ("broadcast", "local", "unreachable") else words[0]
        with contextlib.suppress(ValueError):
            routes.append(ipaddress.IPv4Network("0.0.0.0/32" if dst == "default" else dst, strict=False))
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(250)}.0/24")
        if not any(r.overlaps(net) and r.prefixlen > 0 for r in routes):
            return str(net)
    pytest.skip("no free 10.x /24 for a test subnet")


def compile_c(out: Path, src: Path, *flags: str, missing: str) -> Path:
    """``src`` built by the host's C compiler into ``out`` with ``-O2 -Wall -Wextra -Werror`` and
    ``flags`` (any warning fails the test); the test is skipped, saying ``missing``, without a
    compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip(f"no C compiler: {missing}")
    r = subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-Werror", *flags, "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return out


def cgroup_roots() -> list[Path]:
    """The root of every cgroup hierarchy mounted under /sys/fs/cgroup: that directory itself on a
    cgroup-v2-only host (where a test's parent cgroup is /sys/fs/cgroup/PARENT), else each v1
    hierarchy and the hybrid host's cgroup2 one (/sys/fs/cgroup/unified)."""
    top = Path("/sys/fs/cgroup")
    if (top / "cgroup.controllers").exists():
        return [top]
    return [p for p in sorted(top.iterdir()) if p.is_dir() and not p.is_symlink()]


def timing_matters() -> bool:
    """Whether a test's time limits mean anything here: not on an emulated CPU (``make test-v2``
    under TCG sets BERTH_TEST_EMULATED), where every process runs some 30 times slower and a
    limit would measure the emulator; the test's other assertions still hold there."""
    return not os.environ.get("BERTH_TEST_EMULATED")


def pb_varint(n: int) -> bytes:
    """``n`` as a protobuf varint (CRIU's images are protobuf messages)."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(num: int, value: object) -> bytes:
    """Protobuf field ``num``: an int as a varint, bytes length-delimited."""
    if isinstance(value, int):
        return pb_varint(num << 3) + pb_varint(value)
    assert isinstance(value, bytes)
    return pb_varint(num << 3 | 2) + pb_varint(len(value)) + value
