"""Resource flags of `berth run` (and later of guest configs): parsed into OCI linux.resources."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FLAGS: dict[str, str] = {}
HELP = ""


def apply(spec: dict[str, Any], items: list[tuple[str, str]]) -> None:
    """Fold the resource flags into ``spec`` (filled in by the resource-isolation work)."""
    for flag, _value in items:
        from berth.errors import UsageError

        raise UsageError(flag, "not supported yet")
