"""berth checkpoint NAME [--leave-running] [--image DIR]: freeze the whole guest to disk."""

from __future__ import annotations


def default_image(store, name: str) -> str:  # type: ignore[no-untyped-def]
    import os

    return os.path.join(store.dir(name), "checkpoint")


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import migrate

    p = Parser(prog="berth checkpoint", description="checkpoint a running guest with CRIU")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--leave-running", action="store_true", help="keep the guest running after the dump")
    p.add_argument("--image", metavar="DIR", help="where the images go (default: the guest's checkpoint dir)")
    args = p.parse_args(argv)
    s = store()
    image = args.image or default_image(s, args.name)
    meta = migrate.checkpoint(s, args.name, image, leave_running=args.leave_running)
    print(f"{args.name}: checkpointed to {image} in {meta['dump_seconds'] * 1000:.0f} ms")
    return 0
