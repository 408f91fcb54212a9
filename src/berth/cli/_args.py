"""An argparse parser whose errors are berth's usage errors (one line, exit status 125)."""

from __future__ import annotations

import argparse

from berth.errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(self.prog, message)


def store():
    """The store, state root and cgroup parent from the environment."""
    from berth.cli import env_paths
    from berth.guests.store import Store

    root, state_root, parent = env_paths()
    return Store(root, state_root, parent)


def seconds_option(
    argv: list[str], i: int, low: float, high: float, field: str = "interval"
) -> tuple[float, int]:
    """The value of ``--interval S`` / ``--interval=S`` at ``argv[i]``, checked to lie in [low, high];
    returns (seconds, index of the last word used)."""
    a = argv[i]
    if "=" in a:
        val = a.split("=", 1)[1]
    else:
        i += 1
        if i >= len(argv):
            raise UsageError(field, "needs a value")
        val = argv[i]
    try:
        seconds = float(val)
    except ValueError:
        raise UsageError(field, f"{val!r} is not a number of seconds") from None
    if not low <= seconds <= high:
        raise UsageError(field, f"{val!r} must be from {low:g} to {high:g} seconds")
    return seconds, i
