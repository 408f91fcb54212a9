"""berth enter NAME: a login shell inside the guest (all its namespaces and its cgroup)."""

from __future__ import annotations

import os


def main(argv: list[str]) -> int:
    from berth.cli.exec import run_in
    from berth.errors import UsageError

    if len(argv) != 1 or argv[0].startswith("-"):
        raise UsageError("enter", "usage: berth enter NAME")
    tty = os.isatty(0)
    o = {"interactive": True, "tty": tty, "user": None, "workdir": None, "env": [], "args": ["/bin/sh", "-l"]}
    return run_in(argv[0], o)
