"""berth start NAME...: start guests; they keep running after berth exits (supervised by guestd)."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    p = Parser(prog="berth start", description="start guests")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    from berth.cli import _guestspec

    s = store()
    for name in args.names:
        _guestspec.build(s, name)  # from the config as it is now (the user may have edited it)
    lifecycle.start(s, args.names)
    return 0
