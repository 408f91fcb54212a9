"""One interface over cgroup v1, v2 and hybrid hosts: create, attach, set resources, read stats,
freeze, kill all, remove.

Cheap to import (it is on the container start path): stdlib only, the BPF binding and the resource
mappings are imported when first used.

    layout = detect()
    cg = open_cgroup("berth/web1", layout)
    cg.create(); cg.add(pid); cg.set(spec["linux"]["resources"])
    ...
    cg.destroy()
"""

from __future__ import annotations

from berth.cgroups.cgroup import Cgroup
from berth.cgroups.layout import Layout, clean_path, detect


def open_cgroup(path: str, layout: Layout | None = None) -> Cgroup:
    """The cgroup at OCI ``cgroupsPath`` ``path`` (relative to each hierarchy root; a leading ``/``
    is allowed) on ``layout`` (default: this host's).  Nothing is created until :meth:`Cgroup.create`.

    Raises :class:`~berth.errors.UsageError` (field ``cgroupsPath``) for an empty path or ``..``.
    """
    return Cgroup(path, layout if layout is not None else detect())


__all__ = ["Cgroup", "Layout", "clean_path", "detect", "open_cgroup"]
