"""berth.guests.config.load on a broken config.toml: one ConfigError naming the file and, for a
file that is not TOML, tomllib's line and column; never an exception of another kind (a list,
top or a template's in-use check name the guest and go on with the others only on ConfigError).
Deep dotted keys are refused before tomllib sees them (its memory grows with depth²)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from berth.errors import BerthError
from berth.guests import config
from berth.guests.config import ConfigError


def _error(tmp_path: Path, content: bytes | None) -> str:
    path = tmp_path / "config.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        config.load(str(path))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    return msg[len(f"{path}: ") :]


@pytest.mark.parametrize(
    ("content", "want"),
    [
        (
            b'template = "busybox"\ncmd = ["sh",\n  "-c" "x"]\n',
            "not valid TOML at line 3, column 8: unclosed array",
        ),
        (
            b'template = "busybox"\nx = [',
            "not valid TOML at line 2, column 6 (the end of the file): invalid value",
        ),
        (b"[[[\n", "not valid TOML at line 1, column 3: invalid initial character for a key part"),
        (
            b'template = "busybox"\n# \xc3\xa9t\xc3\xa9\nx = "\xff"\n',
            "not valid TOML at line 3, column 6: not UTF-8 (byte 0xff)",
        ),
        (b"\xfe", "not valid TOML at line 1, column 1: not UTF-8 (byte 0xfe)"),
        (b"", "empty (a guest's config needs at least 'template')"),
        (b"  \n\n", "empty (a guest's config needs at least 'template')"),
        (b"# only a comment\n", "template: missing"),
        (b"x = " + b"[" * 100_000 + b"]" * 100_000, "not valid TOML: nested too deeply"),
        (b'template = "x"\ndisk = "1e999"\n', "disk: '1e999' is too large"),
        (None, "missing"),
    ],
)
def test_one_error_naming_the_file(tmp_path: Path, content: bytes | None, want: str) -> None:
    got = _error(tmp_path, content)
    assert got.startswith(want), got
    assert " -: " not in got and not got.startswith("-:")


def test_a_directory_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "config.toml").mkdir()
    assert _error(tmp_path, None) == "cannot be read: Is a directory"


def test_too_large(tmp_path: Path) -> None:
    got = _error(tmp_path, b'template = "x"\n' + b"#" * (config.MAX_BYTES + 1))
    assert got == "larger than 256 KiB: not a guest config"


@pytest.mark.parametrize(
    "key",
    [
        "a." * 100_000 + "b",  # 24 GB in tomllib if let through
        '"".' * 80 + "b",
        "[" + "t." * 80 + "u]",
        'x = 1 # "\n' + "a." * 80 + "b",  # a quote in a comment opens no string
        'x = """a""""\n' + "a." * 80 + "b",  # a multi-line string ending in a quote
        'x = "unclosed\n' + "a." * 80 + "b",  # a one-line string ends with its line
    ],
    ids=["bare", "quoted", "table", "comment-quote", "ml-string-quote", "unclosed-string"],
)
def test_a_deep_dotted_key_is_refused_before_parsing(tmp_path: Path, key: str) -> None:
    text = 'template = "busybox"\n' + key + (" = 1\n" if not key.endswith("]") else "\n")
    got = _error(tmp_path, text.encode())
    assert "a key nested more than 64 deep" in got, got


@pytest.mark.parametrize(
    "text",
    [
        'template = "busybox"\ncmd = ["sh", "-c", "' + "." * 500 + '"]\n',  # dots in a string
        "template = 'busybox'\ncmd = ['" + "." * 500 + "']\n",
        'template = "busybox"\ncmd = ["""\n' + "." * 500 + '\n"""]\n',
        'template = "busybox"\ncmd = ["\\"' + "." * 500 + '"]\n',  # an escaped quote
        'template = "busybox" # ' + "." * 500 + "\n",
        'template = "busybox"\nresources."cpu-reserve" = "0.5"\n',
    ],
)
def test_dots_in_strings_and_comments_pass(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert config.load(str(path))["template"] == "busybox"
    assert config.load(str(path)) == config.validate(tomllib.loads(text), str(path))


def test_the_dot_count_agrees_with_tomllib() -> None:
    """Any document tomllib reads with a key nested deeper than MAX_DOTS is refused: the
    scanner never sees less depth than tomllib builds (strings and comments skipped alike)."""
    import random

    rnd = random.Random(7)
    parts = ['"', "'", '"""', "'''", "#", "\\", "\n", ".", "a", " = ", "[", "]", "1", " "]
    for _ in range(20_000):
        text = "".join(rnd.choice(parts) for _ in range(rnd.randint(1, 30)))
        deep = "a." * (config.MAX_DOTS + 1) + "b = 1"
        doc = text + "\n" + deep + "\n"
        try:
            tomllib.loads(doc)
        except tomllib.TOMLDecodeError:
            continue
        assert config._deep_key_line(doc), repr(doc)


def test_every_failure_is_a_berth_error(tmp_path: Path) -> None:
    """Random bytes and random TOML punctuation: load returns or raises a one-line BerthError,
    nothing else (a list or top catching BerthError goes on with the other guests)."""
    import random

    rnd = random.Random(11)
    path = tmp_path / "config.toml"
    errors = []
    for _ in range(2000):
        tail = bytes(rnd.choice(b"[]{}=\"'.#\n\\ax1") for _ in range(20))
        path.write_bytes(
            os.urandom(rnd.randint(0, 40)) if rnd.random() < 0.5 else b'template = "busybox"\n' + tail
        )
        try:
            config.load(str(path))
        except BerthError as e:
            errors.append(str(e))
    assert errors and not [e for e in errors if "\n" in e or not e.startswith(f"{path}: ")]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "a." * 100_000 + "b = 1\n",
            "config: the guest's config is not valid TOML at line 1: a key nested more than 64",
        ),
        (
            "x = 1\n" + '"".' * 1000 + "b = 1\n",
            "config: the guest's config is not valid TOML at line 2: a key nested",
        ),
        ("not toml [[[", "config: the guest's config is not valid TOML at line 1, column 5: expected '='"),
        ("x" * (config.MAX_BYTES + 1), "config: the guest's config is larger than 256 KiB"),
    ],
    ids=["deep-bare", "deep-quoted", "not-toml", "too-large"],
)
def test_a_received_config_is_parsed_within_bounds(tmp_path: Path, text: str, want: str) -> None:
    """berth receive: a sender's config with a deep dotted key (within HELLO's 1 MiB, tomllib
    would take hundreds of gigabytes) is refused before tomllib sees it, one line naming it."""
    from berth.errors import UsageError
    from berth.guests import migrate
    from berth.guests.store import Store

    store = Store(str(tmp_path / "store"), str(tmp_path / "state"))
    hello = {"name": "h9e-rx", "config": text, "spec": "{}", "live": False, "net": None}
    with pytest.raises(UsageError) as e:
        migrate.validate_incoming(store, hello)
    assert str(e.value).startswith(want), str(e.value)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("h9e-rx*"))
