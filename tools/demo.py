"""`make demo`: two guests side by side on the shared kernel, then the isolation checks.

Uses the installed `berth` launcher and the default store (/var/lib/berth, or BERTH_ROOT).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"
BERTH = str(BIN / "berth")

SHOW = "echo \"hostname: $(hostname)\"; echo 'processes:'; ps -o pid,user,comm; echo \"root: $(ls / | tr '\\n' ' ')\""
CHECKS = [
    (
        f"only its own processes (the host runs {sum(d.isdigit() for d in os.listdir('/proc'))})",
        "test $(ls -d /proc/[0-9]* | wc -l) -lt 10",
    ),
    ("host network links hidden (only lo)", 'test "$(ls /sys/class/net)" = lo'),
    ("mount is denied", "! mount -t tmpfs none /mnt 2>/dev/null"),
    ("block device mknod is denied", "! mknod /tmp/sda b 8 0 2>/dev/null"),
    ("/proc/sysrq-trigger is read-only", "! sh -c 'echo h > /proc/sysrq-trigger' 2>/dev/null"),
    ("/proc/kcore reads empty", 'test -z "$(head -c 16 /proc/kcore 2>/dev/null)"'),
    ("seccomp filter on", "grep -q '^Seccomp:.*2' /proc/self/status"),
    ("no_new_privs set", "grep -q '^NoNewPrivs:.*1' /proc/self/status"),
    ("capability bound = the Docker default set", "grep -q '^CapBnd:.*00000000a80425fb' /proc/self/status"),
    ("no fd beyond stdio", "test \"$(ls /proc/self/fd | tr -d '\\n')\" = 0123"),
]


def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BERTH, *args], capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def main() -> int:
    t0 = time.monotonic()
    built = subprocess.run(
        [BERTH, "template", "build", "busybox"], capture_output=True, text=True, timeout=120
    )
    if built.returncode:
        sys.stderr.write(built.stderr)
        return built.returncode
    print(f"== busybox template: {built.stdout.strip()}\n")
    print("== two guests started side by side, each showing its own hostname, processes and root")
    procs = [
        subprocess.Popen(
            [BERTH, "run", "--rm", "--hostname", name, "--", "/bin/sh", "-c", SHOW],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("web1", "db1")
    ]
    for p in procs:
        out, _ = p.communicate(timeout=60)
        print("\n".join("   " + line for line in out.splitlines()))
        print(f"   (exit status {p.returncode})\n")
    print(f"== host hostname stays: {os.uname().nodename}\n")
    print("== isolation checks, run inside a fresh guest")
    script = " ; ".join(
        f"if {cmd}; then echo 'PASS {desc}'; else echo 'FAIL {desc}'; fi" for desc, cmd in CHECKS
    )
    res = run(["run", "--rm", "--", "/bin/sh", "-c", script])
    print("\n".join("   " + line for line in res.stdout.splitlines()))
    if res.stderr:
        print(res.stderr, file=sys.stderr)
    failed = res.stdout.count("FAIL") + (res.returncode != 0)
    print("\n== exit status propagates")
    res = run(["run", "--rm", "--", "/bin/sh", "-c", "exit 42"])
    print(f"   berth run -- sh -c 'exit 42' -> {res.returncode}")
    failed += res.returncode != 42
    res = run(["run", "--rm", "--", "/no/such/command"])
    print(f"   berth run -- /no/such/command -> {res.returncode}: {res.stderr.strip()}")
    failed += res.returncode != 127
    print(
        f"\n== done in {time.monotonic() - t0:.1f}s; {'all checks passed' if not failed else f'{failed} FAILED'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
