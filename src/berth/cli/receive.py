"""berth receive --listen ADDR:PORT [--keep] [--token-file F] [--allow-…]: accept guests migrated
from another berth host (without a token, the port must be reachable only from the trusted source
host).  A guest whose config gives it power over this host is refused unless its --allow-… flag
is given (berth.guests.hostpower), with exit status 3 (:data:`berth.errors.EXIT_REFUSED`).  The
token is root-equivalent here: the policy limits what a sender's config asks for, it does not
make a hostile token holder harmless (its CRIU images are restored by CRIU as root)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import hostpower, migrate

    p = Parser(
        prog="berth receive",
        description="receive migrated guests.  Without --token-file any host that reaches ADDR:PORT can "
        "place a guest here: the port must then be reachable only from the trusted source host.  The "
        "token is root-equivalent on this host: a sender also hands over CRIU images, which CRIU "
        "restores as root as they come (berth checks the restored processes against the guest's "
        "spec built here before they run, as defence in depth, not a guarantee): give it only to "
        "hosts trusted with root here.",
        epilog="exit status: 0 received; 3 the guest was refused by this host's policy (the --allow "
        "flags above); 125 any other failure (a broken or altered stream, a failed restore).",
    )
    p.add_argument("--listen", required=True, metavar="ADDR:PORT")
    p.add_argument("--keep", action="store_true", help="keep listening after the first guest")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="accept only senders with this shared token (berth migrate --token-file): HMAC-SHA256 of "
        "the stream's nonce, and of its checksum",
    )

    allow = p.add_argument_group(
        "host power",
        "a migrated guest whose config asks for one of these is refused (the sender is told which "
        "key and flag; exit status 3) unless its flag is given.  They limit what a sender's config "
        "asks for, not what a hostile token holder can do",
    )
    for key, flag in hostpower.FLAGS.items():
        allow.add_argument(
            flag, dest="allow", action="append_const", const=key, default=[], help=hostpower.HELP[key]
        )

    def ready(addr: tuple) -> None:  # type: ignore[type-arg]
        sys.stdout.write(f"listening on {addr[0]}:{addr[1]}\n")
        sys.stdout.flush()

    args = p.parse_args(argv)
    token = migrate.read_token(args.token_file) if args.token_file else None
    for name in migrate.receive(
        store(),
        args.listen,
        build=build_spec,
        once=not args.keep,
        ready=ready,
        token=token,
        allow=frozenset(args.allow),
    ):
        print(f"received {name}")
    return 0


def build_spec(store: Any, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """An incoming guest's spec, built from its config as `berth create` and `berth start` build
    it (its [resources] keys checked as there)."""
    from berth.cli import _guestspec

    _guestspec.check_resources(cfg, f"{name}: config")
    return _guestspec.make(store, name, cfg)
