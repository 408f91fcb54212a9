"""berth-runtime resume ID: thaw a paused container."""

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
    c = Container.load(ctx.root, need_id(rest, "resume"))
    status = c.status()
    if not st.can_resume(status):
        raise StateError(f"container {c.id!r} is {status}: only a paused container can be resumed")
    c.cgroup().thaw()
    c.data["status"] = st.RUNNING
    c.save()
    return 0
