"""``berth checkpoint`` and ``berth restore`` killed at named points (BERTH_FAULT: the command
SIGKILLs itself there, :func:`berth.guests.store.fault`; a CRIU wrapper for a kill inside the
restore).  Whatever the point, the guest runs on, or its newest whole dump is committed and
restored, or a restore of an older checkpoint is refused; nothing the killed command made
stays behind (new and old image directories, a state directory without its state.json)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_checkpoint import (  # noqa: F401 - fixtures
    BERTH,
    Host,
    _criu_tables,
    criu_or_skip,
    guest_pid,
    host_a,
    start_guest,
    wait,
)

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done"


@pytest.fixture
def h(host_a: Host) -> Host:  # noqa: F811 - the fixture imported above
    return host_a


def _killed(h: Host, point: str, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [BERTH, *args],
        env={**h.env, "BERTH_FAULT": point},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == -signal.SIGKILL, f"not killed at {point}: {p.returncode} {p.stdout} {p.stderr}"
    return p


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _unlocked(path: Path) -> bool:
    from berth.guests.store import Lock

    lock = Lock(str(path), path.name, 0)
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


def _meta(h: Host, name: str) -> dict:
    return json.loads((h.store / "guests" / name / "checkpoint" / "berth.json").read_text())


def _leftovers(h: Host, name: str) -> list[str]:
    return sorted(p.name for p in (h.store / "guests" / name).iterdir() if p.name.startswith(".checkpoint"))


def _state(h: Host, name: str) -> str:
    return next(ln.split()[1] for ln in h("list").stdout.splitlines()[1:] if ln.split()[0] == name)


def test_killed_after_the_dump_restores_the_newest(h: Host, unique: str) -> None:
    """Killed once CRIU has ended the guest, before the new images replace the checkpoint: the
    next command commits them (gc here), and restore brings back that state, not the earlier
    checkpoint's."""
    name = f"{unique}-kd"
    start_guest(h, name)
    h("checkpoint", name)
    old = _meta(h, name)
    h("restore", name)
    at = h.count(name)
    wait(lambda: h.count(name) > at + 5, what="the counter to go on")
    pid = guest_pid(h, name)
    _killed(h, "checkpoint:dumped", "checkpoint", name)
    assert not _alive(pid), "CRIU did not end the guest"
    pending = json.loads((h.store / "guests" / name / ".checkpoint.pending").read_text())
    assert _meta(h, name)["dump_id"] != pending["id"]  # not committed (what R17 saw)
    killed_at = h.count(name)
    assert killed_at > at + 5
    lock = h.store / "guests" / ".locks" / name
    # (gc skips a guest whose lock another holds: guestd's worker recording the exit)
    wait(
        lambda: h.record(name).get("status") != "running" and _unlocked(lock),
        what="guestd to be done with the guest's exit",
    )
    h("gc")  # (or guestd's exit worker committed it already)
    assert _meta(h, name)["dump_id"] == pending["id"]
    assert _meta(h, name)["time"] > old["time"]
    assert _leftovers(h, name) == []
    assert h.record(name)["status"] == "checkpointed"
    h("restore", name)
    time.sleep(0.3)
    # From the newest dump: the counter goes on from where the kill left it (from the earlier
    # checkpoint it would count again from some 5 below).
    assert h.count(name) >= killed_at
    wait(lambda: h.count(name) > killed_at + 3, what="the counter to go on")
    h("destroy", "--force", name)


@pytest.mark.parametrize("point", ["checkpoint:dumped", "checkpoint:committed"])
def test_killed_after_the_dump_restore_commits(h: Host, unique: str, point: str) -> None:
    """The same kill with no checkpoint before (and one once the new images are in place,
    before the record says so): berth list commits the new dump (once guestd has recorded the
    exit), and restore restores it."""
    name = f"{unique}-kr"
    start_guest(h, name)
    _killed(h, point, "checkpoint", name)
    killed_at = h.count(name)
    if point == "checkpoint:dumped":
        assert "checkpoint" not in os.listdir(h.store / "guests" / name)  # no checkpoint before
    wait(
        lambda: _state(h, name) == "stopped" and h.record(name).get("status") == "checkpointed",
        what="berth list to commit the dump",
    )
    assert _leftovers(h, name) == []
    h("restore", name)
    wait(lambda: h.count(name) > killed_at + 3, what="the counter to go on")
    assert _leftovers(h, name) == []
    h("destroy", "--force", name)


def test_killed_before_the_images_are_whole_the_guest_runs_on(h: Host, unique: str) -> None:
    """Killed at CRIU's post-dump step (images written, berth.json not yet): CRIU resumes the
    guest; the next command drops the new directory; a checkpoint then works."""
    name = f"{unique}-kp"
    start_guest(h, name)
    tables = _criu_tables()
    pid = guest_pid(h, name)
    _killed(h, "checkpoint:post-dump", "checkpoint", name)
    at = h.count(name)
    wait(lambda: h.count(name) > at + 3, what="the resumed guest's counter")
    assert _alive(pid) and guest_pid(h, name) == pid
    assert any(n.startswith(".checkpoint.new-") for n in _leftovers(h, name))
    out = h("gc").stdout
    assert f"dropped the checkpoint of {name}" in out, out
    assert _leftovers(h, name) == []
    assert _state(h, name) == "running"
    wait(lambda: _criu_tables() <= tables, what="CRIU's lock table to go")
    h("checkpoint", name)
    h("restore", name)
    h("destroy", "--force", name)


