"""berth-runtime delete [--force] ID: remove a stopped (or, forced, any) container."""

from __future__ import annotations

from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def main(ctx: Context, argv: list[str]) -> int:
    from berth.errors import NotFoundError
    from berth.runtime import state as st
    from berth.runtime.container import Container

    opts, rest = parse(argv, flags={"force": "force", "f": "force"})
    cid = need_id(rest, "delete")
    force = bool(opts.get("force"))
    try:
        c = Container.load(ctx.root, cid)
    except NotFoundError:
        if not force:
            raise
        # As runc: a forced delete of a container that does not exist succeeds (containerd's
        # shim runs it when cleaning up after a task already deleted), removing what an
        # aborted create may have left of its state directory.
        st.remove_tree(st.container_dir(ctx.root, cid))
        return 0
    c.delete(force=force, warn=ctx.log.warn)
    return 0
