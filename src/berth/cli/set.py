"""berth set NAME --memory 1G --net-rate 100mbit ...: change resource limits and bandwidth live
(no restart) and persist them."""

from __future__ import annotations

import sys

from berth.errors import UsageError

NET_FLAGS = {"--net-rate": "net_rate", "--net-ceil": "net_ceil", "--net-share": "net_share"}
NET_HELP = """
bandwidth (bridge guests; the HTB class is changed live):
  --net-rate RATE         guaranteed bandwidth, e.g. 100mbit
  --net-ceil RATE         bandwidth cap
  --net-share W           weight for spare bandwidth, 1…10000
"""


def main(argv: list[str]) -> int:
    from berth.cli import resources

    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: berth set NAME [resource flags of berth run]\n" + resources.HELP + NET_HELP)
        return 0 if argv else 125
    name, rest = argv[0], argv[1:]
    items = []
    net: dict[str, object] = {}
    i = 0
    while i < len(rest):
        a = rest[i]
        key = a.split("=", 1)[0]
        if key not in resources.FLAGS and key not in NET_FLAGS:
            raise UsageError(a, "unknown resource flag (see 'berth set --help')")
        if "=" in a:
            value = a.split("=", 1)[1]
        elif i + 1 < len(rest):
            value = rest[i + 1]
            i += 1
        else:
            raise UsageError(a, "needs a value")
        if key in NET_FLAGS:
            if key == "--net-share" and not value.isdigit():
                raise UsageError("net-share", f"{value!r} is not a whole number from 1 to 10000")
            net[NET_FLAGS[key]] = int(value) if key == "--net-share" else value
        else:
            items.append((key, value))
        i += 1
    if not items and not net:
        raise UsageError("set", "nothing to set")
    from berth.cli import _guestspec
    from berth.cli._args import store
    from berth.guests import lifecycle

    s = store()
    parsed = resources.parse(items) if items else None  # every value checked before any change
    live = False
    if net:
        live = lifecycle.set_net(s, name, net)
    if items:
        live = lifecycle.set_resources(s, name, items, parsed) or live
    _guestspec.build(s, name)  # restarts by policy use the new limits too
    print(f"{name}: {'applied live and saved' if live else 'saved'}")
    return 0
