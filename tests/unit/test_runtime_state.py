"""The runtime's state.json: a missing or damaged one reads as a clear error (which `berth gc`
takes as a state to remove)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth.errors import NotFoundError
from berth.runtime import state as st


def test_a_missing_state_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        st.read(str(tmp_path), "c1")


def test_a_damaged_state_is_named(tmp_path: Path) -> None:
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "state.json").write_text("{not json")
    with pytest.raises(NotFoundError, match="c1.*damaged"):
        st.read(str(tmp_path), "c1")


def test_owner_gone() -> None:
    """berth run's containers record their owner (pid, start time): gone once that process is."""
    me = [os.getpid(), st.proc_start_time(os.getpid())]
    assert not st.owner_gone({"berth": {"owner": me}})
    assert st.owner_gone({"berth": {"owner": [me[0], me[1] + 1]}})  # the pid reused since
    assert not st.owner_gone({"berth": {}})  # an OCI runtime's: no owner, never "gone"


def test_creator_gone() -> None:
    """Every create records its process (pid, start time): gc takes a state still "creating"
    only once that process is gone (a create held in its hooks is going on)."""
    me = [os.getpid(), st.proc_start_time(os.getpid())]
    assert not st.creator_gone({"berth": {"creator": me}})
    assert st.creator_gone({"berth": {"creator": [me[0], me[1] + 1]}})  # the pid reused since
    assert st.creator_gone({"berth": {"creator": [me[0], None]}})
    assert st.creator_gone({"berth": {}})  # a state from before the creator was recorded
