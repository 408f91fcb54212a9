"""A `berth run`'s use entry of a template in the store (``templates/.NAME.users/PID-START``,
berth.rootfs.template): made under the use lock, gone when the run ends; an entry whose
process is gone or whose pid another process has now (another start time) is stale: ignored
and removed by a replace's look and by `berth gc`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from berth.rootfs import template


def _my_start() -> int:
    with open("/proc/self/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _users(store: Path, name: str) -> Path:
    return store / "templates" / f".{name}.users"


def test_parse_entry() -> None:
    assert template.parse_entry("12-345") == (12, 345)
    for bad in ("12", "-12", "12-", "a-1", "1-a", "0-5", "12-3-4", ".tmp", "12-3 "):
        assert template.parse_entry(bad) is None, bad


def test_entry_live() -> None:
    me, start = os.getpid(), _my_start()
    assert template.entry_live(template.entry_name(me, start))
    assert not template.entry_live(template.entry_name(me, start + 1))  # its pid, another process
    assert not template.entry_live(template.entry_name(_dead_pid(), start))
    assert not template.entry_live("junk")


def test_starting_records_the_run_until_it_ends(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "templates" / "tpl").mkdir(parents=True)
    hold = template.starting(str(store), "tpl", run=("r1", "/run/a"))
    assert hold is not None
    assert os.listdir(_users(store, "tpl")) == [template.entry_name(os.getpid(), _my_start())]
    hold.release()  # the lock goes once the state is written; the entry stays
    assert template.live_runs(str(store), "tpl") == [
        f"berth run 'r1' (pid {os.getpid()}, state root '/run/a')"
    ]
    hold.ended()
    assert not _users(store, "tpl").exists()  # its directory too, once empty
    assert template.live_runs(str(store), "tpl") == []
    # A guest of the store (no run named): no entry.
    hold = template.starting(str(store), "tpl")
    assert hold is not None
    hold.release()
    hold.ended()
    assert not _users(store, "tpl").exists()


def test_stale_entries_are_ignored_and_pruned(tmp_path: Path) -> None:
    store = tmp_path / "store"
    d = _users(store, "tpl")
    d.mkdir(parents=True)
    start = _my_start()
    dead = d / template.entry_name(_dead_pid(), start)
    reused = d / template.entry_name(os.getpid(), start + 7)
    foreign = d / "notes.txt"
    for p in (dead, reused, foreign):
        p.write_text("x\n/r\n")
    assert template.live_runs(str(store), "tpl") == []
    assert sorted(os.listdir(d)) == ["notes.txt"]  # the stale ones went; a foreign file stays
    for p in (dead, reused):
        p.write_text("x\n/r\n")
    assert sorted(template.prune_runs(str(store))) == sorted([str(dead), str(reused)])
    assert sorted(os.listdir(d)) == ["notes.txt"]
    foreign.unlink()
    assert template.prune_runs(str(store)) == []
    assert not d.exists()  # an empty directory goes with gc


def test_run_ended_removes_only_its_own_entries(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for t in ("a", "b"):
        (store / "templates" / t).mkdir(parents=True)
    mine = [template.starting(str(store), t, run=(f"r{t}", "/x")) for t in ("a", "b")]
    other = _users(store, "a") / template.entry_name(_dead_pid(), 5)  # another run's (stale or not)
    other.write_text("o\n/y\n")
    template.run_ended(str(store))
    assert os.listdir(_users(store, "a")) == [other.name]
    assert not _users(store, "b").exists()
    for h in mine:
        assert h is not None
        h.release()
        h.ended()  # (gone already: nothing to do)
    template.run_ended(str(tmp_path / "nostore"))  # no templates dir: nothing to do
