"""berth kill NAME [--signal S]: send a signal to the guest's init (default SIGKILL)."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    p = Parser(prog="berth kill", description="signal a guest's init")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--signal", "-s", default="KILL", help="signal name or number (default KILL)")
    args = p.parse_args(argv)
    lifecycle.kill(store(), args.name, lifecycle.parse_signal(args.signal))
    return 0
