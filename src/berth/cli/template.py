"""berth template build|list|import."""

from __future__ import annotations

import os

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
    store, state_root, _ = env_paths()
    if args.cmd == "build":
        if args.suite and args.name != "debian":
            raise UsageError("suite", "only the debian template has a suite")
        users = lambda: user_of(store, state_root, args.name)  # noqa: E731
        print(template.build(store, args.name, force=args.force, suite=args.suite, users=users))
        return 0
    if args.cmd == "import":
        kind, sep, path = args.source.partition(":")
        if not sep or kind != "oci" or not path:
            raise UsageError("source", f"{args.source!r}: expected oci:PATH")
        users = lambda: user_of(store, state_root, args.name)  # noqa: E731
        print(template.import_image(store, args.name, path, force=args.force, users=users))
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


def user_of(store: str, state_root: str, name: str) -> str | None:
    """One user of template ``name``, in words, or None: a guest of the store made from it, in
    any state (a stopped guest's writable layer needs its lower layer to start again), then a
    live ``berth run`` whose overlay is on it (its state names the template's rootfs:
    :data:`berth.rootfs.template.TEMPLATE_ANNOTATION`).  A guest whose config cannot be read
    counts (it may be one)."""
    from berth.errors import BerthError
    from berth.guests import config
    from berth.guests.store import Store
    from berth.runtime import state as st

    s = Store(store, state_root)
    for guest in s.names():
        try:
            used = config.load(s.config(guest))["template"] == name
        except (BerthError, OSError, KeyError):
            return f"guest {guest!r} (its config cannot be read)"
        if used:
            return f"guest {guest!r}"
    rootfs = os.path.realpath(template.template_rootfs(store, name))
    for cid in st.ids(state_root):
        try:
            data = st.read(state_root, cid)
        except BerthError:
            continue
        lower = (data.get("annotations") or {}).get(template.TEMPLATE_ANNOTATION)
        if not isinstance(lower, str) or os.path.realpath(lower) != rootfs:
            continue
        owner = bool((data.get("berth") or {}).get("owner"))
        live = (
            not st.creator_gone(data)
            if data.get("status") == st.CREATING
            else st.alive(data) or (owner and not st.owner_gone(data))
        )
        if live:
            return f"berth run {cid!r}"
    return None
