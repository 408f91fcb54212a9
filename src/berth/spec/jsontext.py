"""JSON text to plain data through the C scanner of ``_json``, without importing :mod:`json`.

``import json`` pulls in :mod:`re` (its pure-Python scanner patterns), which costs
milliseconds on the start path of ``berth-runtime create``.  The C scanner needs none of
that; only the error path imports :mod:`json` to report line and column.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"


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
    except Exception:  # StopIteration, ValueError, or SystemError from the C scanner's error path
        return _slow(text)
    while end < n and text[end] in _WHITESPACE:
        end += 1
    if end != n:
        return _slow(text)
    return value


def _slow(text: str) -> Any:
    import json

    return json.loads(text, parse_constant=_no_constant)
