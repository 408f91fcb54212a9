"""Where a guest's tini comes from (pure: specs made by hand): a read-only bind on its /dev tmpfs
(CRIU can restore it), or a sealed memfd where a bind would be unsafe or impossible."""

from __future__ import annotations

from berth.runtime.process import init_bound


def spec(*, dev_tmpfs: bool = True, caps: tuple[str, ...] = ("CAP_CHOWN",), userns: bool = False) -> dict:
    mounts = [{"destination": "/proc", "type": "proc"}]
    if dev_tmpfs:
        mounts.append({"destination": "/dev", "type": "tmpfs"})
    namespaces = [{"type": "pid"}, {"type": "mount"}] + ([{"type": "user"}] if userns else [])
    return {
        "mounts": mounts,
        "linux": {"namespaces": namespaces},
        "process": {"capabilities": {"bounding": list(caps)}},
    }


def test_bound_on_the_guests_dev_tmpfs() -> None:
    assert init_bound(spec())
    assert init_bound(spec(userns=True))


def test_memfd_without_a_dev_tmpfs() -> None:
    assert not init_bound(spec(dev_tmpfs=False))


def test_memfd_for_privileged_guests_of_the_host_user_namespace() -> None:
    # CAP_SYS_ADMIN of the host's user namespace could remount the bind rw and change the host's tini.
    assert not init_bound(spec(caps=("CAP_SYS_ADMIN",)))
    # In its own user namespace it cannot: the host's root owns the file, unmapped there.
    assert init_bound(spec(caps=("CAP_SYS_ADMIN",), userns=True))
