"""`berth template import|build --force` refuses (exit 4, one line naming it) while a `berth run`
of ANOTHER state root (BERTH_RUN) on the same store uses the template: the run records its use
in the store (``templates/.NAME.users/PID-START``), not only in its own state root, and holds
the use lock only until its state is written (R18 F1: the replace deleted the lower layer under
the running guest).  The entry goes when the run ends (after the C waiter too); an entry left
by a run killed -9 (its pid gone, or another process's) does not block and goes with the
replace and with `berth gc`."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import test_guests
from test_guests import Guests
from test_h9c_template_inuse import _image, _refused
from test_templates import BUSYBOX

from conftest import berth_cmd

guests = test_guests.guests

pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")


def _marker(store: Path, t: str) -> str:
    return (store / "templates" / t / "rootfs" / "etc" / "marker").read_text()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _start(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2 :].split()[19])


def test_force_refused_while_a_run_of_another_state_root_uses_it(guests: Guests, tmp_path: Path) -> None:
    t = guests.name("tpx")
    guests("template", "import", f"oci:{_image(tmp_path, 'one')}", t)
    newer = _image(tmp_path, "two")
    users = guests.store / "templates" / f".{t}.users"
    other = {**guests.env, "BERTH_RUN": str(tmp_path / "run-a")}  # the run's state root: not the replace's
    run = guests.name("xr")
    p = subprocess.Popen(
        [*berth_cmd(), "run", "--name", run, "--userns", "host", "--template", t, "--",
         "sh", "-c", "cat /etc/marker; echo; exec sleep 1000"],
        env=other, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "one"
        deadline = time.monotonic() + 10
        while _comm(p.pid) != "berth-wait" and time.monotonic() < deadline:
            time.sleep(0.05)  # past its use lock, its state written: the C waiter
        assert _comm(p.pid) == "berth-wait"
        assert os.listdir(users) == [f"{p.pid}-{_start(p.pid)}"]
        r = guests("template", "import", "--force", f"oci:{newer}", t, check=False)
        _refused(r, t, f"berth run {run!r} (pid {p.pid}, state root {str(tmp_path / 'run-a')!r})")
        assert _marker(guests.store, t) == "one"
        p.terminate()  # forwarded to the guest; then berth _run-exit cleans up
        p.wait(30)
        assert not users.exists()  # its entry went with it (and the empty directory)
        guests("template", "import", "--force", f"oci:{newer}", t)
        assert _marker(guests.store, t) == "two"
        # A short run (berth run waits in Python): its entry goes as well.
        r = guests("run", "--userns", "host", "--template", t, "--", "cat", "/etc/marker", env=other)
        assert r.stdout == "two"
        assert not users.exists()
        # Killed -9 (the C waiter; its guest dies with it): its entry stays, stale, and does
        # not block; the replace removes it.
        p = subprocess.Popen(
            [*berth_cmd(), "run", "--name", run, "--userns", "host", "--template", t, "--",
             "sh", "-c", "cat /etc/marker; echo; exec sleep 1000"],
            env=other, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert p.stdout is not None and p.stdout.readline().strip() == "two"
        deadline = time.monotonic() + 10
        while _comm(p.pid) != "berth-wait" and time.monotonic() < deadline:
            time.sleep(0.05)
        p.kill()
        p.wait(30)
        assert os.listdir(users) != []
        guests("template", "import", "--force", f"oci:{_image(tmp_path, 'three')}", t)
        assert _marker(guests.store, t) == "three"
        assert not users.exists()
        guests("gc", env=other)  # what the killed run left in its state root
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        shutil.rmtree(guests.store / "templates" / t, ignore_errors=True)
        shutil.rmtree(users, ignore_errors=True)


def test_stale_entries_do_not_block(guests: Guests, tmp_path: Path) -> None:
    """Entries of runs killed -9: a dead pid, a pid that is another process now (this test's,
    another start time).  The replace goes through and removes them; `berth gc` too."""
    t = guests.name("tps")
    guests("template", "import", f"oci:{_image(tmp_path, 'one')}", t)
    users = guests.store / "templates" / f".{t}.users"
    try:
        users.mkdir(mode=0o700)
        dead = users / f"{_dead_pid()}-{_start(os.getpid())}"
        reused = users / f"{os.getpid()}-{_start(os.getpid()) + 3}"
        for e in (dead, reused):
            e.write_text("killed\n/run/x\n")
        guests("template", "import", "--force", f"oci:{_image(tmp_path, 'two')}", t)
        assert _marker(guests.store, t) == "two"
        assert not users.exists()
        users.mkdir(mode=0o700)
        dead.write_text("killed\n/run/x\n")
        out = guests("gc").stdout
        assert f"removed stale template use entry {dead}" in out, out
        assert not users.exists()
    finally:
        shutil.rmtree(guests.store / "templates" / t, ignore_errors=True)
        shutil.rmtree(users, ignore_errors=True)
