"""berth.cgroups on the real kernel (root): lifecycle, limits that bite, freezer, kill, the cgroup v2
device filter (BPF) and clean removal.

Every cgroup lives under a parent unique to the test (``f"{prefix}{token}"``) and is removed in a
fixture even when the test fails.  Workloads are child processes started paused (blocked on stdin),
moved into the cgroup, then released; hogs run only inside a limited cgroup and end on their own.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.cgroups import Cgroup, detect, open_cgroup
from berth.cgroups.layout import Layout
from berth.errors import CgroupError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a real kernel"),
]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Children:
    """Child processes this test started; each is killed (by pid) and reaped at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def paused(self, code: str) -> subprocess.Popen[bytes]:
        """A Python child that runs ``code`` once a line arrives on its stdin."""
        prog = "import sys\nsys.stdin.readline()\n" + code
        p = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", prog], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.procs.append(p)
        return p

    @staticmethod
    def go(p: subprocess.Popen[bytes]) -> None:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()


def _remove_everywhere(layout: Layout, rel: str) -> None:
    for mnt in layout.mountpoints():
        top = Path(mnt) / rel
        if top.is_dir():
            for d, _subdirs, _files in os.walk(top, topdown=False):
                try:
                    os.rmdir(d)
                except OSError:
                    pass


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def parent(prefix: str) -> Iterator[str]:
    """A unique cgroup parent path, removed (with anything under it) at teardown."""
    name = f"{prefix}{secrets.token_hex(3)}"
    layout = detect()
    try:
        yield name
    finally:
        leftover = open_cgroup(name, layout)
        try:
            leftover.destroy(timeout=10)
        except CgroupError:
            pass
        _remove_everywhere(layout, name)


@pytest.fixture
def cg(parent: str) -> Iterator[Cgroup]:
    c = open_cgroup(f"{parent}/c", detect())
    c.create()
    try:
        yield c
    finally:
        c.destroy(timeout=10)
        c.remove_empty_parents(parent)


def read(path: str) -> str:
    return Path(path).read_text().strip()


def test_detect_this_host() -> None:
    layout = detect()
    assert layout.mode in ("v1", "v2", "hybrid")
    assert detect() is layout  # cached
    if layout.mode == "hybrid":
        assert layout.unified is not None
        assert Path(layout.unified, "cgroup.procs").exists()


def test_lifecycle(cg: Cgroup, children: Children) -> None:
    assert cg.exists()
    assert cg.pids() == []
    assert not cg.populated()
    p = children.paused("import time; time.sleep(60)")
    cg.add(p.pid)
    assert cg.pids() == [p.pid]
    assert cg.populated()
    for d in cg.dirs():
        assert str(p.pid) in read(f"{d}/cgroup.procs").split()

    cg.set(
        {
            "pids": {"limit": 50},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "memory": {"limit": 256 << 20},
        }
    )
    st = cg.stats()
    assert set(st) == {"cpu", "memory", "pids", "blkio"}
    assert st["pids"] == {"current": 1, "limit": 50}
    assert st["memory"]["limit"] == 256 << 20
    assert st["memory"]["usage"] is not None  # v1 does not move charges with the task: may be 0
    assert st["cpu"]["usage_ns"] is not None

    cg.freeze()
    assert cg.frozen()
    cg.thaw()
    assert not cg.frozen()

    cg.kill(15)
    assert p.wait(timeout=5) == -15
    assert wait_for(lambda: not cg.populated())
    cg.destroy()
    assert not cg.exists()
    cg.destroy()  # idempotent


def test_create_is_idempotent_and_cpuset_inherits(parent: str) -> None:
    layout = detect()
    deep = open_cgroup(f"{parent}/a/b/c", layout)
    try:
        deep.create()
        deep.create()
        cpuset = deep.dir("cpuset")
        if cpuset is not None:
            root = layout.v1["cpuset"]
            assert read(f"{cpuset}/cpuset.cpus") == read(f"{root}/cpuset.cpus")
            assert read(f"{cpuset}/cpuset.mems") == read(f"{root}/cpuset.mems")
    finally:
        deep.destroy()
    # destroy removes the parents this object made, not the ones it found
    assert not any(Path(m, parent).exists() for m in layout.mountpoints())


