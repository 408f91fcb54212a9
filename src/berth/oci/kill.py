"""berth-runtime kill ID [SIGNAL] [--all]: signal the container's init (or every process)."""

from __future__ import annotations

from berth.errors import StateError, UsageError
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.oci import Context


def signal_number(text: str) -> int:
    """``9``, ``KILL``, ``SIGKILL`` (any case), or a real-time one: ``RTMIN+3``, ``SIGRTMAX-1``."""
    import signal

    if text.isdigit():
        number = int(text)
        if not 0 <= number <= signal.SIGRTMAX:
            raise UsageError("SIGNAL", f"{text!r} is not a signal number (0-{int(signal.SIGRTMAX)})")
        return number
    name = text.upper().removeprefix("SIG")
    for base, sign in (("RTMIN+", 1), ("RTMAX-", -1)):
        if name.startswith(base) and name[len(base) :].isdigit():
            number = int(signal.SIGRTMIN if sign > 0 else signal.SIGRTMAX) + sign * int(name[len(base) :])
            if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
                return number
    try:
        return int(getattr(signal.Signals, "SIG" + name))
    except AttributeError:
        raise UsageError("SIGNAL", f"unknown signal {text!r}") from None


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime import state as st
    from berth.runtime.container import Container

    opts, rest = parse(argv, flags={"all": "all", "a": "all"}, positional=2)
    cid = need_id(rest, "kill")
    sig = signal_number(rest[1]) if len(rest) > 1 else 15
    c = Container.load(ctx.root, cid)
    status = c.status()
    if not st.can_kill(status):
        raise StateError(f"container {cid!r}: container not running")
    c.kill(sig, all_processes=bool(opts.get("all")))
    if sig == 9 and status == st.PAUSED:
        # As runc: a process of a frozen (v1) cgroup dies only once thawed.
        cg = c.cgroup()
        if cg is not None and cg.frozen():
            cg.thaw()
    return 0
