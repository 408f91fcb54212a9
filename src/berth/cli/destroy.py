"""berth destroy NAME... [--force]: remove guests, their writable layer and config."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    p = Parser(prog="berth destroy", description="remove guests")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", "-f", action="store_true", help="stop a running guest first")
    args = p.parse_args(argv)
    s = store()
    for name in args.names:
        lifecycle.destroy(s, name, force=args.force)
    return 0
