"""berth set NAME --memory 1G ...: change resource limits live (no restart) and persist them."""

from __future__ import annotations

import sys

from berth.errors import UsageError


def main(argv: list[str]) -> int:
    from berth.cli import resources

    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: berth set NAME [resource flags of berth run]\n" + resources.HELP)
        return 0 if argv else 125
    name, rest = argv[0], argv[1:]
    items = []
    i = 0
    while i < len(rest):
        a = rest[i]
        key = a.split("=", 1)[0]
        if key not in resources.FLAGS:
            raise UsageError(a, "unknown resource flag (see 'berth set --help')")
        if "=" in a:
            items.append((key, a.split("=", 1)[1]))
        elif i + 1 < len(rest):
            items.append((key, rest[i + 1]))
            i += 1
        else:
            raise UsageError(a, "needs a value")
        i += 1
    if not items:
        raise UsageError("set", "nothing to set")
    from berth.cli import _guestspec
    from berth.cli._args import store
    from berth.guests import lifecycle

    s = store()
    live = lifecycle.set_resources(s, name, items, resources.parse(items))
    _guestspec.build(s, name)  # restarts by policy use the new limits too
    print(f"{name}: {'applied live and saved' if live else 'saved'}")
    return 0
