"""The isolation experiment's bookkeeping (pure logic): rounds, neighbour order, per-pair ratios."""

from __future__ import annotations

import pytest
from bench.eval.experiments import NEIGHBOURS, _iso_order, _iso_ratios, _iso_rounds, _pct, config


def test_each_beside_run_is_divided_by_the_alone_runs_around_it() -> None:
    seq = [
        ("alone", {"cpu": 100.0, "fileio": 10.0}),
        ("CPU hog", {"cpu": 90.0, "fileio": 9.0}),
        ("alone", {"cpu": 80.0, "fileio": 8.0}),
        ("memory hog", {"cpu": 72.0}),
        ("alone", {"cpu": 80.0, "fileio": 10.0}),
    ]
    assert _iso_ratios(seq, "cpu") == {"CPU hog": 1.0, "memory hog": 0.9}
    assert _iso_ratios(seq, "fileio") == {"CPU hog": 1.0}  # the memory hog run has no fileio


def test_a_failed_alone_run_leaves_the_other_neighbour_and_no_alone_gives_no_ratio() -> None:
    seq = [("alone", None), ("fork bomb", {"cpu": 45.0}), ("alone", {"cpu": 50.0}), ("I/O hog", None)]
    assert _iso_ratios(seq, "cpu") == {"fork bomb": 0.9}
    assert _iso_ratios([("alone", None), ("CPU hog", {"cpu": 1.0}), ("alone", None)], "cpu") == {}


def test_the_neighbours_rotate_so_none_always_follows_the_same_one() -> None:
    names = [nb for nb, _a in NEIGHBOURS]
    orders = [_iso_order(r) for r in range(len(names))]
    assert all(sorted(o) == sorted(names) for o in orders)
    assert len({o[0] for o in orders}) == len(names)
    assert _iso_order(len(names)) == orders[0]


@pytest.mark.parametrize("quick", [True, False])
def test_the_limited_configuration_gets_every_round_and_the_others_at_least_one(quick: bool) -> None:
    cfg = config(quick)
    assert _iso_rounds(cfg, "berth, limits") == cfg.iso_reps >= 2
    assert 1 <= _iso_rounds(cfg, "berth, no limits") <= cfg.iso_reps
    assert 1 <= _iso_rounds(cfg, "uml") <= cfg.iso_reps


def test_percentages_show_the_median_and_the_range() -> None:
    assert _pct([0.9, 1.01, 0.95]) == "95% (90–101)"
    assert _pct([0.9]) == "90%"
    assert _pct([]) == "–"
