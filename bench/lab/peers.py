"""Peer columns: one workload natively, in berth, in runc, in a separate-kernel guest and in gVisor.

    .venv/bin/python -m bench.lab.peers [loops] [footprint] [-n 3]

``loops``: a CPU loop and a syscall loop (bench/lab/loops.c, compiled static here) timed inside
each column, reported as throughput relative to native (1.00 = native speed). ``footprint``:
boot-to-exit latency of ``true`` and host memory (RSS, PSS) of an idle guest, per column.
Separate-kernel column: KVM where a real boot under KVM works, otherwise UML. TCG is never
reported as a performance figure.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.lab import gvisor, names, qemu, uml
from bench.lab.console import session_pids
from bench.lab.errors import LabError
from bench.lab.kernel import CACHE

REPO = Path(__file__).resolve().parents[2]
BERTH = REPO / ".venv" / "bin" / "berth"
LOOPS_SRC = Path(__file__).with_name("loops.c")
ITERATIONS = {"cpu": 300_000_000, "sys": 1_000_000}
# gVisor's ptrace platform pays a host round trip per syscall: fewer of them, same per-op figure.
SYS_ITERATIONS_SLOW = 100_000


def build_loops() -> Path:
    out = CACHE / "peers" / "loops"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.stat().st_mtime < LOOPS_SRC.stat().st_mtime:
        gcc = shutil.which("gcc")
        if gcc is None:
            raise LabError("gcc is not installed: cannot build bench/lab/loops.c")
        subprocess.run([gcc, "-O2", "-static", "-o", str(out), str(LOOPS_SRC)], check=True, timeout=120)
    return out


def _parse(out: str) -> float:
    for tok in out.split():
        if tok.startswith("ns_per_op="):
            return float(tok.split("=", 1)[1])
    raise LabError(f"no ns_per_op in the workload's output: {out.strip()[-200:]!r}")


class Columns:
    """How to run ``loops WORKLOAD N`` (and ``sleep``/``true``) in each column."""

    def __init__(self, loops: Path, tmp: Path) -> None:
        self.loops = loops
        self.tmp = tmp
        self.rootfs = tmp / "rootfs"
        shutil.copytree(gvisor.busybox_rootfs(), self.rootfs, symlinks=True)
        shutil.copy2(loops, self.rootfs / "loops")
        self.accel = qemu.choose_accel()

    def native(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.loops), *args], capture_output=True, text=True, timeout=600)

    def berth(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        cmd = [str(BERTH), "run", "--rm", "--rootfs", str(self.rootfs), "--", "/loops", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    def runc(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        bundle = self.tmp / f"runc-{secrets.token_hex(3)}"
        bundle.mkdir()
        cfg = gvisor.bundle_config(self.rootfs, ["/loops", *args])
        cfg["linux"]["namespaces"].append({"type": "cgroup"})
        (bundle / "config.json").write_text(json.dumps(cfg))
        state = self.tmp / "runc-state"
        cid = bundle.name
        try:
            return subprocess.run(
                ["runc", "--root", str(state), "run", "-b", str(bundle), cid],
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
            )
        finally:
            subprocess.run(["runc", "--root", str(state), "delete", "-f", cid], capture_output=True)
            shutil.rmtree(bundle)

    def uml(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        c = uml.run(f"{self.loops} {' '.join(args)}", memory_mb=512, timeout=600)
        return subprocess.CompletedProcess([], c.exit_status, c.output, "")

    def kvm(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        c, _ = qemu.run(f"{self.loops} {' '.join(args)}", vcpus=1, memory_mb=1024, timeout=600)
        return subprocess.CompletedProcess([], c.exit_status, c.output, "")

    def gvisor(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        r = gvisor.run("", argv=["/lab/loops", *args], binds=[(str(self.loops.parent), "/lab")], timeout=600)
        return subprocess.CompletedProcess([], r.exit_status, r.output, r.console_log)

    def table(self) -> list[tuple[str, Callable[[list[str]], subprocess.CompletedProcess[str]] | None, str]]:
        """(label, runner or None, note) per column."""
        kernel: tuple = (
            ("kvm", self.kvm, "Debian 6.1 under KVM")
            if self.accel.name == "kvm"
            else ("uml", self.uml, f"user-mode Linux 6.1 (no KVM: {self.accel.reason.split(';')[0]})")
        )
        return [
            ("native", self.native, "host process"),
            ("berth", self.berth if BERTH.exists() else None, "berth run --rm --rootfs"),
            ("runc", self.runc if shutil.which("runc") else None, "runc run"),
            kernel,
            (
                "gvisor",
                self.gvisor if gvisor.available() is None else None,
                f"runsc --platform={gvisor.PLATFORM}",
            ),
        ]


def loops(n: int) -> list[dict]:
    """Rounds of (every column, every workload), interleaved so drift on a shared host does not
    bias one column; the median ns/op per column and its throughput relative to native."""
    with tempfile.TemporaryDirectory(prefix=names.prefix("peers")) as tmp:
        cols = Columns(build_loops(), Path(tmp))
        table = cols.table()
        samples: dict[tuple[str, str], list[float]] = {}
        errors: dict[tuple[str, str], str] = {}
        for _ in range(n):
            for label, fn, _note in table:
                for work in ("cpu", "sys"):
                    if fn is None or (label, work) in errors:
                        continue
                    iters = ITERATIONS[work]
                    if work == "sys" and label in ("gvisor", "uml"):
                        iters = SYS_ITERATIONS_SLOW
                    try:
                        p = fn([work, str(iters)])
                    except LabError as e:
                        errors[label, work] = str(e).splitlines()[0]
                        continue
                    if p.returncode != 0:
                        errors[label, work] = f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-200:]}"
                        continue
                    samples.setdefault((label, work), []).append(_parse(p.stdout))
    rows = []
    for label, fn, note in table:
        row: dict = {"column": label, "what": note if fn is not None else f"{note}: not installed"}
        for work in ("cpu", "sys"):
            got = samples.get((label, work))
            base = samples.get(("native", work))
            if got and base:
                ns = statistics.median(got)
                row[f"{work}_ns_per_op"] = round(ns, 3)
                row[f"{work}_ns_range"] = [round(min(got), 3), round(max(got), 3)]
                row[f"{work}_vs_native"] = round(statistics.median(base) / ns, 3)
            if (label, work) in errors:
                row[f"{work}_error"] = errors[label, work]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _mem(pids: list[int]) -> tuple[float, float]:
    """(RSS, PSS) in MiB summed over ``pids``."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def tree_pids(root: int) -> list[int]:
    """``root``, its descendants, and its session (guests that reparent or setsid stay counted)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found = {root}
    changed = True
    while changed:
        changed = False
        for pid, pp in parent.items():
            if pp in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(found | set(session_pids(root)))


def footprint(n: int) -> list[dict]:
    rows = []
    settle = 2.5
    with tempfile.TemporaryDirectory(prefix=names.prefix("peers")) as tmp:
        cols = Columns(build_loops(), Path(tmp))
        mem: dict[str, tuple[float, float]] = {}

        def watcher(label: str) -> Callable[[int], None]:
            def watch(pid: int) -> None:
                time.sleep(settle)
                mem[label] = _mem(tree_pids(pid))

            return watch

        def berth_idle() -> None:
            p = subprocess.Popen(
                [str(BERTH), "run", "--rm", "--rootfs", str(cols.rootfs), "--", "/bin/sleep", "5"],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
            )
            watcher("berth")(p.pid)
            p.wait(timeout=60)

        starts: dict[str, Callable[[], object]] = {
            "berth": lambda: cols.berth(["cpu", "1"]),
            "uml": lambda: uml.run("true", memory_mb=512, timeout=60),
            "gvisor": lambda: gvisor.run("true", timeout=60),
        }
        idles: dict[str, Callable[[], object]] = {
            "berth": berth_idle,
            "uml": lambda: uml.run("sleep 5", memory_mb=512, timeout=60, watch=watcher("uml")),
            "gvisor": lambda: gvisor.run("sleep 5", timeout=60, watch=watcher("gvisor")),
        }
        if cols.accel.name == "kvm":
            starts["kvm"] = lambda: qemu.run("true", vcpus=1, memory_mb=512, share_host_ro=False)
        for label, start in starts.items():
            times = []
            for _ in range(n):
                t = time.monotonic()
                start()
                times.append(time.monotonic() - t)
            if label in idles:
                idles[label]()
            rss, pss = mem.get(label, (float("nan"), float("nan")))
            row = {
                "column": label,
                "start_to_exit_s": round(statistics.median(times), 3),
                "idle_rss_mib": round(rss, 1),
                "idle_pss_mib": round(pss, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if cols.accel.name != "kvm":
        print(json.dumps({"column": "kvm", "skipped": cols.accel.reason}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="peers", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="*", help="loops, footprint (default: both)")
    p.add_argument("-n", type=int, default=3, help="runs per column (median)")
    a = p.parse_args(argv)
    a.what = a.what or ["footprint", "loops"]
    if set(a.what) - {"loops", "footprint"}:
        p.error("what: loops or footprint")
    try:
        if "footprint" in a.what:
            footprint(a.n)
        if "loops" in a.what:
            loops(a.n)
    except LabError as e:
        print(f"peers: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
