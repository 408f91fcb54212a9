"""berth list [--json]: every guest with its state (reconciled: a dead init shows as stopped).

A guest whose config.toml cannot be read (an empty file, a bad hand edit) does not hide the
others: it is listed with the state ``broken`` (with ``--json``, its ``error``), the reason is
one line on stderr (``berth list: guest 'NAME': …``), and the exit status stays 0 (the list
itself was made; ``berth info NAME`` fails on it with status 125).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.guests.store import Store


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.0f}T"


def row(s: Store, name: str) -> dict[str, Any]:
    """The guest's status, or for one that cannot be read a ``broken`` row with its ``error``."""
    from berth.errors import BerthError
    from berth.guests import instance, lifecycle

    try:
        return lifecycle.status(s, name)
    except (BerthError, OSError) as e:
        error = str(e)
    pid = None
    try:  # its run record may still say where it runs
        rec = lifecycle.reconcile(s, name)
        pid = rec.get("pid") if instance.running(rec) else None
    except (BerthError, OSError, ValueError):
        pass
    return {"name": name, "state": "broken", "error": error, "pid": pid, "template": "-", "uptime": None,
            "memory": None}  # fmt: skip


def main(argv: list[str]) -> int:
    import sys

    from berth.cli._args import Parser, store
    from berth.guests import client

    p = Parser(prog="berth list", description="list guests")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    s = store()
    rows = [row(s, n) for n in s.names()]
    for r in rows:
        if r["state"] == "broken":
            sys.stderr.write(f"berth list: guest {r['name']!r}: {r['error']}\n")
    if any(r["state"] == "running" or r["pid"] for r in rows):
        client.ensure(s)  # re-adopt: a running guest always has a supervisor
    if args.json:
        import json

        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'NAME':<24} {'STATE':<8} {'PID':>7} {'IPS':<16} {'TEMPLATE':<10} {'UPTIME':>8} {'MEMORY':>7}")
    for r in rows:
        up = f"{r['uptime']:.0f}s" if r["uptime"] is not None else "-"
        ips = ",".join(r.get("ips") or []) or ("host" if r.get("net") == "host" else "-")
        print(
            f"{r['name']:<24} {r['state']:<8} {r['pid'] or '-':>7} {ips:<16} {r['template']:<10} {up:>8} "
            f"{_human(r['memory']):>7}"
        )
    return 0
