"""What a guest's spec.json is built from, as one digest: a start of an unchanged guest skips the
build (the CLI's :mod:`berth.cli._guestspec` builds it and saves the digest with it).

The digest is computed the same way by the command (``berth start``, slow path) and by guestd's
worker (the fast path of :mod:`berth.guests.fastclient`: the command sends its environment, the
worker checks the spec it is about to start and says "stale" if it must be built first).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from berth.guests.store import Store


def code_stamp() -> str:
    """berth's code as it is on disk now: its modules' sizes and modification times."""
    import berth

    top = os.path.dirname(berth.__file__)
    parts = []
    for d, _dirs, files in os.walk(top):
        for f in files:
            if f.endswith(".py"):
                st = os.stat(os.path.join(d, f))
                parts.append(f"{d[len(top) :]}/{f}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(sorted(parts))


def inputs(
    s: Store, name: str, stamp: str, ids: tuple[int, int] | None, env: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    """A digest of what a guest's spec is built from: its config, its template (identity, image
    config, the files users and init are looked up in), its id range, the BERTH_* variables of
    ``env`` (the command's environment) and the ones the guest's env names, the cgroup mode,
    and berth's own code (``stamp``: :func:`code_stamp`); and the config."""
    try:  # the builtin SHA-256: hashlib's OpenSSL binding costs ~5 ms to import
        from _sha256 import sha256  # Python 3.11
    except ImportError:  # pragma: no cover - Python 3.12+
        from hashlib import sha256

    from berth.guests import config
    from berth.rootfs import template

    h = sha256(stamp.encode())
    with open(s.config(name), "rb") as f:
        raw = f.read()
    h.update(raw)
    cfg = config.load(s.config(name))
    tdir = template.template_dir(s.root, cfg["template"])
    for rel in (
        "",
        "template.json",
        "rootfs",
        "rootfs/etc",
        "rootfs/sbin",
        "rootfs/etc/passwd",
        "rootfs/etc/group",
    ):
        try:
            st = os.lstat(os.path.join(tdir, rel))
            h.update(f"{rel}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size};".encode())
        except OSError:
            h.update(f"{rel}:-;".encode())
    h.update(repr(ids).encode())  # the guest's id range (lifecycle.id_range)
    pairs = sorted((k, v) for k, v in env.items() if k.startswith("BERTH_") and k != "BERTH_FAULT")
    bare = [e for e in cfg.get("env", []) if "=" not in e]
    pairs += [(k, env.get(k, "")) for k in bare]
    h.update(repr(pairs).encode())
    h.update(str(os.path.exists("/sys/fs/cgroup/cgroup.controllers")).encode())
    return h.hexdigest(), cfg


def saved_matches(saved: Any, key: str, *, lxcfs: bool) -> bool:
    """Was the saved spec (spec.json's object) built from ``key``, and complete?  (A guest
    wanting ``lxcfs`` whose spec was built while lxcfs could not run is built again.)"""
    if not isinstance(saved, dict) or saved.get("inputs") != key:
        return False
    return bool(saved.get("lxcfs")) or not lxcfs


def fresh(s: Store, name: str, env: Mapping[str, str]) -> bool:
    """Is ``name``'s spec.json built from what it would be built from now, for a command with
    environment ``env``?  (guestd's worker asks, for the fast start path.)"""
    import json

    from berth.runtime import userns

    key, cfg = inputs(s, name, code_stamp(), userns.allocations(s.root).get(name), env)
    try:
        with open(os.path.join(s.dir(name), "spec.json"), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return False
    return saved_matches(saved, key, lxcfs=bool(cfg.get("lxcfs")))
