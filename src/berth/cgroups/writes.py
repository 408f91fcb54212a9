"""The plain data the pure mappings produce: one :class:`Write` per cgroup file, and the input checks
they share.  No I/O here."""

from __future__ import annotations

from berth.errors import UsageError

TYPE_CHECKING = False  # typing costs ~15 ms to import: not on the start path
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

FIELD = "linux.resources"


class Write:
    """Write ``value`` to ``file`` in the cgroup's directory of ``controller``.

    ``controller`` is a v1 hierarchy key (``"memory"``, ``"blkio"`` …) for the v1 mapping, and a v2
    controller (``"io"``) or ``""`` for core ``cgroup.*`` files for the v2 mapping.  ``retry``: an
    EINVAL may go away once the later writes are done (CFS period/quota/burst ordering), so retry
    it at the end.  ``optional``: a missing file (ENOENT) is not an error (e.g. no swap accounting).
    """

    __slots__ = ("controller", "file", "optional", "retry", "value")

    def __init__(
        self, controller: str, file: str, value: str, *, retry: bool = False, optional: bool = False
    ) -> None:
        self.controller = controller
        self.file = file
        self.value = value
        self.retry = retry
        self.optional = optional

    def _key(self) -> tuple[str, str, str, bool, bool]:
        return (self.controller, self.file, self.value, self.retry, self.optional)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):  # compare with (controller, file, value) in tests
            return self._key()[: len(other)] == other
        if not isinstance(other, Write):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        flags = "".join([", retry=True" if self.retry else "", ", optional=True" if self.optional else ""])
        return f"Write({self.controller!r}, {self.file!r}, {self.value!r}{flags})"

    def astuple(self) -> tuple[str, str, str]:
        return (self.controller, self.file, self.value)


def section(resources: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``resources[name]`` as a dict ({} when absent or null)."""
    value = resources.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{FIELD}.{name}", f"must be an object, not {type(value).__name__}")
    return value


def integer(sec: Mapping[str, Any], key: str, field: str, *, minimum: int | None = None) -> int | None:
    """``sec[key]`` as an int (None when absent or null), refusing booleans, floats and strings."""
    value = sec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{field}.{key}", f"must be an integer, not {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{field}.{key}", f"must be >= {minimum}, not {value}")
    return value


def items(sec: Mapping[str, Any], key: str, field: str) -> list[dict[str, Any]]:
    """``sec[key]`` as a list of objects ([] when absent or null)."""
    value = sec.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UsageError(f"{field}.{key}", "must be a list of objects")
    return value


def device_number(entry: Mapping[str, Any], field: str) -> str:
    """``"MAJ:MIN"`` of a blockIO device entry."""
    major = integer(entry, "major", field, minimum=0)
    minor = integer(entry, "minor", field, minimum=0)
    if major is None or minor is None:
        raise UsageError(field, "needs major and minor")
    return f"{major}:{minor}"


def page_size(entry: Mapping[str, Any], field: str) -> str:
    """A hugepage size as the kernel names it in file names (``2MB``, ``1GB``, ``64KB``)."""
    size = entry.get("pageSize")
    if (
        not isinstance(size, str)
        or not size
        or not size[:-2].isdigit()
        or size[-2:] not in ("KB", "MB", "GB")
    ):
        raise UsageError(f"{field}.pageSize", f"must look like 2MB or 1GB, not {size!r}")
    return size