def _counter_guest(h: Host, name: str) -> None:
    # A counter only (the default guest's open /replies grows: CRIU refuses to restore an
    # older checkpoint over it, and rightly so).
    h.create_plain(name, COUNTER)
    h("start", name)
    wait(lambda: h.count(name) > 3, what="the counter")
    h("checkpoint", name)
    h("restore", name)
    at = h.count(name)
    wait(lambda: h.count(name) > at + 10, what="the counter to go on")


def test_lost_state_refuses_the_older_checkpoint(h: Host, unique: str) -> None:
    """Killed once berth.json is written, before CRIU is told to go on (as if berth and its
    CRIU were killed together after it): CRIU resumes the guest and writes no stats-dump, so
    the dump is not taken for whole.  The guest's processes then end: whether CRIU ended them
    is not known, so its last state counts as lost, and restore refuses the earlier (older)
    checkpoint in one line with a status of its own, unless --stale (or another image dir)."""
    for attempt in range(3):
        name = f"{unique}-kl{attempt}"
        if _lost_then_stale(h, name, last=attempt == 2):
            break
        # The older checkpoint caught the counter's `echo > /count` with /count open (size 0):
        # CRIU rightly refuses to restore that over the file the guest wrote on (bad size).
        h("destroy", "--force", name)


def _lost_then_stale(h: Host, name: str, *, last: bool) -> bool:
    _counter_guest(h, name)
    pid = guest_pid(h, name)
    _killed(h, "checkpoint:posted", "checkpoint", name)
    new = [p for p in (h.store / "guests" / name).iterdir() if p.name.startswith(".checkpoint.new-")]
    assert len(new) == 1 and (new[0] / "berth.json").exists(), new
    assert not (new[0] / "stats-dump").exists()  # CRIU resumed the guest: no stats
    at = h.count(name)
    wait(lambda: h.count(name) > at + 3, what="the resumed guest's counter")
    killed_at = h.count(name)
    os.kill(pid, signal.SIGKILL)
    wait(lambda: _state(h, name) != "running", what="the guest to end")
    p = h("restore", name, check=False)
    assert p.returncode == 5, p
    assert len(p.stderr.strip().splitlines()) == 1 and "--stale" in p.stderr, p.stderr
    assert _leftovers(h, name) == [".checkpoint.pending"]  # the mark; the new dir went
    p = h("restore", name, check=False)
    assert p.returncode == 5, p  # still
    other = h.store / "guests" / name / "other"
    p = h("restore", "--image", str(other), name, check=False)  # not the lost one: not refused
    assert p.returncode != 5 and "--stale" not in p.stderr, p
    p = h("restore", "--stale", name, check=False)
    if p.returncode != 0 and "has bad size" in p.stderr and not last:
        return False
    assert p.returncode == 0, p
    assert _state(h, name) == "running"
    time.sleep(0.3)
    assert h.count(name) < killed_at  # the older state: the counter counts from there again
    assert _leftovers(h, name) == []
    h("destroy", "--force", name)
    return True


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_guest_run_on_then_ended_is_not_lost(h: Host, unique: str, end: str) -> None:
    """Killed at CRIU's post-dump step, before berth.json: CRIU resumes the guest (it never
    ends the processes then).  The guest stopped (berth stop), or its init killed (guestd's
    exit worker), then berth list: the cut-short dump is dropped, not taken for a lost state,
    and restore restores the earlier checkpoint (R19: it exited 5)."""
    name = f"{unique}-k{end[0]}"
    _counter_guest(h, name)
    pid = guest_pid(h, name)
    _killed(h, "checkpoint:post-dump", "checkpoint", name)
    at = h.count(name)
    wait(lambda: h.count(name) > at + 3, what="the resumed guest's counter")
    if end == "stop":
        h("stop", "-t", "1", name)
    else:
        os.kill(pid, signal.SIGKILL)
    wait(lambda: _state(h, name) == "stopped", what="the guest to end")
    assert _leftovers(h, name) == []
    h("restore", name)
    assert _state(h, name) == "running"
    h("destroy", "--force", name)


