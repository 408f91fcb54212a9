"""berth-runtime refuses more supplementary groups than the kernel takes (NGROUPS_MAX, 65536) at
``create``, naming the field, instead of failing later with a bare ValueError from setgroups."""

from __future__ import annotations

import os
import subprocess

import test_oci_lifecycle
from test_oci_lifecycle import Runtime

rt = test_oci_lifecycle.rt  # the fixture: a --root, a bundle of the busybox copy, cleaned up


def test_too_many_additional_gids_refused_at_create(rt: Runtime, unique: str) -> None:
    cfg = rt.config(["true"])
    cfg["process"]["user"]["additionalGids"] = list(range(1, 70_000))
    rt.write(cfg)
    proc = rt("create", "--bundle", str(rt.bundle), unique, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 125, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "process.user.additionalGids" in lines[0], proc.stderr
    assert "69999 groups" in lines[0] and "Error" not in lines[0], proc.stderr
    assert not rt.root.exists() or not [n for n in os.listdir(rt.root) if not n.startswith(".")]


def test_as_many_additional_gids_as_the_kernel_takes(rt: Runtime, unique: str, tmp_path) -> None:
    cfg = rt.config(["sh", "-c", "grep ^Groups: /proc/self/status | wc -w"])
    cfg["process"]["user"]["additionalGids"] = list(range(1, 65_537))
    rt.write(cfg)
    out = tmp_path / "out"
    rt.create(unique, out=out)
    rt("start", unique)
    rt.wait_status(unique, "stopped")
    rt("delete", unique)
    assert out.read_text().strip() == str(65_536 + 1), out.read_text()
