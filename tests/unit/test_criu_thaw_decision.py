"""Which frozen cgroup a settle of a checkpoint cut short thaws (berth.guests.migrate.
thaws_criu_freeze): CRIU's freeze only (R19 F6) — not when CRIU seized the processes with ptrace
(it froze nothing), not a guest paused before the checkpoint, not one an operator paused since
(``berth-runtime pause``: its state records "paused"; CRIU's freeze leaves "running")."""

from __future__ import annotations

import pytest

from berth.guests.migrate import thaws_criu_freeze


@pytest.mark.parametrize(
    ("pend", "recorded", "thaw"),
    [
        ({"criu_freezes": True, "paused": False}, "running", True),
        ({"criu_freezes": True, "paused": False}, None, True),  # no state to read: CRIU's
        ({"criu_freezes": False, "paused": False}, "running", False),  # ptrace: not CRIU's freeze
        ({"criu_freezes": True, "paused": True}, "running", False),  # paused before the dump
        ({"criu_freezes": True, "paused": False}, "paused", False),  # paused by an operator since
        ({"paused": False}, "running", True),  # an older berth's mark: CRIU may have frozen it
        ({"paused": False}, "paused", False),
    ],
)
def test_thaws_criu_freeze(pend: dict, recorded: str | None, thaw: bool) -> None:
    assert thaws_criu_freeze(pend, recorded) is thaw
