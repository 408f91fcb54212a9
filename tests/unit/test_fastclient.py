"""The lean `berth start` client (berth.guests.fastclient): its copies of the daemon's and the
store's rules must agree with the originals, its JSON must be JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from berth.errors import UsageError
from berth.guests import daemon, fastclient, lifecycle
from berth.guests.store import check_name

SRC = Path(__file__).resolve().parents[2] / "src"


def test_socket_name_and_workers_match_the_daemon() -> None:
    assert fastclient.SOCK == daemon.SOCK
    assert fastclient.WORKERS_PER_CPU == lifecycle.WORKERS_PER_CPU


@pytest.mark.parametrize(
    "name", ["a", "web-1", "x.y_z", "9", "a" * 48, "", "a" * 49, "-a", ".a", "_a", "a/b", "a b", "é", "a\n"]
)
def test_name_rule_is_the_stores(name: str) -> None:
    try:
        check_name(name)
        valid = True
    except UsageError:
        valid = False
    assert fastclient.name_ok(name) is valid


@pytest.mark.parametrize(
    "obj",
    [
        {"op": "start", "names": ["a", "b"], "fast": True, "env": {"PATH": "/bin", "X": 'q"uote\\'}},
        {"e": "é ☃ \n\t\x00", "n": None, "i": 3, "l": [], "d": {}},
        {"surrogate": "\udcff"},  # a non-UTF-8 environment byte, as os.environ holds it
    ],
)
def test_dumps_is_one_json_line(obj: dict) -> None:
    line = fastclient.dumps(obj)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == obj


def test_dumps_refuses_what_is_not_json() -> None:
    with pytest.raises(TypeError):
        fastclient.dumps({"x": object()})


@pytest.mark.parametrize("count", [1, 2, 3, 7, 8, 9, 17, 40])
@pytest.mark.parametrize("workers", ["1", "2", "3", "8"])
def test_batches_are_lifecycles(count: int, workers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"g{i}" for i in range(count)]
    got = fastclient.batches(names, {"BERTH_START_WORKERS": workers})
    assert got is not None and [n for b in got for n in b] == names
    monkeypatch.setenv("BERTH_START_WORKERS", workers)
    size = -(-count // min(count, lifecycle._workers()))
    assert [len(b) for b in got] == [len(names[i : i + size]) for i in range(0, count, size)]


@pytest.mark.parametrize("bad", ["lots", "0", "-1", "1.5"])
def test_bad_worker_count_leaves_it_to_the_full_path(bad: str) -> None:
    assert fastclient.batches(["a"], {"BERTH_START_WORKERS": bad}) is None


def test_start_declines_without_sending(tmp_path: Path) -> None:
    """Nothing to connect to, a name that is not a guest, a bad name or a fault point: None."""
    store, state = str(tmp_path / "store"), str(tmp_path / "run")
    (tmp_path / "store" / "guests" / "g").mkdir(parents=True)
    (tmp_path / "store" / "guests" / "g" / "config.toml").write_text('template = "busybox"\n')
    assert fastclient.start(store, state, "p", ["g"], {}) is None  # no guestd
    assert fastclient.start(store, state, "p", ["nope"], {}) is None
    assert fastclient.start(store, state, "p", ["../g"], {}) is None
    assert fastclient.start(store, state, "p", ["g"], {"BERTH_FAULT": "start:sent"}) is None
    assert fastclient.start(store, state, "p", [], {}) is None


def test_the_client_imports_no_json_socket_or_argparse() -> None:
    """The point of the module: importing it (and the start verb) costs no heavy stdlib module."""
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; import berth.cli.start, berth.guests.fastclient; "
        "print(' '.join(m for m in ('json', 'socket', 'argparse', 're', 'enum', 'tomllib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(SRC)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
