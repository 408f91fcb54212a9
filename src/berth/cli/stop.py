"""berth stop NAME... [--timeout S]: SIGTERM to the guest's init, SIGKILL to all after S seconds."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    p = Parser(prog="berth stop", description="stop guests")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--timeout", "-t", type=float, default=10.0, help="seconds before SIGKILL (default 10)")
    args = p.parse_args(argv)
    s = store()
    lifecycle.stop(s, args.names, timeout=args.timeout)
    return 0
