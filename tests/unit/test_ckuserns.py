"""The id arithmetic of a user namespace's checkpoint (berth.runtime.ckuserns)."""

from __future__ import annotations

import pytest

from berth.runtime import ckuserns


def test_host_id_of_root() -> None:
    assert ckuserns._host_id("0 1000000 65536\n") == 1000000
    # Root inside a later line, or a range not starting at 0.
    assert ckuserns._host_id("1 5000 10\n0 7000 1\n") == 7000
    assert ckuserns._host_id("0 200000 1\n1 300000 100\n") == 200000


def test_host_id_without_root() -> None:
    with pytest.raises(ValueError):
        ckuserns._host_id("1 100000 65535\n")


def test_map_normalised(tmp_path) -> None:
    f = tmp_path / "uid_map"
    f.write_text("         0    1000000      65536\n")  # as /proc/PID/uid_map shows it
    assert ckuserns._map(str(f)) == "0 1000000 65536\n"
