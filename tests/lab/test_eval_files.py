"""The evaluation's file and paired comparisons (pure logic): the columns' order per round, the
per-round ratios, and where the root-fs file test's inodes were allocated."""

from __future__ import annotations

import pytest
from bench.eval.experiments import (
    MICRO_TESTS,
    config,
    count_groups,
    files_groups_note,
    med,
    mirrored,
    paired_ratios,
    parse_inodes,
    parse_micro,
    rotated,
)

COLS = ["native", "berth", "runc"]


def test_rotation_puts_every_column_first_once_and_behind_every_other() -> None:
    orders = [rotated(COLS, r) for r in range(len(COLS))]
    assert orders == [["native", "berth", "runc"], ["berth", "runc", "native"], ["runc", "native", "berth"]]
    before = {(o[i - 1], o[i]) for o in orders for i in range(1, len(o))}
    assert {("runc", "native"), ("native", "berth"), ("berth", "runc")} <= before
    assert rotated(COLS, 3) == COLS and rotated([], 1) == []


def test_mirrored_rounds_give_each_column_the_same_mean_position() -> None:
    pos = {c: [mirrored(COLS, r).index(c) for r in range(4)] for c in COLS}
    assert len({sum(p) for p in pos.values()}) == 1  # ABBA: a linear drift weighs on all alike
    assert mirrored(["native", "berth"], 1) == ["berth", "native"]


def test_ratios_pair_runs_of_the_same_round_only() -> None:
    berth = {1: 90.0, 2: 50.0, 4: 100.0}
    native = {1: 100.0, 2: 50.0, 3: 70.0, 4: 0.0}
    assert paired_ratios(berth, native) == [0.9, 1.0]  # round 3: no berth run; round 4: native 0
    # a drift between rounds cancels: every round 10 % slower, the median ratio stays 0.5
    slow = {r: 100.0 * 0.9**r for r in range(1, 6)}
    assert med(paired_ratios({r: v / 2 for r, v in slow.items()}, slow)) == pytest.approx(0.5)


def test_inodes_per_group_from_mb_groups() -> None:
    lines = [
        "#group: free  frags first [ 2^0   2^1 ]",
        "#0    : 58    7     1674  [ 8     5   ]",
        "#1    : 0     0     32768 [ 0     0   ]",
    ]
    assert count_groups(16384, lines) == 8192
    assert count_groups(16384, lines[:1]) is None


def test_micro_prints_the_first_inode_of_each_file_test() -> None:
    out = (
        "micro files ns_per_op=100.000 ops_per_s=10000.000 n=640\n"
        "micro files_inode ino=15351821\n"
        "micro files_tmpfs ns_per_op=25.000 ops_per_s=40000.000 n=2048\n"
        "micro files_tmpfs_inode ino=151839\n"
    )
    assert parse_inodes(out) == {"files": 15351821, "files_tmpfs": 151839}
    assert parse_micro(out) == {"files": 10000.0, "files_tmpfs": 40000.0}  # inode lines are not tests
    assert {t for t, _l, _k in MICRO_TESTS} >= {"files", "files_tmpfs"}


def test_the_groups_note_says_whether_the_columns_shared_one() -> None:
    same = files_groups_note({"native": [8193, 8200], "berth": [16384]}, 8192)
    assert same.endswith("all in group 1.") and "native 1, 1; berth 1" in same
    apart = files_groups_note({"native": [1], "berth": [8193]}, 8192)
    assert "NOT one group (2 groups" in apart
    assert files_groups_note({}, 8192) == "" and files_groups_note({"native": [1]}, None) == ""


def test_the_full_run_gives_the_noisy_paired_comparisons_more_rounds() -> None:
    full, quick, tiny = config(False), config(True), config(True, tiny=True)
    assert full.pair_reps > full.reps
    assert quick.pair_reps <= quick.reps and tiny.pair_reps <= tiny.reps  # quick and tiny: no longer


def test_the_file_tests_do_a_fixed_number_of_operations_in_batches_of_64() -> None:
    from bench.eval.experiments import files_count

    counts = [files_count(config(q, tiny=t)) for q, t in ((False, False), (True, False), (True, True))]
    assert counts == sorted(counts, reverse=True) and all(n % 64 == 0 and n >= 64 for n in counts)


def test_the_overlay_table_pairs_each_round_with_native_and_the_host_overlay() -> None:
    from bench.eval.experiments import HOST_OVERLAY, _overlay_table

    samples = {
        ("native", "files"): {1: 100.0, 2: 200.0},
        (HOST_OVERLAY, "files"): {1: 80.0, 2: 160.0},
        ("berth", "files"): {1: 80.0, 2: 150.0},
    }
    t = _overlay_table(samples)
    assert t.header == [
        "test",
        "native ops/s",
        f"{HOST_OVERLAY} ops/s",
        "berth ops/s",
        f"{HOST_OVERLAY}/native",
        "berth/native",
        f"berth/{HOST_OVERLAY}",
    ]  # runc not measured: no runc columns
    assert t.rows[0][4] == "0.8 (0.8–0.8)" and t.rows[0][6] == "0.969 (0.938–1)"
