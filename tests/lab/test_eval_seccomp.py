"""The micro-benchmarks' seccomp floor and one-CPU context switch: micro.c's ``seccomp`` prefix
really runs a test under a filter (and only then), ``ctxsw1`` keeps both processes on one CPU,
and the floor table relates berth to that floor round by round (pure logic)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from bench.eval.experiments import MICRO_SRC, SECCOMP_FLOOR, SYSCALL_TESTS, _seccomp_table, parse_micro
from tests.helpers import compile_c


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(tmp_path_factory.mktemp("micro") / "micro", MICRO_SRC, missing="bench/eval/micro.c")


def _status(micro: Path, *prefix: str) -> dict[str, str]:
    out = subprocess.run(
        [str(micro), *prefix, "run", "/bin/cat", "/proc/self/status"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_the_seccomp_prefix_runs_the_test_under_a_filter(micro: Path) -> None:
    plain, filtered = _status(micro), _status(micro, "seccomp")
    assert filtered["Seccomp"].strip() == "2" and filtered["NoNewPrivs"].strip() == "1"
    assert plain["Seccomp"].strip() == "0"  # (the test itself runs unfiltered)


def test_syscalls_reports_getpid_and_both_context_switches(micro: Path) -> None:
    for prefix in ((), ("seccomp",)):
        p = subprocess.run(
            [str(micro), *prefix, "syscalls", "0.02"], capture_output=True, text=True, check=True, timeout=60
        )
        got = parse_micro(p.stdout)
        assert set(got) == set(SYSCALL_TESTS) and all(v > 0 for v in got.values())


def test_ctxsw1_pins_both_processes_to_one_cpu(micro: Path, tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to pin")
    # the child inherits the pinned mask: while ctxsw1 runs, both processes may use one CPU only
    p = subprocess.Popen([str(micro), "ctxsw1", "1.0"], stdout=subprocess.PIPE, text=True)
    try:
        masks: set[str] = set()
        for _ in range(200):
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            if kids:
                for pid in (p.pid, int(kids[0])):
                    status = Path(f"/proc/{pid}/status").read_text()
                    masks.add(next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list")))
                break
            os.sched_yield()
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "micro ctxsw1 " in out
    assert len(masks) == 1  # the same mask in both processes: one CPU
    cpus = masks.pop().split(":", 1)[1].strip()
    assert cpus.isdigit(), cpus


def test_the_floor_table_gives_berth_over_the_floor_per_round() -> None:
    samples = {
        ("native", "getpid"): {1: 100.0, 2: 200.0},
        (SECCOMP_FLOOR, "getpid"): {1: 80.0, 2: 160.0},
        ("berth", "getpid"): {1: 80.0, 2: 150.0},
        ("native", "ctxsw"): {1: 10.0},
        (SECCOMP_FLOOR, "ctxsw"): {1: 10.0},
        ("berth", "ctxsw"): {1: 5.0},
    }
    t = _seccomp_table(samples)
    assert t.header[1:4] == ["native ops/s", f"{SECCOMP_FLOOR} ops/s", "berth ops/s"]
    assert t.header[-1] == f"berth/{SECCOMP_FLOOR}" and "runc ops/s" not in t.header
    getpid, ctxsw, ctxsw1 = t.rows
    assert getpid[-1].startswith("0.969")  # rounds: 80/80 = 1.0 and 150/160 = 0.9375: median 0.969
    assert getpid[-3].startswith("0.8 ")  # the floor over native: 0.8 both rounds
    assert ctxsw[-1].startswith("0.5") and ctxsw1[-1] == "–"  # no ctxsw1 samples: a dash
