"""berth restart NAME... [--timeout S]: stop, then start."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    p = Parser(prog="berth restart", description="restart guests")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--timeout", "-t", type=float, default=10.0, help="seconds before SIGKILL (default 10)")
    args = p.parse_args(argv)
    s = store()
    from berth.guests import config

    for name in args.names:  # a config that cannot be read stops nothing: it could not start again
        s.require(name)
        config.load(s.config(name))
    lifecycle.stop(s, args.names, timeout=args.timeout)
    from berth.cli import _guestspec

    for name in args.names:
        _guestspec.build(s, name)
    lifecycle.start(s, args.names)
    return 0
