"""berth-runtime start ID: release a created container's process (runs poststart hooks)."""

from __future__ import annotations

from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime.container import Container

    _opts, rest = parse(argv)
    c = Container.load(ctx.root, need_id(rest, "start"))
    c.start(warn=ctx.log.warn)
    return 0
