"""A small parser for runc-style verb options (argparse costs milliseconds on the start path).

Long options take one or two dashes (``-bundle`` and ``--bundle``, as runc's urfave/cli), values
after ``=`` or as the next word; short flags combine (``-dt``).  Options end at the first
positional argument once ``positional`` are taken, or at ``--``.
"""

from __future__ import annotations

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def parse(
    argv: list[str],
    *,
    valued: dict[str, str] | None = None,
    flags: dict[str, str] | None = None,
    multi: frozenset[str] = frozenset(),
    positional: int = 1,
    usage: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """(options by destination, positional arguments and everything after them).

    ``valued``/``flags`` map option names (without dashes) to destinations; a destination in
    ``multi`` collects a list.  Parsing stops after ``positional`` positional arguments.
    """
    valued = valued or {}
    flags = flags or {}
    opts: dict[str, Any] = {dest: [] for dest in multi}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i + 1 :]
            break
        if not a.startswith("-") or a == "-":
            rest.append(a)
            if len(rest) >= positional:
                rest += argv[i + 1 :]
                break
            i += 1
            continue
        name, eq, value = a.lstrip("-").partition("=")
        if name in ("h", "help"):
            import sys

            sys.stdout.write(usage or "see runc(8): berth-runtime takes the same options\n")
            raise SystemExit(0)
        if name in valued:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(a, "needs a value")
                i += 1
                value = argv[i]
            dest = valued[name]
            if dest in multi:
                opts[dest].append(value)
            else:
                opts[dest] = value
        elif name in flags:
            opts[flags[name]] = value.lower() not in ("false", "0") if eq else True
        elif not a.startswith("--") and all(c in flags for c in name):
            for c in name:
                opts[flags[c]] = True
        else:
            raise UsageError(a, "unknown option")
        i += 1
    return opts, rest


def need_id(rest: list[str], verb: str) -> str:
    if not rest:
        raise UsageError("ID", f"missing: berth-runtime {verb} [OPTIONS] ID")
    return rest[0]


def duration(text: str) -> float:
    """A Go duration (``5s``, ``100ms``, ``1m``) or plain seconds, in seconds."""
    units = (("ms", 0.001), ("us", 1e-6), ("ns", 1e-9), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, scale in units:
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * scale
            except ValueError:
                break
    try:
        return float(text)
    except ValueError:
        raise UsageError("interval", f"{text!r} is not a duration (5s, 100ms)") from None
