"""berth gc: remove what crashes left behind (state, cgroups, disk mounts, loop devices)."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    Parser(prog="berth gc", description="clean up leftovers").parse_args(argv)
    for line in lifecycle.gc(store()):
        print(line)
    return 0
