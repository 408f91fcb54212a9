"""berth start NAME...: start guests; they keep running after berth exits (supervised by guestd)."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from berth.guests.store import Store


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import lifecycle

    p = Parser(prog="berth start", description="start guests")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    # Each spec from the config as it is now (the user may have edited it), built just before
    # the guest's batch goes to guestd: the first guests start while the next are built.
    lifecycle.start(store(), args.names, prepare=preparer(store()))
    return 0


def preparer(s: Store) -> Callable[[str], None]:
    """``prepare(name)``: build the guest's spec.json unless the one there was built from the
    same inputs (:func:`inputs`); a restart of an unchanged guest skips the build."""
    from berth.cli import _guestspec
    from berth.runtime import userns

    stamp = _code_stamp()
    ranges = userns.allocations(s.root)  # read once for the command, not once per guest

    def prepare(name: str) -> None:
        key, cfg = inputs(s, name, stamp, ranges.get(name))
        if not _guestspec.built_from(s, name, key, lxcfs=bool(cfg.get("lxcfs"))):
            _guestspec.build(s, name, inputs=key)

    return prepare


def inputs(s: Store, name: str, stamp: str, ids: tuple[int, int] | None) -> tuple[str, dict[str, Any]]:
    """A digest of what a guest's spec is built from: its config, its template (identity, image
    config, the files users and init are looked up in), its id range, the BERTH_* environment
    and the host variables its env names, the cgroup mode, and berth's own code; and the config."""
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
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("BERTH_") and k != "BERTH_FAULT")
    bare = [e for e in cfg.get("env", []) if "=" not in e]
    env += [(k, os.environ.get(k, "")) for k in bare]
    h.update(repr(env).encode())
    h.update(str(os.path.exists("/sys/fs/cgroup/cgroup.controllers")).encode())
    return h.hexdigest(), cfg


def _code_stamp() -> str:
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
