"""berth top: a live, refreshing full-screen view of every guest (rich).

Keys: q quit, c sort by CPU, m by memory, n by name.  ``--once`` prints one frame and exits (for
scripts); CPU % needs two samples, so ``--once`` takes them ``--interval`` apart (at most 1 s).
"""

from __future__ import annotations

import os
import sys
import time

from berth.cli._args import seconds_option
from berth.errors import UsageError
from berth.policy.units import column_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HELP = """usage: berth top [--once] [--interval SECONDS]

A live view of every guest: name, state, init pid, CPU %, memory (use/limit), processes,
uptime, addresses, template.  Keys: q quit, c sort by CPU, m by memory, n by name.
A guest whose config.toml cannot be read is shown (template '?') with the reason under
the table (with --once, one line on stderr).

  --once              print one frame and exit
  --interval SECONDS  refresh period (default 1; 0.1 to 60)
"""

SORTS = {
    "n": ("name", lambda r: r["name"]),
    "c": ("cpu", lambda r: (-(r["cpu_percent"] or 0), r["name"])),
    "m": ("memory", lambda r: (-(r["memory"] or 0), r["name"])),
}


def parse(argv: list[str]) -> dict[str, Any]:
    o: dict[str, Any] = {"once": False, "interval": 1.0}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            sys.stdout.write(HELP)
            raise SystemExit(0)
        if a == "--once":
            o["once"] = True
        elif a == "--interval" or a.startswith("--interval="):
            o["interval"], i = seconds_option(argv, i, 0.1, 60)
        else:
            raise UsageError(a, "unknown option (see 'berth top --help')")
        i += 1
    return o


def _uptime(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _host() -> str:
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "-"
    mem = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                mem[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    used = mem.get("MemTotal", 0) - mem.get("MemAvailable", 0)
    return f"load {load}   host memory {column_size(used)}/{column_size(mem.get('MemTotal'))}"


def render(rows: list[dict[str, Any]], sort: str = "n", interval: float = 1.0, notes: bool = True) -> Any:
    """One frame: a rich renderable (header + table; with ``notes``, a line for each guest whose
    config.toml cannot be read, under the table)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    label, key = SORTS[sort]
    running = sum(r["state"] == "running" for r in rows)
    header = Text.assemble(
        ("berth top", "bold"),
        f"  {len(rows)} guests, {running} running   {_host()}   every {interval:g}s, sorted by {label}",
    )
    t = Table(expand=True, box=None, header_style="bold reverse", pad_edge=False)
    for col, just in (
        ("NAME", "left"), ("STATE", "left"), ("PID", "right"), ("CPU%", "right"), ("MEM", "right"),
        ("LIMIT", "right"), ("PIDS", "right"), ("UPTIME", "right"), ("IPS", "left"), ("TEMPLATE", "left"),
    ):  # fmt: skip
        t.add_column(col, justify=just, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    style = {"running": "green", "starting": "yellow", "stopped": "dim"}
    for r in sorted(rows, key=key):
        cpu = r["cpu_percent"]
        t.add_row(
            r["name"],
            Text(r["state"], style=style.get(r["state"], "")),
            str(r["pid"] or "-"),
            "-" if cpu is None else f"{cpu:.1f}",
            column_size(r["memory"]),
            column_size(r["memory_limit"])
            if r["memory_limit"]
            else ("max" if r["state"] == "running" else "-"),
            "-" if r["pids"] is None else f"{r['pids']}" + (f"/{r['pids_limit']}" if r["pids_limit"] else ""),
            _uptime(r["uptime"]),
            ",".join(r["ips"]) or "-",
            r["template"],
        )
    footer = Text("q quit   c sort by CPU   m by memory   n by name", style="dim")
    broken = [
        Text(f"guest {r['name']!r}: {r['error']}", style="red") for r in rows if notes and r.get("error")
    ]
    return Group(header, t, *broken, footer)


class _Keys:
    """Single key presses from a terminal (cbreak mode while open); nothing when stdin is no tty."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else -1
        self.saved: Any = None

    def __enter__(self) -> _Keys:
        if self.fd >= 0:
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def wait(self, timeout: float) -> str:
        """A key pressed within ``timeout`` seconds, '' if none."""
        import select

        if self.fd < 0:
            time.sleep(timeout)
            return ""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return os.read(self.fd, 32).decode(errors="replace")[-1:] if ready else ""


def main(argv: list[str]) -> int:
    from berth.cli._args import store
    from berth.monitor.sample import Sampler

    o = parse(argv)
    sampler = Sampler(store())
    from rich.console import Console

    if o["once"]:
        sampler.sample()
        time.sleep(min(o["interval"], 1.0))
        width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 160)
        rows = sampler.sample()
        for r in rows:  # a guest whose config cannot be read: shown, and why on one line
            if r.get("error"):
                sys.stderr.write(f"berth top: guest {r['name']!r}: {r['error']}\n")
        Console(width=width).print(render(rows, "n", o["interval"], notes=False))
        return 0
    from rich.live import Live

    console = Console()
    sort = "n"
    rows = sampler.sample()
    with _Keys() as keys, Live(render(rows, sort, o["interval"]), console=console, screen=True,
                               auto_refresh=False) as live:  # fmt: skip
        deadline = time.monotonic() + o["interval"]
        while True:
            key = keys.wait(max(0.0, deadline - time.monotonic())).lower()
            if key in ("q", "\x03", "\x04"):
                return 0
            if key in SORTS:
                sort = key
            elif time.monotonic() < deadline:
                continue
            if time.monotonic() >= deadline:
                rows = sampler.sample()
                deadline = time.monotonic() + o["interval"]
            live.update(render(rows, sort, o["interval"]), refresh=True)
