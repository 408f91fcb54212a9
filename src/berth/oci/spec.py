"""berth-runtime spec [--bundle DIR] [--rootless]: write runc's default config.json."""

from __future__ import annotations

import os

from berth.errors import ExistsError
from berth.oci.args import parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def main(ctx: Context, argv: list[str]) -> int:
    import json

    from berth.spec import runc_spec

    opts, _rest = parse(argv, valued={"bundle": "bundle", "b": "bundle"}, flags={"rootless": "rootless"})
    path = os.path.join(opts.get("bundle") or ".", "config.json")
    if os.path.exists(path):
        raise ExistsError(f"{path} exists: remove it first")
    spec = runc_spec(rootless=bool(opts.get("rootless")), uid=os.getuid(), gid=os.getgid())
    with open(path, "w") as f:
        json.dump(spec, f, indent="\t")
        f.write("\n")
    return 0
