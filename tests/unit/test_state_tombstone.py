"""berth.runtime.state.remove_tree: the directory goes at once and whole (renamed to a tombstone
first), even when the remover is killed half-way; sweep() takes a dead remover's tombstone and
leaves a live one's."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from berth.runtime import state as st


def _tree(path: Path, n: int = 50) -> None:
    for i in range(n):
        d = path / f"d{i}"
        d.mkdir(parents=True)
        (d / "f").write_text("x")
    (path / "state.json").write_text("{}")
    (path / "link").symlink_to("/etc")  # not followed


def test_remove_tree_leaves_nothing(tmp_path: Path) -> None:
    _tree(tmp_path / "c1")
    st.remove_tree(str(tmp_path / "c1"))
    assert os.listdir(tmp_path) == []
    st.remove_tree(str(tmp_path / "missing"))  # a no-op
    assert os.path.isdir("/etc")


def test_bury_frees_the_name_and_remove_grave_removes_it_later(tmp_path: Path) -> None:
    _tree(tmp_path / "c1", 3)
    grave = st.bury(str(tmp_path / "c1"))
    assert grave is not None and os.path.basename(grave).startswith(f"{st.TOMBSTONE}{os.getpid()}-")
    assert os.listdir(tmp_path) == [os.path.basename(grave)]  # the name is free, the tree whole
    assert len(os.listdir(grave)) == 5
    st.remove_grave(grave)
    assert os.listdir(tmp_path) == []
    assert st.bury(str(tmp_path / "c1")) is None  # gone already


def test_killed_remove_leaves_a_tombstone_not_a_half_dir(tmp_path: Path) -> None:
    """A remover killed after its 10th unlink: the container's name is free (no half state
    directory without state.json under it); a later sweep removes the tombstone."""
    _tree(tmp_path / "c1")
    pid = os.fork()
    if pid == 0:  # the remover, killed half-way
        calls = [0]
        real = os.unlink

        def unlink(*a, **kw):  # type: ignore[no-untyped-def]
            calls[0] += 1
            if calls[0] > 10:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **kw)

        os.unlink = unlink  # type: ignore[assignment]
        st.remove_tree(str(tmp_path / "c1"))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    left = os.listdir(tmp_path)
    assert "c1" not in left
    assert len(left) == 1 and left[0].startswith(f"{st.TOMBSTONE}{pid}-") and left[0].endswith("-c1")
    assert st.ids(str(tmp_path)) == []  # no container's
    assert st.sweep(str(tmp_path)) == [str(tmp_path / left[0])]
    assert os.listdir(tmp_path) == []


def test_sweep_keeps_a_live_removers_tombstone(tmp_path: Path) -> None:
    live = tmp_path / f"{st.TOMBSTONE}{os.getpid()}-abcdef-c2"
    _tree(live, 2)
    assert st.sweep(str(tmp_path)) == []
    assert live.is_dir()
    assert st.sweep(str(tmp_path / "missing")) == []


def test_sweep_takes_at_most_limit(tmp_path: Path) -> None:
    """berth-runtime's delete sweeps a bounded number per call (berth.oci.delete.SWEEP_LIMIT)."""
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    for i in range(5):
        _tree(tmp_path / f"{st.TOMBSTONE}{p.pid}-{i:06x}-c{i}", 2)
    first = st.sweep(str(tmp_path), limit=2)
    assert len(first) == 2 and not any(os.path.exists(x) for x in first)
    assert len(os.listdir(tmp_path)) == 3
    assert len(st.sweep(str(tmp_path), limit=0)) == 0
    assert len(st.sweep(str(tmp_path))) == 3
    assert os.listdir(tmp_path) == []
