"""berth-runtime pause ID: freeze every process of the container (cgroup freezer)."""

from __future__ import annotations

from berth.errors import StateError
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime import state as st
    from berth.runtime.container import Container

    _opts, rest = parse(argv)
    c = Container.load(ctx.root, need_id(rest, "pause"))
    status = c.status()
    if not st.can_pause(status):
        raise StateError(f"container {c.id!r} is {status}: only a running container can be paused")
    c.cgroup().freeze()
    c.data["status"] = st.PAUSED
    c.save()
    return 0
