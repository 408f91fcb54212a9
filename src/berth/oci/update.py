"""berth-runtime update ID [--resources FILE|-] [--memory N ...]: change a container's limits live."""

from __future__ import annotations

from berth.errors import UsageError
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context

# runc update's flags -> (section, key) of linux.resources
FIELDS = {
    "memory": ("memory", "limit"), "memory-reservation": ("memory", "reservation"),
    "memory-swap": ("memory", "swap"), "kernel-memory": ("memory", "kernel"),
    "cpu-shares": ("cpu", "shares"), "cpu-quota": ("cpu", "quota"), "cpu-period": ("cpu", "period"),
    "cpu-rt-runtime": ("cpu", "realtimeRuntime"), "cpu-rt-period": ("cpu", "realtimePeriod"),
    "cpuset-cpus": ("cpu", "cpus"), "cpuset-mems": ("cpu", "mems"),
    "pids-limit": ("pids", "limit"), "blkio-weight": ("blockIO", "weight"),
}  # fmt: skip
_STRINGS = {"cpuset-cpus", "cpuset-mems"}


def _number(flag: str, text: str) -> int:
    from berth.policy.units import parse_size

    if flag.startswith("memory") or flag == "kernel-memory":
        return -1 if text == "-1" else parse_size(flag, text)
    try:
        return int(text)
    except ValueError:
        raise UsageError(flag, f"{text!r} is not a number") from None


def resources_from(opts: dict[str, Any]) -> dict[str, Any]:
    import sys

    from berth.spec.jsontext import loads

    res: dict[str, Any] = {}
    src = opts.get("resources")
    if src:
        try:
            text = sys.stdin.read() if src == "-" else open(src).read()  # noqa: SIM115
            res = loads(text)
        except (OSError, ValueError) as e:
            raise UsageError("resources", f"cannot read {src!r}: {e}") from None
        if not isinstance(res, dict):
            raise UsageError("resources", f"{src!r}: must be a JSON object (linux.resources)")
    for flag, (section, key) in FIELDS.items():
        if flag in opts:
            value = opts[flag] if flag in _STRINGS else _number(flag, opts[flag])
            res.setdefault(section, {})[key] = value
    from berth.spec import validate_config
    from berth.spec.host import check_resources

    validate_config({"ociVersion": "1.0.0", "root": {"path": "rootfs"}, "linux": {"resources": res}})
    check_resources(res, "linux.resources")
    return res


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime.container import Container

    valued = {"resources": "resources", "r": "resources", **{k: k for k in FIELDS}}
    opts, rest = parse(argv, valued=valued)
    c = Container.load(ctx.root, need_id(rest, "update"))
    res = resources_from(opts)
    cg = c.cgroup()
    if cg is None:
        raise UsageError("ID", f"container {c.id!r} has no cgroup")
    cg.set(res)
    return 0
