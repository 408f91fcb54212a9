"""berth logs NAME [-f]: the guest's console output (stdout and stderr of its init).

guestd drops the oldest part of a log above the guest's --log-max (berth.guests.consolelog): what
the filesystem's fallback kept (``console.log.1``) comes first, and a follower goes on where it
was while the log's head goes."""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
    from berth.cli._args import Parser, store
    from berth.guests import consolelog, instance

    p = Parser(prog="berth logs", description="show a guest's console log")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the guest stops")
    args = p.parse_args(argv)
    s = store()
    s.require(args.name)
    out = sys.stdout.buffer
    try:
        with open(s.log(args.name) + consolelog.OLD, "rb") as old:
            while chunk := old.read(65536):
                out.write(chunk)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(s.log(args.name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        out.flush()
        return 0
    reader = consolelog.Reader(fd)
    try:
        while True:
            chunk = reader.read()
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not args.follow or not instance.running(s.read_run(args.name)):
                return 0
            time.sleep(0.2)
    finally:
        os.close(fd)
