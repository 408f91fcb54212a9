"""``berth run --tmpfs`` refused where it would break the guest's setup after the fact."""

from __future__ import annotations

import pytest

from berth.cli.run import tmpfs_mount
from berth.errors import UsageError


@pytest.mark.parametrize("path", ["/proc", "/proc/", "//proc", "/proc/../proc:64m"])
def test_tmpfs_over_proc_refused(path: str) -> None:
    """Over the guest's proc the init's own /proc/self/fd lookups failed with a bare ENOENT."""
    with pytest.raises(UsageError) as exc:
        tmpfs_mount(path)
    assert exc.value.field == "tmpfs"
    assert "the guest's proc is mounted there" in exc.value.reason


def test_tmpfs_under_proc_and_elsewhere_allowed() -> None:
    assert tmpfs_mount("/proc/sys")["destination"] == "/proc/sys"
    assert tmpfs_mount("/procfs")["destination"] == "/procfs"
