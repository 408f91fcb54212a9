"""berth-runtime delete [--force] ID: remove a stopped (or, forced, any) container."""

from __future__ import annotations

from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime.container import Container

    opts, rest = parse(argv, flags={"force": "force", "f": "force"})
    c = Container.load(ctx.root, need_id(rest, "delete"))
    c.delete(force=bool(opts.get("force")), warn=ctx.log.warn)
    return 0
