"""berth clone NAME NEW: a new guest with a copy of NAME's config and writable layer."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    p = Parser(prog="berth clone", description="clone a stopped guest")
    p.add_argument("name", metavar="NAME")
    p.add_argument("new", metavar="NEW")
    args = p.parse_args(argv)
    lifecycle.clone(store(), args.name, args.new)
    print(args.new)
    return 0