def test_set_refusal_is_one_clear_line(cg: Cgroup) -> None:
    with pytest.raises(CgroupError) as err:
        cg.set({"cpu": {"cpus": "4096-4097"}})
    msg = str(err.value)
    assert "cpuset.cpus" in msg
    assert "'4096-4097'" in msg
    assert "\n" not in msg


def test_memory_limit_enforced(cg: Cgroup, children: Children) -> None:
    cg.set({"memory": {"limit": 64 << 20, "swap": 64 << 20}})
    hog = children.paused(
        "chunks = []\nfor _ in range(64):\n    chunks.append(b'x' * (4 << 20))\nprint('survived')"
    )
    cg.add(hog.pid)
    children.go(hog)
    assert hog.wait(timeout=30) == -9  # OOM-killed inside the cgroup
    st = cg.stats()["memory"]
    assert st["oom_kills"] is None or st["oom_kills"] >= 1
    assert st["max_usage"] is None or st["max_usage"] <= 64 << 20


def test_memory_limit_below_usage(cg: Cgroup, children: Children) -> None:
    if cg.dir("memory") is None:
        pytest.skip("no v1 memory hierarchy (v2 reclaims instead of refusing)")
    cg.set({"memory": {"limit": 128 << 20}})
    p = children.paused("b = b'x' * (32 << 20)\nprint('ready', flush=True)\nimport time; time.sleep(60)")
    cg.add(p.pid)
    children.go(p)
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    with pytest.raises(CgroupError, match="below the cgroup's current usage") as err:
        cg.set({"memory": {"limit": 1 << 20, "swap": 1 << 20}})
    assert "\n" not in str(err.value)


def test_pids_max_contains_forks(cg: Cgroup, children: Children) -> None:
    cg.set({"pids": {"limit": 5}})
    code = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n, flush=True)\n"
        "time.sleep(60)\n"
    )
    p = children.paused(code)
    cg.add(p.pid)
    children.go(p)
    assert p.stdout is not None
    assert int(p.stdout.readline()) == 4  # 5 tasks in all, itself included
    assert len(cg.pids()) == 5
    assert cg.stats()["pids"]["current"] == 5
    cg.destroy()  # kills the grandchildren too
    assert p.wait(timeout=5) == -9
    assert not cg.exists()


def _usage(cg: Cgroup) -> int:
    ns = cg.stats()["cpu"]["usage_ns"]
    assert ns is not None
    return ns


def test_cpu_quota_observed(cg: Cgroup, children: Children) -> None:
    cg.set({"cpu": {"quota": 20000, "period": 100000}})  # 20% of one CPU
    hog = children.paused(
        "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n    pass\n"
    )
    cg.add(hog.pid)
    children.go(hog)
    assert wait_for(lambda: _usage(cg) > 10_000_000)
    u0, t0 = _usage(cg), time.monotonic()
    time.sleep(1.0)  # the measuring interval
    used = (_usage(cg) - u0) / 1e9 / (time.monotonic() - t0)
    assert 0.1 < used < 0.3, f"used {used:.2f} CPU under a 0.2 CPU quota"
    st = cg.stats()["cpu"]
    assert st["nr_throttled"] is None or st["nr_throttled"] > 0


def test_freeze_stops_busy_loop(cg: Cgroup, children: Children) -> None:
    cg.set({"cpu": {"quota": 50000, "period": 100000}})
    hog = children.paused(
        "import time\nend = time.monotonic() + 5\nwhile time.monotonic() < end:\n    pass\n"
    )
    cg.add(hog.pid)
    children.go(hog)
    assert wait_for(lambda: _usage(cg) > 10_000_000)
    cg.freeze()
    assert cg.frozen()
    u0 = _usage(cg)
    time.sleep(0.3)  # the measuring interval
    assert _usage(cg) - u0 < 2_000_000  # < 2 ms of CPU while frozen
    cg.thaw()
    assert wait_for(lambda: _usage(cg) - u0 > 20_000_000)


