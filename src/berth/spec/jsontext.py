"""JSON text to plain data through the C scanner of ``_json``, without importing :mod:`json`.

``import json`` pulls in :mod:`re` (its pure-Python scanner patterns), which costs
milliseconds on the start path of ``berth-runtime create``.  The C scanner needs none of
that; only the error path imports :mod:`json` to report line and column.

Arrays and objects nested deeper than the interpreter's recursion limit (~1000) are bad
input like any other: ``json.JSONDecodeError`` at the point where the nesting passed
:data:`DEEP` levels, not a ``RecursionError`` out of the scanner.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"
#: Where a too deeply nested text is reported: at the bracket that opens this level.
DEEP = 512


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


class _Context:
    """The attributes ``_json.make_scanner`` reads from a decoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constant)
    memo: dict[str, str] = {}


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]


def loads(text: str) -> Any:
    """Parse ``text``; on bad input raise ``json.JSONDecodeError`` (a ValueError) with line and column."""
    i = 0
    n = len(text)
    while i < n and text[i] in _WHITESPACE:
        i += 1
    try:
        value, end = _scan(text, i)
    except RecursionError:
        raise _too_deep(text) from None
    except Exception:  # StopIteration, ValueError, or SystemError from the C scanner's error path
        return _slow(text)
    while end < n and text[end] in _WHITESPACE:
        end += 1
    if end != n:
        return _slow(text)
    return value


def _slow(text: str) -> Any:
    import json

    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise _too_deep(text) from None


def _too_deep(text: str) -> ValueError:
    """The error for ``text`` nested past the recursion limit: a ``json.JSONDecodeError`` at
    the bracket opening level :data:`DEEP` (strings skipped: brackets in them do not count)."""
    import json
    import re

    depth, pos = 0, 0
    for m in re.finditer(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth >= DEEP:
                pos = m.start()
                break
        elif c in "]}":
            depth -= 1
    return json.JSONDecodeError(f"arrays and objects nested too deeply (more than {DEEP} levels)", text, pos)
