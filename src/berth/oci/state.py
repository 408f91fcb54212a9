"""berth-runtime state ID: the runtime spec's state JSON (plus runc's rootfs, created, owner)."""

from __future__ import annotations

from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context


def describe(c: Any) -> dict[str, Any]:
    """The state as runc prints it (containerd's go-runc parses ``created`` as RFC 3339)."""
    import time

    state = c.oci_state()
    berth = c.data.get("berth") or {}
    created = float(berth.get("created") or 0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1e9):09d}Z"
    if not state.get("annotations"):
        del state["annotations"]  # optional; runc leaves it out when empty
    state["rootfs"] = berth.get("rootfs", "")
    state["created"] = stamp
    state["owner"] = ""
    return state


def main(ctx: Context, argv: list[str]) -> int:
    import json

    from berth.runtime.container import Container

    _opts, rest = parse(argv)
    c = Container.load(ctx.root, need_id(rest, "state"))
    print(json.dumps(describe(c), indent=2))
    return 0
