"""Names of what the lab makes on the host (scratch directories, runsc containers).

All start with ``$BERTH_LAB_PREFIX`` (default ``berth-lab``), so a test session can give its
own prefix and check for leftovers of its own without seeing a benchmark running beside it.
"""

from __future__ import annotations

import os


def prefix(kind: str) -> str:
    """The prefix of a scratch directory or container of ``kind`` (qemu, uml, runsc, peers)."""
    return f"{os.environ.get('BERTH_LAB_PREFIX') or 'berth-lab'}-{kind}-"
