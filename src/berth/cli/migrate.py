"""berth migrate NAME --to ADDR:PORT [--live|--stop-and-copy]: move a running guest to
another berth host (``berth receive`` there); it is removed here only once it runs there."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import migrate

    p = Parser(prog="berth migrate", description="live-migrate a guest to another host")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", required=True, metavar="ADDR:PORT", help="where 'berth receive' listens")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--live", dest="live", action="store_true", default=True, help="pre-copy (default)")
    mode.add_argument("--stop-and-copy", dest="live", action="store_false", help="no pre-copy")
    p.add_argument("--max-downtime", metavar="DURATION", help="accepted: the pre-copy target (e.g. 200ms)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for each network step")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="the shared token 'berth receive --token-file' was given (authenticates this host with "
        "an HMAC-SHA256 of the stream's nonce)",
    )
    p.add_argument("--timings", action="store_true", help="print the time of each phase (JSON)")
    args = p.parse_args(argv)
    token = migrate.read_token(args.token_file) if args.token_file else None
    t = migrate.migrate(store(), args.name, args.to, live=args.live, timeout=args.timeout, token=token)
    print(
        f"{args.name}: migrated to {args.to}: downtime {t['downtime'] * 1000:.0f} ms, "
        f"total {t['total'] * 1000:.0f} ms, {t['bytes'] / 1048576:.1f} MiB"
    )
    if args.timings:
        import json

        print(json.dumps({k: round(v, 4) for k, v in t.items()}))
    return 0
