"""A checkpoint cut short (BERTH_FAULT: berth SIGKILLs itself at CRIU's post-dump step) is
settled by `berth gc`, which thaws the guest's cgroup only where CRIU froze it: not a freeze
CRIU never made (it seized the processes with ptrace: every process descends from the init),
and not a guest an operator paused since (`berth-runtime pause` on berth's state root), but
still a freeze CRIU was told to make (an exec session: --freeze-cgroup) and left (R19 F6)."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_checkpoint import REPO, Host, host_a, start_guest, wait  # noqa: F401 - fixtures
from test_checkpoint_crash import _alive, _killed

RUNTIME = str(REPO / ".venv" / "bin" / "berth-runtime")


@pytest.fixture
def h(host_a: Host) -> Host:  # noqa: F811 - the fixture imported above
    return host_a


def _pending(h: Host, name: str) -> dict:
    return json.loads((h.store / "guests" / name / ".checkpoint.pending").read_text())


def _cgroup(h: Host, name: str):
    from berth.cgroups import open_cgroup

    return open_cgroup(str(h.record(name)["cgroup"]))


def _cut_short(h: Host, name: str) -> dict:
    """A checkpoint killed at CRIU's post-dump step; once its CRIU ended (it resumes the
    guest), the pending mark it left."""
    _killed(h, "checkpoint:post-dump", "checkpoint", name)
    pend = _pending(h, name)
    wait(lambda: not _alive(int(pend.get("criu_pid") or 0)), what="CRIU to end")
    return pend


def _runtime(h: Host, *args: str) -> None:
    subprocess.run(
        [RUNTIME, "--root", str(h.run), *args], env=h.env, check=True, capture_output=True, timeout=30
    )


def test_gc_leaves_a_freeze_criu_did_not_make(h: Host, unique: str) -> None:
    name = f"{unique}-tp"
    start_guest(h, name)
    pend = _cut_short(h, name)
    assert pend["criu_freezes"] is False  # seized with ptrace
    cg = _cgroup(h, name)
    assert not cg.frozen()
    cg.freeze()  # an operator's freeze, by hand, after the kill
    try:
        out = h("gc").stdout
        assert f"dropped the checkpoint of {name}" in out, out
        assert cg.frozen(), "gc thawed a freeze CRIU never made"
    finally:
        cg.thaw()
    h("destroy", "--force", name)


def test_gc_leaves_a_guest_paused_since_and_thaws_criu_s(h: Host, unique: str) -> None:
    name = f"{unique}-tf"
    start_guest(h, name)
    # An exec session: a process of the guest that does not descend from its init, so CRIU
    # freezes the cgroup (--freeze-cgroup) rather than seize the tree.
    session = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "berth"), "exec", name, "--", "sleep", "1000"],
        env=h.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cg = _cgroup(h, name)
    try:
        wait(lambda: any(_cmdline(p) == b"sleep\x001000\x00" for p in cg.pids()), what="the session")
        pend = _cut_short(h, name)
        assert pend["criu_freezes"] is True
        assert not cg.frozen()  # CRIU resumed the guest (its berth was gone at post-dump)
        _runtime(h, "pause", name)  # an operator pauses it since
        assert cg.frozen()
        out = h("gc").stdout
        assert f"dropped the checkpoint of {name}" in out, out
        assert cg.frozen(), "gc thawed a guest its operator paused"
        _runtime(h, "resume", name)
        assert not cg.frozen()
        # CRIU's own freeze left behind (as a CRIU killed while the processes were frozen
        # leaves it; the state still says running): gc thaws it.
        _cut_short(h, name)
        cg.freeze()
        out = h("gc").stdout
        assert f"dropped the checkpoint of {name}" in out, out
        assert not cg.frozen()
        assert h("exec", name, "--", "cat", "/count").returncode == 0
    finally:
        if cg.frozen():
            cg.thaw()
        h("destroy", "--force", name, check=False)
        session.kill()
        session.wait(30)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
