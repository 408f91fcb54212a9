"""``berth gc`` beside running ``berth run``s, and the cgroup parents berth makes and removes.

gc removes the empty cgroups under the parent that nothing holds; a ``berth run``'s cgroup is
empty between its create and its init joining it, and must not be pulled away then.  A nested
``BERTH_CGROUP_PARENT`` ("a/b") goes with the last guest, "a" with it when berth made it (never
when someone else did).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import assert_clean, berth_cmd, cgroup_dirs
from helpers import cgroup_roots

ROUNDS = 30
RUNS_PER_ROUND = 3


def _berth(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*berth_cmd(), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tops(path: str) -> list[str]:
    """The hierarchies where the cgroup ``path`` exists."""
    return sorted(str(top) for top in cgroup_roots() if (top / path).is_dir())


def _hand_made(path: str) -> None:
    """``path`` made by hand in every hierarchy (as an admin would, not through berth)."""
    for top in cgroup_roots():
        if (top / "cgroup.procs").exists():
            (top / path).mkdir()


def _rmdir_everywhere(path: str) -> None:
    for top in cgroup_roots():
        parts = path.split("/")
        for i in range(len(parts), 0, -1):
            try:
                (top / "/".join(parts[:i])).rmdir()
            except OSError:
                pass


def test_gc_beside_runs_loses_none(berth_env: dict[str, str]) -> None:
    """``berth gc`` in a loop while ``berth run``s start and end, ROUNDS rounds of
    RUNS_PER_ROUND at once: every run succeeds (neither its state directory, before its
    state.json is written, nor its cgroup, before its init joins it, was removed under it: gc
    before the fix failed ~1 run in 30 here) and, all ended, one more gc finds nothing and
    nothing is left."""
    env = berth_env
    stop = threading.Event()
    gc_errors: list[str] = []
    gcs = [0]

    def gc_loop() -> None:
        while not stop.is_set():
            r = _berth(env, "--debug", "gc")  # a failure's traceback in the report
            gcs[0] += 1
            if r.returncode != 0:
                gc_errors.append(r.stderr)

    loop = threading.Thread(target=gc_loop)
    loop.start()
    failed = []
    try:
        for rnd in range(ROUNDS):
            procs = [
                subprocess.Popen(
                    [*berth_cmd(), "run", "--", "/bin/sh", "-c", f"echo ok{rnd}.{i}"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for i in range(RUNS_PER_ROUND)
            ]
            for i, p in enumerate(procs):
                out, err = p.communicate(timeout=60)
                if p.returncode != 0 or out != f"ok{rnd}.{i}\n":
                    failed.append(f"round {rnd} run {i}: status {p.returncode}, out {out!r}, err {err!r}")
    finally:
        stop.set()
        loop.join(timeout=120)
    assert not failed, "\n".join(failed)
    assert not gc_errors, gc_errors
    assert gcs[0] >= 3, f"only {gcs[0]} gc runs beside {ROUNDS} rounds: no race was tried"
    last = _berth(env, "gc")
    assert last.returncode == 0, last.stderr
    assert last.stdout == "", last.stdout  # the runs cleaned up after themselves; gc took nothing of theirs
    assert_clean(env)


def test_gc_keeps_the_cgroup_of_a_run_being_made(berth_env: dict[str, str]) -> None:
    """The moment a ``berth run`` made its state (owner: a live process) and its empty cgroup,
    its init not in it yet: gc leaves both.  The owner gone, gc takes both; a cgroup with no
    state at all is taken too, and gc's hold on its name (a state directory) goes with it."""
    from berth.cgroups import open_cgroup
    from berth.runtime import state as st

    env = berth_env
    parent = env["BERTH_CGROUP_PARENT"]
    cid = f"b{secrets.token_hex(6)}"
    sleeper = subprocess.Popen(["sleep", "60"])  # the run's owner
    try:
        st.reserve(env["BERTH_RUN"], cid)
        data = {
            "ociVersion": "1.2.0",
            "id": cid,
            "status": st.CREATING,
            "pid": 0,
            "bundle": "",
            "annotations": {},
            "berth": {
                "cgroup": f"{parent}/{cid}",
                "created": time.time(),
                "owner": [sleeper.pid, st.proc_start_time(sleeper.pid)],
            },
        }
        st.write(env["BERTH_RUN"], cid, data)
        open_cgroup(f"{parent}/{cid}").create()
        r = _berth(env, "gc")
        assert r.returncode == 0, r.stderr
        assert _tops(f"{parent}/{cid}"), f"gc removed a live run's cgroup: {r.stdout}"
        assert (Path(env["BERTH_RUN"]) / cid / "state.json").exists()
        sleeper.kill()
        sleeper.wait()
        r = _berth(env, "gc")
        assert r.returncode == 0, r.stderr
        assert f"removed state {cid}" in r.stdout, r.stdout
        assert _tops(f"{parent}/{cid}") == []
        # A cgroup alone (its state gone: a crash between the two removals).
        open_cgroup(f"{parent}/{cid}").create()
        r = _berth(env, "gc")
        assert r.returncode == 0, r.stderr
        assert f"removed cgroup {parent}/{cid}" in r.stdout, r.stdout
        assert _tops(f"{parent}/{cid}") == []
        assert not (Path(env["BERTH_RUN"]) / cid).exists()  # gc's claim on the name went too
    finally:
        sleeper.kill()
        sleeper.wait()
        st.remove_tree(str(Path(env["BERTH_RUN"]) / cid))
        open_cgroup(f"{parent}/{cid}").destroy()
    assert_clean(env)


