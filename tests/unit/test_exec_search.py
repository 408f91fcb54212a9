"""execvp's PATH rules in berth's command lookup (berth.runtime.executable._search), on a
temporary tree, and the credentials a process execs with (Creds.of)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth.errors import CannotExecute, CommandNotFound, UsageError
from berth.linux import caps
from berth.runtime.executable import Creds, _search


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for d in ("bin", "work", "work/sub", "empty"):
        (tmp_path / d).mkdir()
    for f in ("bin/tool", "work/here", "work/sub/deep"):
        (tmp_path / f).write_text("#!/bin/sh\n")
        (tmp_path / f).chmod(0o755)
    (tmp_path / "bin" / "plain").write_text("data\n")
    (tmp_path / "bin" / "plain").chmod(0o644)
    (tmp_path / "bin" / "dir").mkdir()
    return tmp_path


def found(arg0: str, path: str, cwd: str) -> str:
    name, fd = _search(arg0, [f"PATH={path}"], cwd)
    os.close(fd)
    return name


@pytest.mark.parametrize("path", [":{t}/empty", "{t}/empty:", "{t}/empty::{t}/bin", ""])
def test_empty_entry_is_the_working_directory(tree: Path, path: str) -> None:
    assert found("here", path.format(t=tree), str(tree / "work")) == "here"


def test_relative_entry_and_command(tree: Path) -> None:
    cwd = str(tree / "work")
    assert found("deep", "sub", cwd) == "sub/deep"
    assert found("./sub/deep", "/nothing", cwd) == "./sub/deep"
    assert found("tool", f"{tree}/empty:{tree}/bin", cwd) == f"{tree}/bin/tool"


def test_not_found_and_denied(tree: Path) -> None:
    cwd = str(tree)
    with pytest.raises(CommandNotFound):
        found("here", f"{tree}/bin", cwd)  # not from the working directory without an empty entry
    with pytest.raises(CommandNotFound):
        found("", f"{tree}/bin", cwd)
    with pytest.raises(CannotExecute, match="permission denied"):
        found("plain", f"{tree}/bin", cwd)
    with pytest.raises(CannotExecute, match="is a directory"):
        found("dir", f"{tree}/bin", cwd)
    # a file that may not be run is passed over for a later one, as execvp does
    (tree / "work" / "plain").write_text("#!/bin/sh\n")
    (tree / "work" / "plain").chmod(0o755)
    assert found("plain", f"{tree}/bin:", str(tree / "work")) == "plain"


def test_other_errors_end_the_search(tree: Path) -> None:
    # ELOOP is not one of the errors execvp goes on after
    (tree / "bin" / "looped").symlink_to("looped")
    with pytest.raises(CannotExecute, match="symbolic links"):
        found("looped", f"{tree}/bin:{tree}/work", str(tree))


def test_creds_of_a_process() -> None:
    process = {
        "user": {"uid": 1000, "gid": 100, "additionalGids": [4242, 5]},
        "capabilities": {
            "bounding": ["CAP_DAC_OVERRIDE", "CAP_CHOWN"],
            "effective": ["CAP_DAC_OVERRIDE"],
            "ambient": ["CAP_CHOWN"],
        },
    }
    assert Creds.of(process) == Creds(1000, 100, (4242, 5), caps.to_mask(["CAP_DAC_OVERRIDE"]))
    # behind tini: what tini keeps through its own exec (a user: the ambient set)
    assert Creds.of(process, through_init=True).effective == caps.to_mask(["CAP_CHOWN"])
    process["user"] = {"uid": 0, "gid": 0}
    assert Creds.of(process, through_init=True).effective == caps.to_mask(["CAP_DAC_OVERRIDE", "CAP_CHOWN"])
    assert Creds.of({}) == Creds(0, 0, (), 0)
    with pytest.raises(UsageError, match="CAP_NOPE"):
        Creds.of({"capabilities": {"effective": ["CAP_NOPE"]}})