def test_kill_all_and_destroy_nested(cg: Cgroup, children: Children) -> None:
    sub = open_cgroup(f"{cg.path}/inner/deeper", cg.layout)
    sub.create()
    a = children.paused("import time; time.sleep(60)")
    b = children.paused("import time; time.sleep(60)")
    holder = cg
    if cg.layout.mode == "v2":
        # v2's no-internal-process rule: sub.create() enabled the controllers for cg's children,
        # so cg itself takes no process (the kernel's EBUSY, one line); a lives in a leaf beside.
        with pytest.raises(CgroupError, match=r"EBUSY") as err:
            cg.add(a.pid)
        assert len(str(err.value).splitlines()) == 1
        holder = open_cgroup(f"{cg.path}/side", cg.layout)
        holder.create()
    holder.add(a.pid)
    sub.add(b.pid)
    assert sorted(cg.pids()) == sorted([a.pid, b.pid])
    cg.kill()
    assert a.wait(timeout=5) == -9
    assert b.wait(timeout=5) == -9
    cg.destroy()
    assert not cg.exists()
    assert not sub.exists()
    assert not any(Path(m, cg.path).exists() for m in cg.layout.mountpoints())


def test_destroy_kills_what_is_left(cg: Cgroup, children: Children) -> None:
    p = children.paused("import time; time.sleep(60)")
    cg.add(p.pid)
    cg.destroy(timeout=5)
    assert p.wait(timeout=5) == -9
    assert not cg.exists()


