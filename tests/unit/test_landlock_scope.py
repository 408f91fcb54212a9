"""Pure parts of the Landlock scope: the ruleset struct, the annotation, the ABI decision, and
which guests the manager scopes (berth.linux.landlock, berth.runtime.scope, berth.cli.run)."""

from __future__ import annotations

import struct

import pytest

from berth.cli import run as runcli
from berth.errors import UsageError
from berth.guests import hostpower
from berth.linux import landlock
from berth.runtime import scope


def test_ruleset_attr_is_a_scope_only_ruleset() -> None:
    raw = landlock.ruleset_attr(landlock.SCOPE_ABSTRACT_UNIX_SOCKET)
    # struct landlock_ruleset_attr: three __u64, the size ABI 6 takes (scoped is the third)
    assert len(raw) == 24
    assert struct.unpack("=QQQ", raw) == (0, 0, 1)  # no fs or net access handled: none restricted
    both = landlock.ruleset_attr(landlock.SCOPE_ABSTRACT_UNIX_SOCKET | landlock.SCOPE_SIGNAL)
    assert struct.unpack("=QQQ", both) == (0, 0, 3)
    with pytest.raises(ValueError, match="unknown Landlock scope"):
        landlock.ruleset_attr(1 << 2)


def test_scope_bits_are_the_kernels() -> None:
    assert scope.BITS[scope.ABSTRACT_UNIX] == landlock.SCOPE_ABSTRACT_UNIX_SOCKET == 1
    assert scope.BITS[scope.SIGNAL] == landlock.SCOPE_SIGNAL == 2
    assert scope.SCOPES_ABI == landlock.SCOPES_ABI == 6
    assert landlock.names(3) == scope.names(3) == "abstract-unix,signal"
    assert scope.names(0) == "none"


@pytest.mark.parametrize(
    ("value", "mask"),
    [
        (None, 0),
        ("", 0),
        ("none", 0),
        ("abstract-unix", 1),
        ("signal", 2),
        ("abstract-unix,signal", 3),
        (" signal , abstract-unix ", 3),
    ],
)
def test_annotation(value: str | None, mask: int) -> None:
    ann = {} if value is None else {scope.ANNOTATION: value}
    assert scope.wanted(ann) == mask


@pytest.mark.parametrize("value", ["abstract", "abstract-unix,bogus", 1, ["signal"]])
def test_bad_annotation_names_it(value: object) -> None:
    with pytest.raises(UsageError) as e:
        scope.wanted({scope.ANNOTATION: value})
    assert e.value.field == "annotations.org.berth.landlock"
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("mask", "abi", "applied", "warns"),
    [
        (0, 0, 0, False),  # nothing asked: nothing said, on any kernel
        (0, 7, 0, False),
        (1, 6, 1, False),
        (3, 7, 3, False),
        (1, 5, 0, True),  # Landlock without scopes (Linux 6.7-6.11)
        (1, 0, 0, True),  # no Landlock
    ],
)
def test_decide(mask: int, abi: int, applied: int, warns: bool) -> None:
    got, why = scope.decide(mask, abi)
    assert got == applied
    assert (why is not None) == warns
    if why:
        assert "\n" not in why and "ABI 6" in why
        assert ("no Landlock" if abi == 0 else f"ABI {abi}") in why


def test_applied_reads_the_state() -> None:
    assert scope.applied({}) == 0
    assert scope.applied({"berth": {"cgroup": "x"}}) == 0
    assert scope.applied({"berth": {"landlock": 1}}) == 1


def _opts(net: str, *security_opt: str, privileged: bool = False) -> dict[str, object]:
    return {"net": net, "security_opt": list(security_opt), "privileged": privileged}


@pytest.mark.parametrize(
    ("opts", "scoped"),
    [
        (_opts("host"), True),
        (_opts("ip:10.1.2.3"), True),
        (_opts("ip:10.1.2.3", "seccomp=unconfined"), True),
        (_opts("none"), False),  # its own network namespace: no host abstract socket in sight
        (_opts("bridge"), False),
        (_opts("host", "landlock=unconfined"), False),
        (_opts("host", privileged=True), False),
    ],
)
def test_which_guests_are_scoped(opts: dict[str, object], scoped: bool) -> None:
    assert runcli._host_stack_scope(opts) is scoped


def test_security_opt_landlock() -> None:
    assert runcli._seccomp({"security_opt": ["landlock=unconfined"]}, []) == ("default", True)
    with pytest.raises(UsageError) as e:
        runcli._seccomp({"security_opt": ["landlock=strict"]}, [])
    assert e.value.field == "security-opt"
    # a receiving host counts it as a weaker confinement (berth receive --allow-security-opt)
    assert hostpower._loosens("landlock=unconfined")