def test_gc_keeps_a_state_dir_being_written(berth_env: dict[str, str]) -> None:
    """A state directory with no state.json yet (a create between reserving its name and writing
    its state) is left while young; an old one is a crash's leftover and goes."""
    env = berth_env
    sdir = Path(env["BERTH_RUN"]) / f"b{secrets.token_hex(6)}"
    sdir.mkdir(parents=True)
    try:
        r = _berth(env, "gc")
        assert r.returncode == 0, r.stderr
        assert sdir.is_dir(), r.stdout
        old = time.time() - 3600
        os.utime(sdir, (old, old))
        r = _berth(env, "gc")
        assert r.returncode == 0, r.stderr
        assert f"removed state {sdir.name}" in r.stdout, r.stdout
        assert not sdir.exists()
    finally:
        if sdir.exists():
            sdir.rmdir()
    assert_clean(env)


@pytest.fixture
def top_parent(prefix: str):
    """A fresh top-level cgroup name of this test's (removed everywhere at teardown)."""
    name = f"{prefix}p{secrets.token_hex(3)}"
    yield name
    _rmdir_everywhere(f"{name}/b")


def test_nested_parent_made_by_berth_goes_with_the_last_guest(berth_env, top_parent) -> None:
    env = {**berth_env, "BERTH_CGROUP_PARENT": f"{top_parent}/b"}
    assert _tops(top_parent) == []
    r = _berth(env, "run", "--", "/bin/true")
    assert r.returncode == 0, r.stderr
    assert _tops(top_parent) == []  # "a" of "a/b" too: berth made it
    assert_clean(env)


def test_nested_parent_made_by_hand_stays(berth_env, top_parent) -> None:
    """ "a" of BERTH_CGROUP_PARENT "a/b" made by the admin: berth removes "a/b" (its own), not "a"."""
    _hand_made(top_parent)
    env = {**berth_env, "BERTH_CGROUP_PARENT": f"{top_parent}/b"}
    r = _berth(env, "run", "--", "/bin/true")
    assert r.returncode == 0, r.stderr
    assert _tops(f"{top_parent}/b") == []
    assert _tops(top_parent) == _tops("."), "a parent made by hand was removed"
    r = _berth(env, "gc")
    assert r.returncode == 0, r.stderr
    assert _tops(top_parent) == _tops(".")
    assert cgroup_dirs(top_parent) == []