def _try_open_in(unified_dir: str, path: str = "/dev/null") -> int:
    """Fork a child that moves itself into the cgroup2 dir and opens ``path``; 0 or the errno."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only os calls, then _exit
        try:
            os.close(r)
            fd = os.open(f"{unified_dir}/cgroup.procs", os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            try:
                os.close(os.open(path, os.O_RDONLY))
                os.write(w, b"0")
            except OSError as exc:
                os.write(w, str(exc.errno).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        out = os.read(r, 16)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return int(out or b"-1")


@pytest.fixture
def v2cg(parent: str) -> Iterator[Cgroup]:
    """A cgroup driven through the v2 code path on the real cgroup2 mount (the whole of this host's
    hierarchy on v2, the unified one on hybrid)."""
    host = detect()
    if host.unified is None:
        pytest.skip("no cgroup2 mount on this host")
    layout = Layout("v2", {}, host.unified)
    if host.mode == "hybrid":
        # No controller enabling in the host's cgroup2 root for a test: the core files are enough.
        layout._controllers = frozenset()
    c = open_cgroup(f"{parent}/v2", layout)
    c.create()
    try:
        yield c
    finally:
        c.destroy()
        c.remove_empty_parents(parent)


def test_device_filter_bpf(v2cg: Cgroup) -> None:
    ud = v2cg.unified_dir()
    assert ud is not None
    assert _try_open_in(ud) == 0
    v2cg.set(
        {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
            ]
        }
    )
    assert _try_open_in(ud) == 1  # EPERM: /dev/null (c 1:3) is not allowed
    assert _try_open_in(ud, "/dev/zero") == 0
    v2cg.set(
        {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"},
            ]
        }
    )
    assert _try_open_in(ud) == 0  # the new program replaced the old one
    assert _try_open_in(ud, "/dev/zero") == 1

    from berth.linux import bpf

    fd = os.open(ud, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(bpf.prog_query(fd, bpf.AttachType.CGROUP_DEVICE)) == 1
    finally:
        os.close(fd)


def test_v2_freeze_and_kill(v2cg: Cgroup, children: Children) -> None:
    p = children.paused("import time; time.sleep(60)")
    v2cg.add(p.pid)
    assert v2cg.populated()
    assert v2cg.pids() == [p.pid]
    v2cg.freeze()
    assert v2cg.frozen()
    v2cg.thaw()
    assert not v2cg.frozen()
    v2cg.kill()  # cgroup.kill
    assert p.wait(timeout=5) == -9
    assert wait_for(lambda: not v2cg.populated())


def test_v1_devices_enforced(cg: Cgroup, children: Children) -> None:
    if cg.dir("devices") is None:
        pytest.skip("no v1 devices hierarchy")
    cg.set(
        {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
            ]
        }
    )
    assert read(f"{cg.dir('devices')}/devices.list") == "c 1:5 rwm"
    code = (
        "import os\nfor p in ('/dev/null', '/dev/zero'):\n    try:\n        os.close(os.open(p, os.O_RDONLY))\n"
        "        print(0, flush=True)\n    except OSError as e:\n        print(e.errno, flush=True)\n"
    )
    p = children.paused(code)
    cg.add(p.pid)
    children.go(p)
    assert p.stdout is not None
    assert p.stdout.read().split() == [b"1", b"0"]


def test_timing_create_add_destroy(parent: str, children: Children) -> None:
    layout = detect()
    base = open_cgroup(parent, layout)
    base.create()
    create, add, destroy = [], [], []
    for i in range(10):
        p = children.paused("import time; time.sleep(60)")
        c = open_cgroup(f"{parent}/t{i}", layout)
        t0 = time.perf_counter()
        c.create()
        t1 = time.perf_counter()
        c.add(p.pid)
        t2 = time.perf_counter()
        c.destroy()
        t3 = time.perf_counter()
        create.append(t1 - t0)
        add.append(t2 - t1)
        destroy.append(t3 - t2)
        p.wait(timeout=5)
    med = {
        k: statistics.median(v) * 1000 for k, v in (("create", create), ("add", add), ("destroy", destroy))
    }
    print(
        f"\ncgroup timings on {layout.mode} (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
    )
    assert med["create"] < 20
    assert med["destroy"] < 50
    base.destroy()


def test_destroy_frozen(cg: Cgroup, children: Children) -> None:
    p = children.paused("import time; time.sleep(60)")
    cg.add(p.pid)
    cg.freeze()
    cg.destroy(timeout=5)
    assert p.wait(timeout=5) == -9
    assert not cg.exists()
    assert not cg.frozen()  # a cgroup that is gone is not frozen
    assert cg.pids() == []


def test_v2_destroy_frozen(v2cg: Cgroup, children: Children) -> None:
    p = children.paused("import time; time.sleep(60)")
    v2cg.add(p.pid)
    v2cg.freeze()
    v2cg.destroy(timeout=5)
    assert p.wait(timeout=5) == -9
    assert not v2cg.exists()


# -- delegation (a user namespace's root owning its guest's cgroup) ----------------------------
DELEGATE_UID = 1_999_990_000  # no host user has it; nothing is made with it outside the cgroup


def test_delegate_lets_owner_make_subcgroups_not_limits(cg: Cgroup, children: Children) -> None:
    """After :meth:`Cgroup.delegate`, a process of the new owner makes and joins sub-cgroups in the
    cgroup2 and controller-less v1 (name=systemd) hierarchies, and enables controllers for its
    children (v2); it cannot write the cgroup's own limits nor touch a v1 controller hierarchy.
    Root's destroy then removes what it made, deepest first."""
    uid = DELEGATE_UID
    chowned = cg.delegate(uid, uid)
    dirs = cg.delegation_dirs()
    ud = cg.unified_dir()
    assert dirs and all(os.stat(d).st_uid == uid for d in dirs)
    assert all(os.stat(p).st_uid == uid for p in chowned)
    if ud is not None:
        assert f"{ud}/cgroup.procs" in chowned and f"{ud}/cgroup.subtree_control" in chowned
        assert os.stat(f"{ud}/cgroup.max.depth").st_uid == 0
    forbidden = [f"{ud}/cgroup.max.depth"] if ud is not None else []
    forbidden += [f"{ud}/{k}" for k in ("memory.max", "pids.max") if ud and os.path.exists(f"{ud}/{k}")]
    v1_controller = [cg.dir(c) for c in ("memory", "pids") if cg.dir(c) is not None]
    forbidden += [
        f"{d}/memory.limit_in_bytes" for d in v1_controller if os.path.exists(f"{d}/memory.limit_in_bytes")
    ]
    enable = ""
    if cg.layout.mode == "v2" and ud is not None and "pids" in read(f"{ud}/cgroup.controllers").split():
        enable = f"{ud}/cgroup.subtree_control"
    code = f"""
import json, os, time
uid = {uid}
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
out = {{}}
def write(path, value):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
def attempt(name, fn):
    try:
        fn()
        out[name] = 0
    except OSError as e:
        out[name] = e.errno
for d in {dirs!r}:
    attempt("mkdir " + d, lambda: os.makedirs(d + "/sub/deeper"))
    attempt("join " + d, lambda: write(d + "/sub/deeper/cgroup.procs", str(os.getpid())))
for p in {forbidden!r}:
    attempt("write " + p, lambda: write(p, "1"))
for d in {v1_controller!r}:
    attempt("mkdir " + d, lambda: os.mkdir(d + "/sub"))
if {enable!r}:
    attempt("enable", lambda: write({enable!r}, "+pids"))
print(json.dumps(out), flush=True)
time.sleep(60)
"""
    p = children.paused(code)
    cg.add(p.pid)
    children.go(p)
    assert p.stdout is not None
    out = json.loads(p.stdout.readline())
    for d in dirs:
        assert out[f"mkdir {d}"] == 0 and out[f"join {d}"] == 0, out
    for f in forbidden:
        assert out[f"write {f}"] in (13, 1), (f, out)  # EACCES (EPERM where a file refuses writes)
    for d in v1_controller:
        assert out[f"mkdir {d}"] == 13, out
    if enable:
        assert out["enable"] == 0, out
        # v2's no-internal-process rule: the cgroup itself takes no process now; exec joins the
        # init's sub-cgroup instead (``near``).
        q = children.paused("import time; time.sleep(60)")
        with pytest.raises(CgroupError, match="EBUSY"):
            cg.add(q.pid)
        cg.add(q.pid, near=p.pid)
        assert f"0::/{cg.path}/sub/deeper" in Path(f"/proc/{q.pid}/cgroup").read_text()
    cg.destroy(timeout=10)
    assert p.wait(timeout=5) == -9
    assert not any(Path(m, cg.path).exists() for m in cg.layout.mountpoints())


