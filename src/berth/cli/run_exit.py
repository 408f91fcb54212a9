"""berth _run-exit (internal): what ``berth run`` does after its guest ended, when it waited for
the guest as the C waiter (berth.runtime.run): take the guest's network down, remove the guest,
free its user-namespace ids and drop its template use entry (berth.rootfs.template), then exit
with the guest's exit status.

    berth [--debug] _run-exit STATE_ROOT CGROUP_PARENT STORE NAME NET USERNS_OWNER [REPLY_FD] STATUS

NET is the guest's :class:`berth.net.NetOptions` as JSON (``-``: none), USERNS_OWNER its id
range's owner (``-``: none); the waiter appends STATUS; --debug if berth run had it
(berth.cli.run).  REPLY_FD: the run was guestd's (berth.cli.run_guestd): the compiled
launcher waits on this socket for ``{"exit": STATUS}``, written after the cleanup.  Not for
users: not in ``berth --help``.
"""

from __future__ import annotations

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERB = "_run-exit"
NONE = "-"


def argv(
    state_root: str,
    cgroup_parent: str,
    store: str,
    name: str,
    net: Any,
    userns_owner: str | None,
    reply_fd: int | None = None,
) -> list[str]:
    """The arguments after the verb, but the status (the waiter appends it)."""
    args = [
        state_root,
        cgroup_parent,
        store,
        name,
        NONE if net is None else net_to_json(net),
        userns_owner or NONE,
    ]
    return args if reply_fd is None else [*args, str(reply_fd)]


def net_to_json(net: Any) -> str:
    import dataclasses
    import json

    return json.dumps(dataclasses.asdict(net), separators=(",", ":"))


def net_from_json(text: str) -> Any:
    from berth.net import NetOptions, Publish
    from berth.spec.jsontext import loads

    d = loads(text)
    d["addrs"] = tuple(d["addrs"])
    d["publish"] = tuple(Publish(**p) for p in d["publish"])
    return NetOptions(**d)


def main(args: list[str]) -> int:
    if len(args) not in (7, 8):
        raise UsageError(
            VERB, "internal: STATE_ROOT CGROUP_PARENT STORE NAME NET USERNS_OWNER [REPLY_FD] STATUS"
        )
    reply = args.pop(6) if len(args) == 8 else None
    state_root, cgroup_parent, store, name, net_text, owner, status = args
    if not status.isdigit():
        raise UsageError(VERB, f"internal: STATUS {status!r} is not a number")
    if reply is not None and not reply.isdigit():
        raise UsageError(VERB, f"internal: REPLY_FD {reply!r} is not a number")
    try:
        _finish(state_root, cgroup_parent, store, name, net_text, owner)
    except BaseException as e:
        if reply is not None:  # berth's own exit status for it, as berth.cli.main gives it
            from berth.errors import BerthError

            _reply(int(reply), e.exit_status if isinstance(e, BerthError) else 125)
        raise
    if reply is not None:
        from berth.runtime import stdio

        stdio.let_go()  # the launcher's pipes end with it, not with this process's exit
        _reply(int(reply), int(status))
    return int(status)


def _reply(fd: int, status: int) -> None:
    """The compiled launcher's exit status (berth.cli.run_guestd), once all is cleaned up."""
    import os

    try:
        os.write(fd, b'{"exit": %d}\n' % status)
    except OSError:
        pass  # the launcher is gone


def _finish(state_root: str, cgroup_parent: str, store: str, name: str, net_text: str, owner: str) -> None:
    from berth.runtime import run as runner

    on_exit = None
    if net_text != NONE:
        from berth.cli.run import unplug_hook

        on_exit = unplug_hook(net_from_json(net_text), store)

    try:
        runner.finish_after_waiter(state_root, name, cgroup_parent, on_exit)
    finally:
        try:
            if owner != NONE:
                from berth.runtime import userns

                userns.release(store, owner)
        finally:
            from berth.rootfs import template

            template.run_ended(store)  # this run's template use entry (the same process)
