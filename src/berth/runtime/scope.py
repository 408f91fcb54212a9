"""Which Landlock scopes a container's processes get (:mod:`berth.linux.landlock`).

A spec asks with the annotation :data:`ANNOTATION`: a comma-separated list of ``abstract-unix``
(no connecting to abstract unix sockets made outside the container: those of the host, when
the container shares the host's network namespace) and ``signal`` (no signals to processes
outside it: for a container in the host's pid namespace).  berth's guest manager sets
``abstract-unix`` for guests on the host's network stack (``--net host``, ``ip:``) unless
``--security-opt landlock=unconfined``; an OCI bundle opts in (runc has no such thing, and a
pod's containers, each in its own domain, could no longer reach each other's abstract sockets).

The runtime decides once, at create (:func:`decide`), records what it applied in the state
(``berth.landlock``: the scope mask) and gives the same to every process ``exec`` starts in the
container.  A kernel without Landlock ABI 6 gets a warning and no scope, as other optional
hardening berth cannot have there (a keyring, a capability the runtime lacks).

Pure functions, no I/O: the kernel's ABI is the caller's to ask.
"""

from __future__ import annotations

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ANNOTATION = "org.berth.landlock"
ABSTRACT_UNIX = "abstract-unix"
SIGNAL = "signal"
# The kernel's LANDLOCK_SCOPE_* bits (berth.linux.landlock), here too: this module imports no binding.
BITS = {ABSTRACT_UNIX: 1 << 0, SIGNAL: 1 << 1}
SCOPES_ABI = 6  # Linux 6.12


def wanted(annotations: dict[str, Any] | None) -> int:
    """The scope mask the annotation asks for (0: none); :class:`UsageError` naming the
    annotation for a value berth does not know."""
    text = (annotations or {}).get(ANNOTATION)
    if text is None:
        return 0
    if not isinstance(text, str):
        raise UsageError(f"annotations.{ANNOTATION}", "must be a string")
    mask = 0
    for raw in text.split(","):
        word = raw.strip()
        if word in ("", "none"):
            continue
        if word not in BITS:
            raise UsageError(
                f"annotations.{ANNOTATION}", f"unknown scope {word!r} (a list of: {', '.join(BITS)}, or none)"
            )
        mask |= BITS[word]
    return mask


def names(mask: int) -> str:
    return ",".join(name for name, bit in BITS.items() if mask & bit) or "none"


def decide(mask: int, abi: int) -> tuple[int, str | None]:
    """(the scopes to apply, a warning or None) for the ``mask`` asked on a kernel whose
    Landlock ABI is ``abi`` (0: no Landlock)."""
    if not mask:
        return 0, None
    if abi >= SCOPES_ABI:
        return mask, None
    have = f"ABI {abi}" if abi else "no Landlock"
    return 0, (
        f"Landlock scope {names(mask)} not applied: it needs Landlock ABI {SCOPES_ABI} (Linux 6.12), "
        f"this kernel has {have}; the container can reach the host's abstract unix sockets"
        + (" and signal its processes" if mask & BITS[SIGNAL] else "")
    )


def applied(state: dict[str, Any]) -> int:
    """The scopes a container's processes were given (its state, as :func:`decide` chose)."""
    return int((state.get("berth") or {}).get("landlock") or 0)
