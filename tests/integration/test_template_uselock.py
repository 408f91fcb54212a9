"""A template replace waits a bounded time for the starting `berth run`s that hold the
template's use lock: an init orphaned before its start finished (its `berth run` killed) keeps
that shared lock until it is killed, and the replace must then refuse with one line, not hang,
and leave the template and the templates directory as they were."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from test_templates import BUSYBOX

from berth.errors import InUseError
from berth.rootfs import template

pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="no busybox on the host")


def _listing(store: Path) -> list[str]:
    return sorted(n for n in os.listdir(store / "templates") if not n.endswith((".lock", ".use")))


def test_replace_refuses_when_the_use_lock_stays_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    template.build(str(store), "busybox")
    ino = (store / "templates" / "busybox" / "rootfs").stat().st_ino
    listing = _listing(store)
    monkeypatch.setattr(template, "USE_LOCK_WAIT", 0.3)
    # Another open file description: as an orphaned init's inherited hold would be.
    held = os.open(store / "templates" / ".busybox.use", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_SH)
        with pytest.raises(InUseError) as e:
            template.build(str(store), "busybox", force=True, users=lambda: None)
        assert "use lock" in str(e.value) and "nothing was changed" in str(e.value)
        assert "\n" not in str(e.value)
        assert (store / "templates" / "busybox" / "rootfs").stat().st_ino == ino
        assert _listing(store) == listing  # the built tree was removed, nothing half-swapped
    finally:
        os.close(held)
    template.build(str(store), "busybox", force=True, users=lambda: None)  # lock gone: it goes through
    assert (store / "templates" / "busybox" / "rootfs").stat().st_ino != ino
    assert _listing(store) == listing
