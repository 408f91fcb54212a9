"""Run one guest to completion: create, start, relay, wait, remove (``berth run``)."""

from __future__ import annotations

import _signal as signal  # the C module: signal.py imports enum, which costs milliseconds here
import os

from berth.linux import prctl
from berth.runtime import container

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def run(
    name: str,
    spec: dict[str, Any],
    *,
    state_root: str,
    cgroup_parent: str,
    overlay: dict[str, Any] | None,
    use_init: bool,
    interactive: bool,
    seccomp_cache: str | None = None,
    on_created: Callable[[container.Container], None] | None = None,
    on_exit: Callable[[container.Container], None] | None = None,
) -> int:
    """Create and start the guest, forward signals to it, relay its terminal, and return its
    exit status after everything it made is gone.

    ``on_created`` runs once the guest exists (its namespaces and cgroup are there, its command
    not yet started): where the network is plugged in.  ``on_exit`` runs after the guest ended,
    before its cgroup and state are removed: where host-side objects are taken down.
    """
    target = {"pid": 0}
    pending: list[int] = []

    def forward(sig: int, _frame: Any) -> None:
        if target["pid"]:
            try:
                os.kill(target["pid"], sig)
            except ProcessLookupError:
                pass
        else:
            pending.append(sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    # The guest's init is reparented to us when the intermediate child exits.
    # (Restored afterwards: a library caller must not stay the reaper of unrelated orphans.)
    was_subreaper = prctl.get_child_subreaper()
    prctl.set_child_subreaper(True)
    terminal = bool((spec.get("process") or {}).get("terminal"))
    if not interactive and not terminal:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    c = container.create(
        name,
        spec,
        state_root=state_root,
        bundle=os.getcwd(),
        cgroup_parent=cgroup_parent,
        overlay=overlay,
        use_init=use_init,
        watch_parent=True,
        seccomp_cache=seccomp_cache,
    )
    try:
        if on_created is not None:
            on_created(c)
        target["pid"] = c.pid
        for sig in pending:
            os.kill(c.pid, sig)
        if c.console_fd is not None:
            from berth.runtime.console import Relay

            with Relay(c.console_fd) as relay:
                c.start()
                relay.pump()
        else:
            c.start()
        if (c.data.get("berth") or {}).get("limits"):
            from berth.runtime import supervise

            sup = supervise.supervisor_for(c)  # ANON / MEMLOCK limits: poll the guest while waiting
            if sup is not None:
                return supervise.wait(c.pid, sup)
        return container.wait_exit(c.pid)
    finally:
        target["pid"] = 0
        try:
            if on_exit is not None:
                on_exit(c)
        finally:
            cg = c.cgroup()
            c.delete(force=True)
            if cg is not None and cg.path.startswith(cgroup_parent.strip("/") + "/"):
                # The parent goes with the last guest under it (a racing create retries).
                cg.remove_empty_parents(cgroup_parent)
            if not was_subreaper:
                prctl.set_child_subreaper(False)
        # If the guest's init died before wait_exit (a failed start), it is still our zombie.
        container.reap(c.pid)
