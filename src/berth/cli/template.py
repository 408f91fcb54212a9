"""berth template build|list|import."""

from __future__ import annotations

from berth.policy.units import column_size
from berth.rootfs import template

HELP_IMPORT = "an OCI image: oci:DIR (OCI image layout) or oci:FILE (docker save / podman save / OCI archive)"


def main(argv: list[str]) -> int:
    from berth.cli import env_paths
    from berth.cli._args import Parser
    from berth.errors import UsageError

    p = Parser(prog="berth template", description="root filesystem templates")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a template into the store")
    b.add_argument("name", choices=template.TEMPLATES)
    b.add_argument("--suite", help="the Debian suite of the debian template (default bookworm)")
    b.add_argument("--force", action="store_true", help="rebuild even if it exists")
    ls = sub.add_parser("list", help="list the templates in the store")
    ls.add_argument("--json", action="store_true")
    imp = sub.add_parser("import", help="import an OCI image as a template")
    imp.add_argument("source", metavar="oci:PATH", help=HELP_IMPORT)
    imp.add_argument("name", metavar="NAME")
    imp.add_argument("--force", action="store_true", help="replace a template of that name")
    args = p.parse_args(argv)
    store = env_paths()[0]
    if args.cmd == "build":
        if args.suite and args.name != "debian":
            raise UsageError("suite", "only the debian template has a suite")
        print(template.build(store, args.name, force=args.force, suite=args.suite))
        return 0
    if args.cmd == "import":
        kind, sep, path = args.source.partition(":")
        if not sep or kind != "oci" or not path:
            raise UsageError("source", f"{args.source!r}: expected oci:PATH")
        print(template.import_image(store, args.name, path, force=args.force))
        return 0
    rows = template.list_templates(store)
    if args.json:
        import json

        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'NAME':<24} {'KIND':<8} {'SIZE':>8}  SOURCE")
    for r in rows:
        src = r.get("source") or r.get("suite") or ""
        print(f"{r['name']:<24} {r['kind']:<8} {column_size(r['size']):>8}  {src}")
    return 0
