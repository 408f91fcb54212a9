"""linux.sysctl in a namespace joined by path: refused when that namespace is the runtime's own
(the host's), as runc does; a namespace of the container's own is fine."""

from __future__ import annotations

import pytest

from berth.errors import UsageError
from berth.runtime.container import _check_sysctl_namespaces


def _linux(kind: str, path: str | None, key: str) -> dict:
    ns = {"type": kind, **({"path": path} if path else {})}
    return {"namespaces": [ns], "sysctl": {key: "1"}}


@pytest.mark.parametrize(
    ("kind", "nsfile", "key"),
    [
        ("network", "net", "net.ipv4.ip_forward"),
        ("ipc", "ipc", "kernel.shmmax"),
        ("uts", "uts", "kernel.domainname"),
    ],
)
def test_the_hosts_own_namespace_by_path_is_refused(kind: str, nsfile: str, key: str) -> None:
    with pytest.raises(UsageError) as e:
        _check_sysctl_namespaces(_linux(kind, f"/proc/self/ns/{nsfile}", key))
    assert f"linux.sysctl.{key}" in str(e.value) and "host" in str(e.value)


def test_a_new_namespace_or_another_path_passes() -> None:
    _check_sysctl_namespaces(_linux("network", None, "net.ipv4.ip_forward"))
    _check_sysctl_namespaces(_linux("network", "/nonexistent/ns", "net.ipv4.ip_forward"))  # setns says
    _check_sysctl_namespaces({"namespaces": [{"type": "network", "path": "/proc/self/ns/net"}]})  # no sysctl