def test_checkpoint_killed_while_criu_runs_waits_for_it(h: Host, unique: str, tmp_path: Path) -> None:
    """berth killed while its CRIU still runs (a CRIU that takes 2 s to start): gc and list
    leave the guest, its mark and CRIU's directory alone; the next checkpoint waits for that
    CRIU (which resumes the guest: its berth is gone) before it settles, then checkpoints
    (R19: a settle meanwhile dropped the dump CRIU wrote into, thawed its freeze, and a
    concurrent dump failed)."""
    name = f"{unique}-kw"
    real = criu_or_skip()
    start_guest(h, name)
    pid = guest_pid(h, name)
    wrapper = tmp_path / "criu"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = dump ] && sleep 2\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    env = {**h.env, "BERTH_CRIU": str(wrapper), "BERTH_CRIU_ONLY": "1", "BERTH_FAULT": "checkpoint:spawned"}
    p = subprocess.run([BERTH, "checkpoint", name], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p
    t0 = time.monotonic()
    pending = json.loads((h.store / "guests" / name / ".checkpoint.pending").read_text())
    assert _alive(pending["criu_pid"])
    out = h("gc").stdout
    assert name not in out, out
    assert _state(h, name) == "running"
    assert (h.store / "guests" / name / ".checkpoint.pending").exists()
    assert Path(pending["new"]).is_dir()
    assert time.monotonic() - t0 < 1.5, "too slow to see the CRIU at work"
    h("checkpoint", name)  # waits for the orphan CRIU, drops its dump, then its own
    assert not _alive(pending["criu_pid"])
    assert not _alive(pid)
    assert _leftovers(h, name) == []
    h("restore", name)
    h("destroy", "--force", name)


def test_checkpoint_into_a_noexec_dir(h: Host, unique: str, tmp_path: Path) -> None:
    """The images on a noexec mount (a noexec tmpfs store, /dev/shm): the action script is
    berth's own file, not one written there (R19: execvp failed: Permission denied)."""
    name = f"{unique}-kx"
    start_guest(h, name)
    mnt = tmp_path / "noexec"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=256m", "h9dnoexec", str(mnt)], check=True)
    try:
        h("checkpoint", "--image", str(mnt / "ck"), name)
        assert sorted(os.listdir(mnt)) == ["ck"]
        assert not [f for f in os.listdir(mnt / "ck") if f.startswith(".berth")]
        h("restore", "--image", str(mnt / "ck"), name)
        assert _state(h, name) == "running"
        h("destroy", "--force", name)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_gc_removes_stale_image_dirs(h: Host, unique: str) -> None:
    """New and old image directories of killed checkpoints (no pending dump names them) go
    with gc, and with the guest's next checkpoint."""
    name = f"{unique}-kg"
    start_guest(h, name)
    g = h.store / "guests" / name
    for d in (".checkpoint.new-aaaa", ".checkpoint.old-bbbb/x"):
        (g / d).mkdir(parents=True)
        (g / d / "pages-1.img").write_bytes(b"x" * 4096)
    out = h("gc").stdout
    assert f"removed {g / '.checkpoint.new-aaaa'}" in out, out
    assert _leftovers(h, name) == []
    (g / ".checkpoint.new-cccc").mkdir()
    h("checkpoint", name)
    assert _leftovers(h, name) == []
    h("destroy", "--force", name)


def _stateless(sdir: Path) -> None:
    """What R17 found after kills: the container's state directory without its state.json
    (criu/, criu.pid, lower0/, rootfs/)."""
    for d in ("criu", "lower0", "rootfs"):
        (sdir / d).mkdir(parents=True, exist_ok=True)
    (sdir / "criu" / "restore.log").write_text("x\n")
    (sdir / "criu.pid").write_text("1\n")
    for f in ("state.json", "exec.fifo"):
        (sdir / f).unlink(missing_ok=True)


def test_killed_restore_and_stateless_dirs_are_not_in_the_way(h: Host, unique: str, tmp_path: Path) -> None:
    """A restore killed while CRIU runs, and a state directory without its state.json (a
    remove killed half-way left it): the next restore, start, gc and destroy go through them
    and remove them (one held the name: "container exists already")."""
    name = f"{unique}-kc"
    real = criu_or_skip()
    start_guest(h, name)
    h("checkpoint", name)
    wrapper = tmp_path / "criu"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = restore ] && kill -9 0\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    env = {**h.env, "BERTH_CRIU": str(wrapper), "BERTH_CRIU_ONLY": "1"}
    p = subprocess.run(
        [BERTH, "restore", name], env=env, capture_output=True, text=True, timeout=60, start_new_session=True
    )
    assert p.returncode == -signal.SIGKILL, p
    sdir = h.run / name
    assert sdir.is_dir()
    h("restore", name)  # through what the killed one left
    stopped_at = h.count(name)
    wait(lambda: h.count(name) > stopped_at + 3, what="the counter to go on")
    h("checkpoint", name)
    _stateless(sdir)
    h("restore", name)
    h("stop", "-t", "1", name)
    # guestd's exit worker removes the stopped guest's state after `stop` returns: wait for it,
    # or it removes what _stateless makes while it is made (seen once in CI)
    wait(lambda: not sdir.exists(), what="the stopped guest's state to be removed")
    _stateless(sdir)
    h("start", name)
    h("stop", "-t", "1", name)
    wait(lambda: not sdir.exists(), what="the stopped guest's state to be removed")
    _stateless(sdir)
    h("gc")
    assert not sdir.exists(), list(sdir.iterdir())
    _stateless(sdir)
    h("destroy", name)
    assert not sdir.exists(), list(sdir.iterdir())
    assert not [n for n in os.listdir(h.run) if n.startswith(".gone-")]
