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

import os

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
    """Run one hook.  Its output goes to a memfd, not to our stdout and stderr (for ``create``
    they are the container's: a hook's chatter would end in its log), and only its last line,
    in the error of a failure (as runc keeps it).  A memfd, not a pipe: a daemon the hook
    leaves behind cannot keep us waiting."""
    import subprocess

    path = hook["path"]
    args = list(hook.get("args") or [path])
    env = dict(item.split("=", 1) if "=" in item else (item, "") for item in hook.get("env") or [])
    timeout = hook.get("timeout")
    out = os.memfd_create("berth-hook-output", os.MFD_CLOEXEC)
    try:
        try:
            proc = subprocess.Popen(
                args, executable=path, stdin=subprocess.PIPE, stdout=out, stderr=out, env=env,
                close_fds=True, cwd="/",
            )  # fmt: skip
        except OSError as e:
            raise HookError(f"{field}: cannot run {path!r}: {e.strerror}") from None
        try:
            proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HookError(
                f"{field}: {path!r} did not finish within its timeout of {timeout}s{_last_line(out)}"
            ) from None
        if proc.returncode != 0:
            how = (
                f"killed by signal {-proc.returncode}"
                if proc.returncode < 0
                else f"exit status {proc.returncode}"
            )
            raise HookError(f"{field}: {path!r} failed ({how}){_last_line(out)}")
    finally:
        os.close(out)


def _last_line(fd: int, limit: int = 200) -> str:
    """``": <the last line the hook wrote>"`` (shortened), or "" if it wrote nothing."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, 4096, max(0, size - 4096))
    except OSError:
        return ""
    lines = [ln.strip() for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return ": " + (last if len(last) <= limit else last[: limit - 3] + "...")


def run_or_warn(spec_hooks: dict[str, Any] | None, phase: str, state: dict[str, Any], warn: Any) -> None:
    """Run a phase whose failures must not fail the operation (poststart, poststop): each
    failure is a warning and the remaining hooks still run (runtime-spec lifecycle 10, 13)."""
    hooks = (spec_hooks or {}).get(phase) or []
    if not hooks:
        return
    data = state_json(state)
    for i, hook in enumerate(hooks):
        try:
            run_one(hook, data, f"hooks.{phase}[{i}]")
        except HookError as e:
            warn(str(e))
