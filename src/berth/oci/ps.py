"""berth-runtime ps [--format table|json] ID [PS ARGS...]: the container's processes."""

from __future__ import annotations

from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def main(ctx: Context, argv: list[str]) -> int:
    import json
    import subprocess

    from berth.runtime.container import Container

    opts, rest = parse(argv, valued={"format": "format", "f": "format"})
    c = Container.load(ctx.root, need_id(rest, "ps"))
    cg = c.cgroup()
    pids = sorted(cg.pids()) if cg is not None else ([c.pid] if c.pid else [])
    if opts.get("format") == "json":
        print(json.dumps(pids))
        return 0
    out = subprocess.run(["ps", *(rest[1:] or ["-ef"])], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    col = header.index("PID") if "PID" in header else 1
    print(lines[0])
    wanted = {str(p) for p in pids}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col] in wanted:
            print(line)
    return 0
