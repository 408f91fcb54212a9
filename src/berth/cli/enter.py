"""berth enter NAME: a login shell inside the guest (all its namespaces and its cgroup)."""

from __future__ import annotations

import os

USAGE = """usage: berth enter NAME

A login shell (/bin/sh -l) in the running guest NAME: all its namespaces, its cgroup, its
capabilities and seccomp profile; on a terminal when stdin is one (berth exec for a command)."""


def main(argv: list[str]) -> int:
    from berth.cli.exec import run_in
    from berth.errors import UsageError

    if argv in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not argv:
        raise UsageError("NAME", "missing: berth enter NAME")
    if argv[0].startswith("-"):
        raise UsageError(argv[0], "unknown option (berth enter NAME)")
    if len(argv) != 1:
        raise UsageError("NAME", f"one guest name, not {len(argv)}: berth enter NAME")
    tty = os.isatty(0)
    o = {"interactive": True, "tty": tty, "user": None, "workdir": None, "env": [], "args": ["/bin/sh", "-l"]}
    return run_in(argv[0], o)
