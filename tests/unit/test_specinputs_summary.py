"""berth.guests.specinputs: the saved spec's config summary stands for the config only when it
was taken from the same bytes (a start's freshness check then parses nothing); any other summary
(stale, forged, malformed) is ignored and the config is parsed as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.guests import config, specinputs
from berth.guests.store import Store

CONFIG = 'template = "busybox"\nenv = ["FOO", "A=b"]\nlxcfs = true\n'


@pytest.fixture
def store(tmp_path: Path) -> Store:
    (tmp_path / "store" / "guests" / "g").mkdir(parents=True)
    (tmp_path / "store" / "guests" / "g" / "config.toml").write_text(CONFIG)
    return Store(str(tmp_path / "store"), str(tmp_path / "run"))


def _parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []
    real = config.from_bytes

    def counting(raw: bytes, path: str):  # type: ignore[no-untyped-def]
        seen.append(raw)
        return real(raw, path)

    monkeypatch.setattr(config, "from_bytes", counting)
    return seen


def test_a_summary_of_the_same_bytes_stands_for_the_config(store: Store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env = {"BERTH_X": "1", "FOO": "bar"}
    key, cfg = specinputs.inputs(store, "g", "stamp", None, env)
    summary = specinputs.config_summary(config.read(store.config("g")), cfg)
    assert summary["env"] == ["FOO"] and summary["template"] == "busybox" and summary["lxcfs"] is True
    parses = _parses(monkeypatch)
    key2, cfg2 = specinputs.inputs(store, "g", "stamp", None, env, summary)
    assert parses == [] and key2 == key and cfg2["lxcfs"] is True
    # The bare env names still reach the digest through the summary.
    assert specinputs.inputs(store, "g", "stamp", None, {**env, "FOO": "baz"}, summary)[0] != key


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(sha256="0" * 64),  # another config's (the file was edited since)
        lambda s: s.update(template=["busybox"]),
        lambda s: s.update(env="FOO"),
        lambda s: s.update(env=[1]),
        lambda s: s.update(lxcfs="yes"),
        lambda s: s.pop("template"),
    ],
    ids=["stale", "template", "env", "env-item", "lxcfs", "missing"],
)
def test_any_other_summary_is_ignored(store: Store, monkeypatch, damage) -> None:  # type: ignore[no-untyped-def]
    key, cfg = specinputs.inputs(store, "g", "stamp", None, {})
    summary = specinputs.config_summary(config.read(store.config("g")), cfg)
    damage(summary)
    parses = _parses(monkeypatch)
    assert specinputs.inputs(store, "g", "stamp", None, {}, summary)[0] == key
    assert len(parses) == 1


def test_an_edited_config_is_parsed_and_changes_the_digest(store: Store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    key, cfg = specinputs.inputs(store, "g", "stamp", None, {})
    summary = specinputs.config_summary(config.read(store.config("g")), cfg)
    Path(store.config("g")).write_text(CONFIG.replace("lxcfs = true", "lxcfs = false"))
    parses = _parses(monkeypatch)
    key2, cfg2 = specinputs.inputs(store, "g", "stamp", None, {}, summary)
    assert len(parses) == 1 and key2 != key and not cfg2["lxcfs"]
    # A config broken since: its own error, not the summary's answer.
    Path(store.config("g")).write_text("template = \n")
    with pytest.raises(config.ConfigError):
        specinputs.inputs(store, "g", "stamp", None, {}, summary)
