"""berth logs NAME [-f]: the guest's console output (stdout and stderr of its init)."""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import instance

    p = Parser(prog="berth logs", description="show a guest's console log")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the guest stops")
    args = p.parse_args(argv)
    s = store()
    s.require(args.name)
    try:
        fd = os.open(s.log(args.name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    out = sys.stdout.buffer
    try:
        while True:
            chunk = os.read(fd, 65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not args.follow or not instance.running(s.read_run(args.name)):
                return 0
            time.sleep(0.2)
    finally:
        os.close(fd)
