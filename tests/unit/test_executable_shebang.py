"""The ``#!`` line as the kernel splits it (fs/binfmt_script.c), for the scripts berth runs itself."""

from __future__ import annotations

import pytest

from berth.errors import CannotExecute
from berth.runtime.executable import _shebang


@pytest.mark.parametrize(
    ("head", "want"),
    [
        (b"#!/bin/sh\necho hi\n", ("/bin/sh", "")),
        (b"#! /bin/sh -e\n", ("/bin/sh", "-e")),
        (b"#!/usr/bin/env python3 -u -S  \t\n", ("/usr/bin/env", "python3 -u -S")),  # one argument
        (b"#!\t/bin/sh\t-x\n", ("/bin/sh", "-x")),
        (b"#!/bin/sh\r\n", ("/bin/sh\r", "")),  # a CRLF script: the kernel keeps the \r too
        (b"#!/bin/sh", ("/bin/sh", "")),  # no newline at all
        (b"#!/bin/sh -x" + b" " * 300, ("/bin/sh", "-x")),
    ],
)
def test_shebang_split(head: bytes, want: tuple[str, str]) -> None:
    assert _shebang("/s", head[:256]) == want


@pytest.mark.parametrize("head", [b"#!\n", b"#!   \t\n", b"#!/" + b"x" * 300])
def test_shebang_refused(head: bytes) -> None:
    with pytest.raises(CannotExecute):
        _shebang("/s", head[:256])
