"""The evaluation on every cgroup layout (pure logic): the report's cgroup-mode line from berth's
layout detection, the tiny settings, and the v2 lab's command."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.eval.experiments import config
from bench.eval.report import cgroup_mode
from bench.lab.bench_v2 import FAILED, command

from berth.cgroups.layout import parse_mountinfo

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"
V2_MOUNTINFO = (
    "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
)
V1_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
"""


def _line(text: str, controllers: list[str]) -> str:
    layout = parse_mountinfo(text)
    return cgroup_mode(layout.mode, layout.v1, layout.unified, controllers)


def test_a_v2_only_host_is_reported_as_unified_with_its_controllers() -> None:
    line = _line(V2_MOUNTINFO, ["cpu", "io", "memory", "pids"])
    assert line == "unified (cgroup v2 only, at /sys/fs/cgroup; controllers: cpu io memory pids)"


def test_a_hybrid_host_counts_its_v1_hierarchies_not_its_controllers() -> None:
    line = _line((DATA / "cgroups_mountinfo_hybrid.txt").read_text(), [])
    # one hierarchy per controller on this host (cpu and cpuacct apart) and the named systemd one
    assert (
        line
        == "hybrid (v1 controllers in 9 hierarchies + cgroup2 at /sys/fs/cgroup/unified, its controllers: none)"
    )


def test_a_v1_only_host_is_legacy_and_comounted_controllers_are_one_hierarchy() -> None:
    assert _line(V1_MOUNTINFO, []) == "legacy (cgroup v1 only, 2 hierarchies)"


@pytest.mark.parametrize("quick", [True, False])
def test_tiny_is_no_larger_than_quick_or_full(quick: bool) -> None:
    tiny, other = config(True, tiny=True), config(quick)
    assert tiny.tiny and not other.tiny
    assert tiny.quick  # the quick code paths, scaled down
    for f in ("reps", "iso_reps", "net_reps", "density_n", "idle_guests", "idle_reps", "latency_n"):
        assert 1 <= getattr(tiny, f) <= getattr(other, f), f
    assert max(tiny.scale_berth) <= max(other.scale_berth)
    assert tiny.secs <= other.secs and tiny.iso_secs <= other.iso_secs


def test_the_full_run_keeps_its_former_scale() -> None:
    full = config(False)
    assert (full.density_n, full.idle_guests, full.idle_reps, full.latency_n) == (15, 10, 5, 30)
    quick = config(True)
    assert (quick.density_n, quick.idle_guests, quick.idle_reps, quick.latency_n) == (5, 10, 3, 10)


def test_the_lab_command_runs_the_tiny_eval_on_ext4_and_prints_the_report() -> None:
    cmd = command("isolation,density", "native,berth,runc")
    assert (
        "-m bench.eval --tiny --columns native,berth,runc --results /run/lab-results --only isolation,density"
        in cmd
    )
    assert "mount --bind $TMPDIR/lab-var-tmp /var/tmp" in cmd
    assert cmd.index("mkfs.ext4") < cmd.index("/var/tmp") < cmd.index("bench.eval")
    # the lab's own results (bench/results is the host's, seen live: its newest run is not the lab's)
    assert "--results /run/lab-results" in cmd
    assert cmd.rstrip().endswith('for r in /run/lab-results/*/report.md; do echo "=== $r"; cat "$r"; done')
    assert "--only" not in command("", "native,berth")
    assert FAILED.startswith("**This experiment failed")


def test_the_report_header_names_the_columns_not_run_and_a_tiny_runs_meaning(tmp_path: Path) -> None:
    from bench.eval.report import write

    text = write(tmp_path, "tiny", [], ("0.1", "0.2"), 60.0, {"uml": "left out of this run"}).read_text()
    assert "- Column not run: uml (left out of this run)" in text
    assert "its figures and targets mean nothing" in text
    quick = write(tmp_path, "quick", [], ("0.1", "0.2"), 60.0).read_text()
    assert "Column not run" not in quick and "mean nothing" not in quick
    assert "- cgroup mode: " in quick and "unknown" not in quick.split("- cgroup mode: ")[1].split("\n")[0]
