"""berth start NAME...: start guests; they keep running after berth exits (supervised by guestd)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from berth.guests.store import Store


def main(argv: list[str]) -> int:
    if argv and not any(a.startswith("-") for a in argv):
        status = _fast(argv)
        if status is not None:
            return status
    from berth.cli._args import Parser

    p = Parser(prog="berth start", description="start guests")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    _full(args.names)
    return 0


def _full(names: list[str]) -> None:
    from berth.cli._args import store
    from berth.guests import lifecycle

    # Each spec from the config as it is now (the user may have edited it), built just before
    # the guest's batch goes to guestd: the first guests start while the next are built.
    lifecycle.start(store(), names, prepare=preparer(store()))


def _fast(names: list[str]) -> int | None:
    """guestd's fast path (berth.guests.fastclient): no argparse, json or spec build in this
    process when guestd runs and the guests' specs are built from their inputs as they are now.
    Guests whose spec is stale take the full path; None: this path cannot be taken at all."""
    import sys

    from berth.cli import env_paths
    from berth.guests import fastclient

    root, state_root, parent = env_paths()
    replies = fastclient.start(root, state_root, parent, names, os.environ)
    if replies is None:
        return None
    todo = list(replies)
    errors = []
    stale = [n for n in todo if replies[n].get("stale")]
    if stale:
        from berth.errors import BerthError

        try:
            _full(stale)
        except BerthError as e:
            if len(todo) == 1:
                raise
            errors.append(f"start {stale[0]}: {e}" if len(stale) == 1 else str(e))
    for n in todo:
        r = replies[n]
        if not r.get("ok") and not r.get("stale"):
            if len(todo) == 1:
                sys.stderr.write(f"berth: {r.get('error')}\n")
                return int(r.get("status") or 125)
            errors.append(f"start {n}: {r.get('error')}")
    if errors:
        sys.stderr.write(f"berth: {'; '.join(errors)}\n")
        return 125
    return 0


def preparer(s: Store) -> Callable[[str], None]:
    """``prepare(name)``: build the guest's spec.json unless the one there was built from the
    same inputs (:func:`inputs`); a restart of an unchanged guest skips the build."""
    from berth.cli import _guestspec
    from berth.runtime import userns

    stamp = _code_stamp()
    ranges = userns.allocations(s.root)  # read once for the command, not once per guest

    def prepare(name: str) -> None:
        key, cfg = inputs(s, name, stamp, ranges.get(name))
        if not _guestspec.built_from(s, name, key, lxcfs=bool(cfg.get("lxcfs"))):
            _guestspec.build(s, name, inputs=key)

    return prepare


def inputs(s: Store, name: str, stamp: str, ids: tuple[int, int] | None) -> tuple[str, dict[str, Any]]:
    """A digest of what a guest's spec is built from (:func:`berth.guests.specinputs.inputs`),
    with this command's environment; and the config."""
    from berth.guests import specinputs

    return specinputs.inputs(s, name, stamp, ids, os.environ)


def _code_stamp() -> str:
    from berth.guests import specinputs

    return specinputs.code_stamp()
