"""berth gc: remove what crashes left behind (state, cgroups, disk mounts, loop devices) and
stop berth's lxcfs when no guest uses it any more."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    import os

    from berth.cli._args import Parser, store
    from berth.guests import lifecycle
    from berth.runtime import lxcfs

    Parser(
        prog="berth gc",
        description="remove what crashes left behind (state, cgroups, disk mounts, loop devices, "
        "network objects) and stop berth's lxcfs when no guest uses it (not within a minute of its start, "
        "nor while a berth process that may start a guest with it lives)",
    ).parse_args(argv)
    for line in lifecycle.gc(store()):
        print(line)
    done = lxcfs.stop_if_idle(os.environ.get("BERTH_LXCFS") or lxcfs.DEFAULT_MOUNTPOINT)
    if done:
        print(done)
    return 0
