"""berth template build|list."""

from __future__ import annotations

import argparse
import os

from berth.cli import env_paths
from berth.rootfs import template


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="berth template", description="root filesystem templates")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a template into the store")
    b.add_argument("name", choices=template.TEMPLATES)
    b.add_argument("--force", action="store_true", help="rebuild even if it exists")
    sub.add_parser("list", help="list the templates in the store")
    args = p.parse_args(argv)
    store = env_paths()[0]
    if args.cmd == "build":
        print(template.build(store, args.name, force=args.force))
        return 0
    tdir = os.path.join(store, "templates")
    for name in sorted(os.listdir(tdir)) if os.path.isdir(tdir) else []:
        if not name.startswith("."):
            print(name)
    return 0
