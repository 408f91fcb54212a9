"""berth metrics: the running guests' resource use as Prometheus metrics (berth.monitor.metrics)."""

from __future__ import annotations

import sys

from berth.errors import UsageError

HELP = """usage: berth metrics [--listen ADDR:PORT]

The running guests' resource use (under BERTH_RUN) in Prometheus's text exposition format,
read from their cgroups and, for bridged guests, the host end of their veth at each scrape:
berth_guest_up, berth_cpu_seconds_total, berth_cpu_throttled_seconds_total,
berth_memory_usage_bytes, berth_memory_limit_bytes, berth_memory_oom_kills_total, berth_pids,
berth_blkio_read_bytes_total, berth_network_transmit_bytes_total, … labelled {guest="NAME"}.

  (no option)         print one scrape and exit
  --listen ADDR:PORT  serve the metrics over HTTP (GET /metrics) until SIGINT or SIGTERM;
                      ADDR may be an IPv6 address in brackets, or empty for every address;
                      prints 'listening on ADDR:PORT' once it accepts scrapes (PORT 0: any free)
"""


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` → (address, port); one-line errors naming --listen."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError("--listen", f"{text!r}: expected ADDR:PORT with a port from 0 to 65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        return "::", int(port)
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError("--listen", f"{host!r} is not an IP address") from None
    return host, int(port)


def parse(argv: list[str]) -> dict[str, object]:
    o: dict[str, object] = {"listen": None}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            sys.stdout.write(HELP)
            raise SystemExit(0)
        if a == "--listen" or a.startswith("--listen="):
            if "=" in a:
                val = a.split("=", 1)[1]
            else:
                i += 1
                if i >= len(argv):
                    raise UsageError("--listen", "needs ADDR:PORT")
                val = argv[i]
            o["listen"] = parse_listen(val)
        else:
            raise UsageError(a, "unknown argument (see 'berth metrics --help')")
        i += 1
    return o


def serve(addr: str, port: int, state_root: str, store_root: str) -> int:
    """Serve the metrics until SIGINT or SIGTERM."""
    import signal

    from prometheus_client import start_http_server

    from berth.monitor.metrics import registry

    stop = (signal.SIGINT, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # the server's threads inherit the mask
    try:
        server, _thread = start_http_server(port, addr, registry(state_root, store_root))
    except OSError as e:
        raise UsageError("--listen", f"cannot listen on {addr}:{port}: {e.strerror or e}") from None
    bound = server.server_address
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    sys.stdout.write(f"listening on {shown}:{bound[1]}\n")
    sys.stdout.flush()
    signal.sigwait(stop)
    server.shutdown()
    server.server_close()
    return 0


def main(argv: list[str]) -> int:
    from berth.cli import env_paths

    o = parse(argv)
    store_root, state_root, _parent = env_paths()
    listen = o["listen"]
    if listen is not None:
        addr, port = listen  # type: ignore[misc]
        return serve(addr, port, state_root, store_root)
    from berth.monitor.metrics import render

    sys.stdout.buffer.write(render(state_root, store_root))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
