"""berth receive --listen ADDR:PORT [--keep]: accept guests migrated from another berth host."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import migrate

    p = Parser(prog="berth receive", description="receive migrated guests")
    p.add_argument("--listen", required=True, metavar="ADDR:PORT")
    p.add_argument("--keep", action="store_true", help="keep listening after the first guest")

    def ready(addr: tuple) -> None:  # type: ignore[type-arg]
        sys.stdout.write(f"listening on {addr[0]}:{addr[1]}\n")
        sys.stdout.flush()

    args = p.parse_args(argv)
    for name in migrate.receive(store(), args.listen, once=not args.keep, ready=ready):
        print(f"received {name}")
    return 0
