"""berth list [--json]: every guest with its state (reconciled: a dead init shows as stopped)."""

from __future__ import annotations


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.0f}T"


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import client, lifecycle

    p = Parser(prog="berth list", description="list guests")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    s = store()
    rows = [lifecycle.status(s, n) for n in s.names()]
    if any(r["state"] == "running" for r in rows):
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
