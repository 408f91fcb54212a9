"""berth-runtime run ID: create and start; without --detach, wait for the process and delete."""

from __future__ import annotations

import _signal as signal
import os

from berth.oci import create as create_verb
from berth.oci.args import need_id, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from berth.oci import Context

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH)  # fmt: skip


def main(ctx: Context, argv: list[str]) -> int:
    from berth.runtime import container

    opts, rest = parse(
        argv,
        valued=create_verb.VALUED,
        flags={**create_verb.FLAGS, "detach": "detach", "d": "detach", "keep": "keep"},
        usage=create_verb.USAGE.replace("create", "run") + "  -d, --detach            do not wait\n",
    )
    cid = need_id(rest, "run")
    detach = bool(opts.get("detach"))
    target = {"pid": 0}

    def forward(sig: int, _frame: Any) -> None:
        if target["pid"]:
            try:
                os.kill(target["pid"], sig)
            except ProcessLookupError:
                pass

    if not detach:
        for sig in FORWARDED:
            signal.signal(sig, forward)
    c = create_verb.create(ctx, cid, opts, subreaper=not detach, detach=detach)
    try:
        target["pid"] = c.pid
        if c.console_fd is not None and not detach:
            from berth.runtime.console import Relay

            with Relay(c.console_fd) as relay:
                c.start(warn=ctx.log.warn)
                relay.pump()
        else:
            c.start(warn=ctx.log.warn)
        if detach:
            return 0
        status = container.wait_exit(c.pid)
    except BaseException:
        c.delete(force=True, warn=ctx.log.warn)
        container.reap(c.pid)
        raise
    target["pid"] = 0
    if not opts.get("keep"):
        c.delete(force=True, warn=ctx.log.warn)
    return status
