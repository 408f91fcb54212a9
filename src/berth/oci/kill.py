"""berth-runtime kill ID [SIGNAL] [--all]: signal the container's init (or every process)."""

from __future__ import annotations

from berth.errors import StateError, UsageError
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def signal_number(text: str) -> int:
    """``9``, ``KILL`` or ``SIGKILL``."""
    import signal

    if text.isdigit():
        return int(text)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(signal.Signals, name))
    except AttributeError:
        raise UsageError("SIGNAL", f"unknown signal {text!r}") from None


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime import state as st
    from berth.runtime.container import Container

    opts, rest = parse(argv, flags={"all": "all", "a": "all"}, positional=2)
    cid = need_id(rest, "kill")
    sig = signal_number(rest[1]) if len(rest) > 1 else 15
    c = Container.load(ctx.root, cid)
    if not st.can_kill(c.status()):
        raise StateError(f"container {cid!r}: container not running")
    c.kill(sig, all_processes=bool(opts.get("all")))
    return 0
