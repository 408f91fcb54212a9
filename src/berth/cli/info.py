"""berth info NAME [--json]: a guest's config, state and own disk use."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    p = Parser(prog="berth info", description="show a guest")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    s = store()
    s.require(args.name)
    info = lifecycle.status(s, args.name)
    info["disk_use"] = lifecycle.disk_use(s, args.name)
    info["config"] = s.config(args.name)
    info["log"] = s.log(args.name)
    if args.json:
        import json

        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0
