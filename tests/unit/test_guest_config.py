"""A guest's config.toml, checked key by key (berth.guests.config.validate): one error naming the
file and the key."""

from __future__ import annotations

import pytest

from berth.guests.config import ConfigError, validate


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cmd", ["sh", "-c", "a\0b"]),
        ("entrypoint", ["/bin/x\0"]),
        ("env", ["A=1\0B=2"]),
        ("workdir", "/srv\0"),
        ("user", "1000\0"),
    ],
)
def test_a_nul_byte_is_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        validate({"template": "busybox", key: value}, "/x/config.toml")
    assert key in str(e.value) and "NUL" in str(e.value)


def test_a_plain_config_passes() -> None:
    out = validate({"template": "busybox", "cmd": ["sh", "-c", "echo hi"], "env": ["A=1"]}, "/x/config.toml")
    assert out["cmd"] == ["sh", "-c", "echo hi"]


def test_a_long_hostname_is_refused() -> None:
    with pytest.raises(ConfigError, match="hostname"):
        validate({"template": "busybox", "hostname": "h" * 65}, "/x/config.toml")


@pytest.mark.parametrize("name", ["a\nb", "a b", "web\t1", "x\x1b[31m"])
def test_a_hostname_with_whitespace_or_control_characters_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="hostname: .* contains"):
        validate({"template": "busybox", "hostname": name}, "/x/config.toml")
    validate({"template": "busybox", "hostname": "web-1.example_x"}, "/x/config.toml")