def test_delegate_refuses_missing_cgroup(parent: str) -> None:
    c = open_cgroup(f"{parent}/never-made", detect())
    with pytest.raises(CgroupError, match="does not exist"):
        c.delegate(DELEGATE_UID, DELEGATE_UID)


def test_two_creates_racing_into_a_fresh_parent(parent: str) -> None:
    """Two cgroups made at once under a parent that neither finds: the one whose mkdir of the
    parent lost must not copy the parent's cpuset before the winner filled it in (an empty v1
    cpuset takes no task: ENOSPC).  Rounds until both raced at least a few times."""
    import threading

    layout = detect()
    cpuset = layout.v1.get("cpuset")
    if cpuset is None:
        pytest.skip("no v1 cpuset hierarchy on this host")
    for i in range(40):
        top = f"{parent}/r{i}"
        cgs = [open_cgroup(f"{top}/g{j}", layout) for j in range(2)]
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def make(c: Cgroup, start: threading.Barrier, errors: list[BaseException]) -> None:
            try:
                start.wait()
                c.create()
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=make, args=(c, start, errors)) for c in cgs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert not errors, errors
            for c in cgs:
                for key in ("cpuset.cpus", "cpuset.mems"):
                    assert read(f"{cpuset}/{c.path}/{key}"), f"{c.path}: empty {key}"
        finally:
            for c in cgs:
                c.destroy(timeout=10)
            cgs[0].remove_empty_parents(parent)


def test_create_beside_a_remover_of_the_empty_parent(parent: str) -> None:
    """Cgroups made one after another under ``parent/p`` while another thread removes ``p``
    whenever it is empty (a guest's cleanup or ``berth gc`` taking an empty parent): every create
    succeeds.  The parent vanishes between the lookup and the mkdir (ENOENT) or dies under the
    mkdir or a cpuset write into it (ENODEV, seen in ``berth gc`` beside ``berth run``); both
    mean "start again"."""
    import threading

    layout = detect()
    top = f"{parent}/p"
    stop = threading.Event()
    removed = [0]

    def remover() -> None:
        # As a guest's cleanup or a gc does it: a pass over the hierarchies now and then (one
        # pass after another without a pause would outrun any bounded number of attempts).
        while not stop.wait(random.uniform(0, 0.002)):
            for mnt in layout.mountpoints():
                try:
                    os.rmdir(f"{mnt}/{top}")
                    removed[0] += 1
                except OSError:
                    pass

    t = threading.Thread(target=remover)
    t.start()
    errors: list[str] = []
    try:
        deadline = time.monotonic() + 4
        i = 0
        while time.monotonic() < deadline:
            c = open_cgroup(f"{top}/c{i}", layout)
            i += 1
            try:
                c.create()
            except CgroupError as e:
                errors.append(str(e))
                continue
            c.destroy(timeout=10)
    finally:
        stop.set()
        t.join()
    assert removed[0] > 10, f"the parent was removed only {removed[0]} times: no race was tried"
    assert not errors, f"{len(errors)} of {i} creates failed: {errors[:3]}"
