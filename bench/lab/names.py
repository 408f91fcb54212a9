"""Names of what the lab makes on the host (scratch directories, runsc containers, network devices).

All start with ``$BERTH_LAB_PREFIX`` (default ``berth-lab``), so a test session can give its
own prefix and check for leftovers of its own without seeing a benchmark running beside it.
"""

from __future__ import annotations

import hashlib
import os
import secrets


def prefix(kind: str) -> str:
    """The prefix of a scratch directory or container of ``kind`` (qemu, uml, runsc, peers)."""
    return f"{os.environ.get('BERTH_LAB_PREFIX') or 'berth-lab'}-{kind}-"


def ifname_prefix() -> str:
    """The start of every network device or netns name the lab makes (taps, veths, netns).

    Interface names have 15 characters at most, too few for the prefix itself: ``bl`` and four
    hex digits of its hash stand for it, so a session still finds only its own devices.
    """
    p = os.environ.get("BERTH_LAB_PREFIX") or "berth-lab"
    return "bl" + hashlib.sha1(p.encode()).hexdigest()[:4]


def ifname(kind: str) -> str:
    """A fresh device or netns name of ``kind`` (up to 3 letters: tap, veh, ns): 13 characters."""
    return f"{ifname_prefix()}{kind[:3]}{secrets.token_hex(2)}"
