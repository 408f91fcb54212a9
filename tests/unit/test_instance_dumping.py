"""A guest being dumped (checkpoint, migrate) refuses exec and kill while the dumping command
holds its lock (berth.guests.instance.dumping); a mark left by a command killed half-way does not
count."""

from __future__ import annotations

import os
from pathlib import Path

from berth.guests.instance import dumping
from berth.guests.store import Store


def test_the_mark_counts_only_while_the_lock_is_held(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"), str(tmp_path / "run"))
    assert not dumping(store, "g", {"status": "running"})
    assert not dumping(store, "g", {"dumping": True})  # stale: nobody holds the lock
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the dumping command: holds the guest's lock until told to go
        try:
            os.close(r)
            lock = store.lock("g")
            lock.acquire()
            os.write(w, b"x")
            import time

            time.sleep(30)  # (killed by the test)
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        assert dumping(store, "g", {"dumping": True})
        assert not dumping(store, "g", {"dumping": False})
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
    assert not dumping(store, "g", {"dumping": True})  # the command is gone: the mark is stale


def test_guestd_looks_for_the_receive_mark_berth_writes() -> None:
    """guestd (which imports none of berth's modules) names the receive mark itself."""
    from berth.guests import daemon, instance, migrate

    assert daemon.RECEIVE_MARK == instance.RECEIVE_MARK == migrate.RECEIVING
