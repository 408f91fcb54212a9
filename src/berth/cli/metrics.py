"""berth metrics: the running guests' resource use as Prometheus metrics (berth.monitor.metrics)."""

from __future__ import annotations

import sys

from berth.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HELP = """usage: berth metrics [--listen ADDR:PORT]

The running guests' resource use (under BERTH_RUN) in Prometheus's text exposition format,
read from their cgroups and, for bridged guests, the host end of their veth at each scrape:
berth_guest_up, berth_cpu_seconds_total, berth_cpu_throttled_seconds_total,
berth_memory_usage_bytes, berth_memory_limit_bytes, berth_memory_oom_kills_total, berth_tasks,
berth_blkio_read_bytes_total, berth_network_transmit_bytes_total, … labelled {guest="NAME"}.

  (no option)         print one scrape and exit
  --listen ADDR:PORT  serve the metrics over HTTP (GET /metrics) until SIGINT or SIGTERM;
                      ADDR is an IP address (IPv6 in brackets: [::1]:9478); PORT 0: any free
                      one; prints 'listening on ADDR:PORT' once it accepts scrapes.  No
                      authentication: guests on a bridge reach the host's addresses, so listen
                      on 127.0.0.1 or an address only the Prometheus server can reach
"""


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` → (address, port); one-line errors naming --listen."""
    import ipaddress
    import re

    host, sep, port = text.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise UsageError("--listen", f"{text!r}: expected ADDR:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise UsageError("--listen", f"{text!r}: brackets are for an IPv6 address")
    elif ":" in host:
        raise UsageError("--listen", f"{text!r}: write an IPv6 address in brackets ([::1]:{port})")
    if not host:
        raise UsageError(
            "--listen", f"{text!r}: give the address to listen on (127.0.0.1, 0.0.0.0, [::1], …)"
        )
    if "%" in host:
        raise UsageError("--listen", f"{host!r}: a scoped (link-local) address is not supported")
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
            if o["listen"] is not None:
                raise UsageError("--listen", "given twice")
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


MAX_CONNECTIONS = 32  # scrapes served at once; more wait in the listen queue
IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent


def make_server(addr: str, port: int, app: Any) -> Any:
    """prometheus_client's threaded WSGI server, bounded: each connection times out after
    :data:`IDLE_TIMEOUT` s of silence and at most :data:`MAX_CONNECTIONS` are served at once
    (idle clients cannot take every thread and descriptor)."""
    import socket
    import threading
    from wsgiref.simple_server import make_server as wsgi_server

    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    class Handler(_SilentHandler):  # type: ignore[misc]
        timeout = IDLE_TIMEOUT

    class Server(ThreadingWSGIServer):  # type: ignore[misc]
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        request_queue_size = 64

        def process_request(self, request: Any, client_address: Any) -> None:
            slots.acquire()
            try:
                super().process_request(request, client_address)
            except BaseException:
                slots.release()
                raise

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that timed out or went away: nothing to report

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                slots.release()

    return wsgi_server(addr, port, app, Server, handler_class=Handler)


def serve(addr: str, port: int, state_root: str, store_root: str) -> int:
    """Serve the metrics until SIGINT or SIGTERM."""
    import signal
    import threading

    from prometheus_client import make_wsgi_app

    from berth.monitor.metrics import registry

    stop = (signal.SIGINT, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # the server's threads inherit the mask
    shown = f"[{addr}]" if ":" in addr else addr
    try:
        server = make_server(addr, port, make_wsgi_app(registry(state_root, store_root)))
    except OSError as e:
        raise UsageError("--listen", f"cannot listen on {shown}:{port}: {e.strerror or e}") from None
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    sys.stdout.write(f"listening on {shown}:{server.server_address[1]}\n")
    sys.stdout.flush()
    signal.sigwait(stop)
    server.server_close()  # no shutdown(): it would wait for a slot; the threads are daemons
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
