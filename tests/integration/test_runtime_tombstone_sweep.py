"""Tombstones (``.gone-PID-RAND-NAME``: berth.runtime.state.remove_tree) that a remover killed
half-way left under berth-runtime's --root (podman's, containerd's: nobody runs `berth gc` on
it) go with the runtime's later deletes, a bounded number per delete; a live remover's stays
(R19 F7).  The runtime's own --root: the ``rt`` fixture's, under the test's temporary dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from test_oci_lifecycle import Runtime, rt  # noqa: F401 - the fixture

from berth.oci.delete import SWEEP_LIMIT
from berth.runtime import state as st


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _grave(root: Path, pid: int, tag: str) -> Path:
    g = root / f"{st.TOMBSTONE}{pid}-{os.urandom(3).hex()}-{tag}"
    for i in range(20):
        (g / f"d{i}").mkdir(parents=True)
        (g / f"d{i}" / "f").write_text("x")
    (g / "exec.fifo").write_text("")
    (g / "link").symlink_to("/etc")  # not followed
    return g


def _graves(root: Path) -> set[Path]:
    return {root / n for n in os.listdir(root) if n.startswith(st.TOMBSTONE)}


def test_delete_sweeps_dead_removers_tombstones(rt: Runtime, unique: str) -> None:  # noqa: F811
    rt.root.mkdir(parents=True, exist_ok=True)
    dead = _dead_pid()
    graves = {_grave(rt.root, dead, f"{unique}{i}") for i in range(SWEEP_LIMIT + 2)}
    live = _grave(rt.root, os.getpid(), f"{unique}live")  # its remover (this test) is at it
    try:
        rt("delete", "--force", unique)  # (none of that name: as runc, a forced delete succeeds)
        left = _graves(rt.root)
        assert live in left and len(left - {live}) == 2  # at most SWEEP_LIMIT per delete
        assert left - {live} <= graves
        # An ordinary create and delete: the rest goes too.
        rt.write(rt.config(["true"]))
        rt.create(unique)
        rt("delete", "--force", unique)
        assert _graves(rt.root) == {live}
        assert os.path.isdir("/etc")
        rt("delete", "--force", unique)
        assert _graves(rt.root) == {live}  # never a live remover's
    finally:
        shutil.rmtree(live, ignore_errors=True)
        for g in graves:
            shutil.rmtree(g, ignore_errors=True)
