"""Watching guests: berth top (one frame for scripts with --once, and the live full-screen view
driven in tmux), and guestd's ANON supervisor (the watching that acts)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import test_guests
from test_guests import Guests, berth_cmd

guests = test_guests.guests  # the fixture


def _row(text: str, name: str) -> list[str]:
    for line in text.splitlines():
        if line.split()[:1] == [name]:
            return line.split()
    raise AssertionError(f"no row for {name} in:\n{text}")


def test_top_once_shows_every_guest(guests: Guests) -> None:
    busy, idle, off = guests.name("busy"), guests.name("idle"), guests.name("off")
    guests("create", busy, "--cmd", "sh -c 'while :; do :; done'", "--memory", "64M")
    guests("create", idle, "--cmd", "sleep 1000")
    guests("create", off, "--cmd", "sleep 1000")
    guests("start", busy, idle)
    pids = {n: guests.info(n)["pid"] for n in (busy, idle)}
    out = guests("top", "--once", "--interval", "0.5").stdout
    assert "berth top" in out and "NAME" in out
    for n in (busy, idle):
        row = _row(out, n)
        assert row[1] == "running" and row[2] == str(pids[n]), row
    b = _row(out, busy)
    assert float(b[3]) > 5, b  # a busy loop (on a loaded 2-CPU host: not always most of a CPU)
    assert b[5] == "64.0M", b  # its memory limit
    assert float(_row(out, idle)[3]) < 20
    assert _row(out, off)[1:3] == ["stopped", "-"]
    r = guests("top", "--interval", "0", check=False)
    assert r.returncode == 125 and "interval" in r.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make setup-test)")
def test_top_live_in_tmux_quits_on_q(guests: Guests, unique: str) -> None:
    a, b = guests.name("a"), guests.name("b")
    for n in (a, b):
        guests("create", n, "--cmd", "sleep 1000")
    guests("start", a, b)
    sock = f"{unique}-top"  # a private tmux server: never the user's
    tmux = ["tmux", "-L", sock]
    cmd = " ".join([*berth_cmd(), "top", "--interval", "0.3"])
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "top", "-x", "180", "-y", "40", cmd], env=guests.env, check=True
    )
    try:

        def screen() -> str:
            return subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True, check=False
            ).stdout

        text = guests.wait(
            lambda: (s := screen()) and a in s and b in s and s, timeout=15, what="both guests on screen"
        )
        assert "berth top" in text and "running" in text
        # It refreshes: a guest that stops shows as stopped.
        guests("stop", "--timeout", "1", b)
        guests.wait(lambda: _row(screen(), b)[1] == "stopped", timeout=10, what="the stopped guest")
        subprocess.run([*tmux, "send-keys", "-t", "top", "m"], check=True)
        guests.wait(lambda: "sorted by memory" in screen(), timeout=5, what="sort by memory")
        subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True)

        def gone() -> bool:
            return (
                subprocess.run(
                    [*tmux, "has-session", "-t", "top"], capture_output=True, check=False
                ).returncode
                != 0
            )

        guests.wait(gone, timeout=5, what="top to quit on q")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, check=False)


def test_guestd_enforces_anon_memory(guests: Guests) -> None:
    n = guests.name("anon")
    guests("create", n, "--cmd", "sleep 1000", "--anon-memory", "32M")
    guests("start", n)
    pid = guests.info(n)["pid"]
    # A shell holding ~96 MiB in a variable: anonymous memory, three times the limit.
    t0 = time.monotonic()
    r = guests(
        "exec",
        n,
        "--",
        "sh",
        "-c",
        "v=$(head -c 100000000 /dev/zero | tr '\\0' x); echo survived",
        check=False,
    )
    took = time.monotonic() - t0
    assert "survived" not in r.stdout, r
    assert r.returncode == 137, r
    log = guests.wait(
        lambda: (t := guests("logs", n).stdout) and "anon memory" in t and t, timeout=5, what="the report"
    )
    line = next(ln for ln in log.splitlines() if "anon memory" in ln)
    assert (
        line.startswith(f"berth: guest {n}: anon memory ") and "over its 32 MiB limit: killed pid" in line
    ), line
    print(f"anon overrun killed in {took:.1f}s: {line}")
    info = guests.info(n)
    assert info["state"] == "running" and info["pid"] == pid  # only the hog was killed
    # Within the limit, nothing is killed.
    assert (
        guests("exec", n, "--", "sh", "-c", "v=$(head -c 8000000 /dev/zero | tr '\\0' x); echo ok").stdout
        == "ok\n"
    )
