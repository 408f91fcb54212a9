"""Guest networking: bridge + veth with addresses, NAT and published ports (nftables), HTB
shaping, and VServer-style IP isolation on the host stack (cgroup BPF).

pyroute2 is imported only inside the functions that need it: ``berth run --net none`` never
pays for it.
"""

from __future__ import annotations

from berth.net.guest import adopt, check, gc, info, set_rate, setup, teardown
from berth.net.options import NetOptions, Publish, parse

__all__ = ["NetOptions", "Publish", "adopt", "check", "gc", "info", "parse", "set_rate", "setup", "teardown"]
