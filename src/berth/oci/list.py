"""berth-runtime list [--format table|json] [-q]: the containers under --root."""

from __future__ import annotations

from berth.oci.args import parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def main(ctx: Context, argv: list[str]) -> int:
    import json

    from berth.errors import BerthError
    from berth.oci.state import describe
    from berth.runtime import state as st
    from berth.runtime.container import Container

    opts, _rest = parse(
        argv, valued={"format": "format", "f": "format"}, flags={"quiet": "quiet", "q": "quiet"}
    )
    rows = []
    for cid in st.ids(ctx.root):
        try:
            row = describe(Container.load(ctx.root, cid))
        except BerthError:
            continue
        row["owner"] = _owner(st.container_dir(ctx.root, cid))  # as runc's list (its state: "")
        rows.append(row)
    if opts.get("quiet"):
        for r in rows:
            print(r["id"])
    elif opts.get("format") == "json":
        print(json.dumps(rows))
    else:
        fmt = "{:<24} {:<8} {:<10} {:<40} {:<32} {}"
        print(fmt.format("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"))
        for r in rows:
            print(fmt.format(r["id"], r["pid"], r["status"], r["bundle"], r["created"], r["owner"]))
    return 0


def _owner(path: str) -> str:
    """The name of the user owning ``path`` (the uid if it has none)."""
    import os
    import pwd

    try:
        uid = os.stat(path).st_uid
    except OSError:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
