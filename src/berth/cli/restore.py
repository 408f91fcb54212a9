"""berth restore NAME [--image DIR] [--stale]: bring a checkpointed guest back (same processes)."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.cli.checkpoint import default_image
    from berth.guests import migrate

    p = Parser(prog="berth restore", description="restore a guest from its checkpoint")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--image", metavar="DIR", help="the images (default: the guest's checkpoint dir)")
    p.add_argument(
        "--stale",
        action="store_true",
        help="restore even when a later checkpoint was cut short after the guest ended "
        "(the checkpoint restored is older than the guest's last state)",
    )
    args = p.parse_args(argv)
    s = store()
    pid = migrate.restore(s, args.name, args.image or default_image(s, args.name), stale=args.stale)
    print(f"{args.name}: restored, init pid {pid}")
    return 0
