"""berth info NAME [--json]: a guest's config, state, own disk use, addresses and (running, with
bandwidth settings) its HTB class tree."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.guests.store import Store


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
    info["resources"] = _resources(s, args.name)
    info.update(_isolation(s, args.name))
    net = lifecycle.net_info(s, args.name)
    if net is not None:
        info["network"] = net
    if args.json:
        import json

        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        if key == "network":
            _print_network(value)
        elif key == "resources":
            print(f"resources: {' '.join(f'--{k} {v}' for k, v in value.items()) or 'none set'}")
        else:
            print(f"{key}: {value}")
    return 0


def _resources(s: Store, name: str) -> dict:
    """The guest's resource flags, from its config ({"pids-limit": "4096", ...}; a guest
    created by a berth before the default pids limit may have none)."""
    from berth.guests import config

    return {k: str(v) for k, v in config.load(s.config(name)).get("resources", {}).items()}


def _isolation(s: Store, name: str) -> dict:
    """``userns``: the guest's host id range START:SIZE, or ``host`` (root inside is the host's
    root); ``lxcfs``: on (the mount point its views come from) or off."""
    import json
    import os

    from berth.guests import config, lifecycle

    cfg = config.load(s.config(name))
    out: dict = {"userns": "host"}
    if config.userns_mode(cfg, s.config(name)) != "host":
        rng = lifecycle.id_range(s, name)
        out["userns"] = f"{rng[0]}:{rng[1]}" if rng else "none allocated"
    try:
        with open(os.path.join(s.dir(name), "spec.json")) as f:
            point = json.load(f).get("lxcfs")
    except (OSError, ValueError):
        point = None
    out["lxcfs"] = f"on ({point})" if point else ("off (lxcfs could not run)" if cfg.get("lxcfs") else "off")
    return out


def _print_network(net: dict) -> None:
    from berth.policy.units import format_rate

    def rate(v: int | None) -> str:
        return format_rate(v) if v is not None else "-"

    what = {k: net.get(k) for k in ("mode", "ip", "ip6", "addrs", "veth", "isolate", "publish") if net.get(k)}
    print(f"network: {' '.join(f'{k}={v}' for k, v in what.items())}")
    if net.get("rate_bps") is not None or net.get("ceil_bps") is not None:
        print(
            f"bandwidth: rate={rate(net.get('rate_bps'))} ceil={rate(net.get('ceil_bps'))} share={net.get('share')}"
        )
    classes = net.get("htb") or []
    if classes:
        print("htb classes (guests' egress, on the IFB):")
        kids: dict[str, list[dict]] = {}
        for c in classes:
            kids.setdefault(c["parent"], []).append(c)
        ids = {c["classid"] for c in classes}

        def walk(c: dict, depth: int) -> None:
            print(f"  {'  ' * depth}{c['classid']}  rate {rate(c['rate_bps'])}  ceil {rate(c['ceil_bps'])}")
            for k in sorted(kids.get(c["classid"], []), key=lambda x: x["classid"]):
                walk(k, depth + 1)

        for c in sorted(classes, key=lambda x: x["classid"]):
            if c["parent"] not in ids:
                walk(c, 0)
