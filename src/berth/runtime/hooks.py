"""OCI hooks: programs the runtime calls at fixed points of a container's life.

When each phase runs (the runtime spec's order, as runc does it):

================  ==========================================  =====================================
phase             called                                      where
================  ==========================================  =====================================
prestart          ``create``, namespaces and mounts made,     the runtime's namespaces
                  before pivot_root (deprecated alias)
createRuntime     right after prestart                        the runtime's namespaces
createContainer   right after createRuntime                   the container's namespaces, host paths
startContainer    ``start``, just before the command's exec   inside the container (its paths)
poststart         ``start``, after the command was released   the runtime's namespaces
poststop          ``delete``, after the container is gone     the runtime's namespaces
================  ==========================================  =====================================

Each hook gets the container's state (the spec's state JSON) on stdin.  A hook that fails or
outlives its ``timeout`` fails ``create``/``start`` (phases up to startContainer); a failing
poststart or poststop hook is only a warning.  Kept import-light: subprocess is imported only
when a hook actually runs.
"""

from __future__ import annotations

from berth.errors import ContainerInitError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CREATE_PHASES = ("prestart", "createRuntime")
CONTAINER_PHASES = ("createContainer", "startContainer")
FATAL = frozenset({"prestart", "createRuntime", "createContainer", "startContainer"})


class HookError(ContainerInitError):
    """An OCI hook exited with a failure, was killed, or ran past its timeout."""


def state_json(state: dict[str, Any]) -> bytes:
    from berth.runtime.state import dumps

    return dumps(state).encode()


def wanted(spec_hooks: dict[str, Any] | None, *phases: str) -> bool:
    """Does the spec name any hook for one of ``phases``?"""
    return any((spec_hooks or {}).get(p) for p in phases)


def run(spec_hooks: dict[str, Any] | None, phase: str, state: dict[str, Any]) -> None:
    """Run every hook of ``phase`` in order; the first failure raises :class:`HookError`."""
    hooks = (spec_hooks or {}).get(phase) or []
    if not hooks:
        return
    data = state_json(state)
    for i, hook in enumerate(hooks):
        run_one(hook, data, f"hooks.{phase}[{i}]")


def run_one(hook: dict[str, Any], stdin: bytes, field: str) -> None:
    import subprocess

    path = hook["path"]
    args = list(hook.get("args") or [path])
    env = dict(item.split("=", 1) if "=" in item else (item, "") for item in hook.get("env") or [])
    timeout = hook.get("timeout")
    try:
        proc = subprocess.Popen(
            args, executable=path, stdin=subprocess.PIPE, env=env, close_fds=True, cwd="/"
        )
    except OSError as e:
        raise HookError(f"{field}: cannot run {path!r}: {e.strerror}") from None
    try:
        proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise HookError(f"{field}: {path!r} did not finish within its timeout of {timeout}s") from None
    if proc.returncode != 0:
        how = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit status {proc.returncode}"
        )
        raise HookError(f"{field}: {path!r} failed ({how})")


def run_or_warn(spec_hooks: dict[str, Any] | None, phase: str, state: dict[str, Any], warn: Any) -> None:
    """Run a phase whose failures must not fail the operation (poststart, poststop)."""
    try:
        run(spec_hooks, phase, state)
    except HookError as e:
        warn(str(e))
