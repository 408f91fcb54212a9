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
