"""Bad input refused up front with one error naming the field (no root needed): JSON nested past
the recursion limit, OCI fields the kernel would fail on with a bare errno (a user namespace
without mappings, a namespace path that is no namespace of its type, a root.path or CPU this
host lacks), env entries without '=', a bogus org.berth.rlimits, a disk too small for mkfs, a
throttle on a character device, an rlimit lowered without a word; and the temporary files of
writers killed before their rename, removed by the next write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from berth.errors import StateError, UsageError
from berth.spec.host import check_host, check_resources, cpuset, namespace_path, root_path
from berth.spec.jsontext import DEEP, loads
from berth.spec.validate import load_config, validate


def _spec(**linux) -> dict:
    from berth.spec import runc_spec

    spec = runc_spec()
    spec["root"] = {"path": "/"}
    spec["linux"].update(linux)
    return spec


def _berth_like(cid: str) -> subprocess.Popen:
    """A process whose command line looks like ``berth-runtime create CID`` (it waits on stdin),
    once /proc shows that command line."""
    from berth.oci.delete import creating

    p = subprocess.Popen(
        ["berth-runtime-h9e", "-c", "import sys; sys.stdin.read()", "create", cid],
        executable=sys.executable,
        stdin=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while creating(cid) != p.pid:
        assert time.monotonic() < deadline, "the child's command line never showed"
        time.sleep(0.01)
    return p


def _dead_pid() -> int:
    """A pid no process has now (a child's, reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# -- JSON nested too deeply -----------------------------------------------------------------------


def test_deep_nesting_is_a_json_error_at_the_deep_bracket() -> None:
    with pytest.raises(ValueError) as e:
        loads("[" * 100_000 + "]" * 100_000)
    assert not isinstance(e.value, RecursionError)
    assert "nested too deeply" in str(e.value)
    assert e.value.pos == DEEP - 1  # type: ignore[attr-defined]  # (a json.JSONDecodeError)


def test_deep_nesting_position_skips_brackets_in_strings() -> None:
    head = '["[[[\\"[[", '
    text = head + '{"k":' * 2000 + "1" + "}" * 2000 + "]"
    with pytest.raises(ValueError) as e:
        loads(text)
    assert e.value.pos == len(head) + 5 * (DEEP - 2)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="nested too deeply"):  # trailing data: the slow path
        loads("[" * 5000 + "]" * 5000 + " x")


def test_nesting_under_the_limit_still_parses() -> None:
    assert loads("[" * 200 + "]" * 200) == json.loads("[" * 200 + "]" * 200)


def test_config_json_nested_too_deeply_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"ociVersion": "1.0.0", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(UsageError) as e:
        load_config(cfg)
    assert e.value.field == str(cfg)
    assert "invalid JSON at line 1 column" in str(e.value)
    assert "nested too deeply" in str(e.value)


def test_json_error_without_a_position_reads_as_one_sentence(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"x": NaN}')
    with pytest.raises(UsageError, match=r"config.json: invalid JSON: NaN is not JSON$"):
        load_config(cfg)


def test_seccomp_profile_nested_too_deeply_is_a_security_opt_error(tmp_path: Path) -> None:
    from berth.spec.seccomp import load_profile

    prof = tmp_path / "deep.json"
    prof.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UsageError) as e:
        load_profile(str(prof))
    assert e.value.field == "security-opt"
    assert "nested too deeply" in str(e.value)


def test_runtime_update_resources_nested_too_deeply(tmp_path: Path) -> None:
    from berth.oci.update import resources_from

    f = tmp_path / "res.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UsageError, match="^resources: .*nested too deeply"):
        resources_from({"resources": str(f)})
    f.write_text("[]")
    with pytest.raises(UsageError, match="must be a JSON object"):
        resources_from({"resources": str(f), "pids-limit": "5"})


def test_runtime_exec_process_nested_too_deeply(tmp_path: Path) -> None:
    from berth.oci.exec import _load_process

    f = tmp_path / "process.json"
    f.write_text('{"args": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(UsageError, match="^process: .*nested too deeply"):
        _load_process(str(f))


def test_runtime_last_resort_is_one_line_and_125(capfd: pytest.CaptureFixture[str]) -> None:
    import berth.oci as oci

    oci.VERBS["h9e-boom"] = "berth.h9e_no_such_module_boom"
    try:
        assert oci.main(["h9e-boom"]) == 125
    finally:
        del oci.VERBS["h9e-boom"]
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("berth-runtime: internal error: ModuleNotFoundError: ")
    assert "--debug" in err[0]


# -- OCI fields ------------------------------------------------------------------------------------


def test_env_entry_without_equals_names_the_entry() -> None:
    spec = _spec()
    spec["process"]["env"] = ["PATH=/bin", "FOO"]
    with pytest.raises(UsageError) as e:
        validate(spec)
    assert e.value.field == "process.env[1]"
    assert "'FOO' has no '='" in e.value.reason
    spec["process"]["env"] = ["PATH=/bin", "FOO="]  # an empty value is a value
    validate(spec)


@pytest.mark.parametrize(
    ("uid", "gid", "field"),
    [(None, None, "linux.uidMappings"), (True, None, "linux.gidMappings"), (None, True, "linux.uidMappings")],
)
def test_new_user_namespace_needs_both_mappings(uid, gid, field) -> None:
    m = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    spec = _spec()
    spec["linux"]["namespaces"].append({"type": "user"})
    if uid:
        spec["linux"]["uidMappings"] = m
    if gid:
        spec["linux"]["gidMappings"] = m
    with pytest.raises(UsageError) as e:
        validate(spec)
    assert str(e.value) == f"{field}: a user namespace needs uid and gid mappings"
    spec["linux"]["uidMappings"] = spec["linux"]["gidMappings"] = m
    validate(spec)


def test_joined_user_namespace_needs_no_mappings() -> None:
    spec = _spec()
    spec["linux"]["namespaces"].append({"type": "user", "path": "/proc/self/ns/user"})
    validate(spec)


def test_root_path_must_be_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "file").write_text("")
    assert root_path("rootfs", str(tmp_path)) == str(tmp_path / "rootfs")
    with pytest.raises(UsageError, match=r"^root.path: '/nonexistent-h9e' does not exist$"):
        root_path("/nonexistent-h9e", str(tmp_path))
    with pytest.raises(UsageError, match=r"^root.path: '.*/file' is not a directory$"):
        root_path("file", str(tmp_path))


def test_namespace_path_must_be_a_namespace_of_its_type(tmp_path: Path) -> None:
    namespace_path("network", "/proc/self/ns/net", "f")
    namespace_path("mount", "/proc/self/ns/mnt", "f")
    with pytest.raises(UsageError, match=r"^f: '/proc/self/ns/uts' is a uts namespace, not a network one$"):
        namespace_path("network", "/proc/self/ns/uts", "f")
    with pytest.raises(UsageError, match=r"is not a namespace file \(like /proc/PID/ns/net\)$"):
        namespace_path("network", "/etc/passwd", "f")
    with pytest.raises(UsageError, match="does not exist"):
        namespace_path("ipc", str(tmp_path / "none"), "f")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # not opened (it would block): no regular file, no namespace
    with pytest.raises(UsageError, match="is not a namespace file"):
        namespace_path("network", str(fifo), "f")
    with pytest.raises(UsageError, match="is not a namespace file"):
        namespace_path("network", "/dev/null", "f")


def test_check_host_names_the_namespace_entry(tmp_path: Path) -> None:
    spec = _spec()
    net = next(i for i, n in enumerate(spec["linux"]["namespaces"]) if n["type"] == "network")
    spec["linux"]["namespaces"][net]["path"] = "/etc/passwd"
    with pytest.raises(UsageError) as e:
        check_host(spec, str(tmp_path))
    assert e.value.field == f"linux.namespaces[{net}].path"


def test_cpuset_against_the_online_list(tmp_path: Path) -> None:
    online = tmp_path / "online"
    online.write_text("0-1,4\n")
    cpuset("0-1,4", "f", str(online), "CPU")
    with pytest.raises(UsageError, match=r"^f: CPU 2 is not online on this host \(online: 0-1,4\)$"):
        cpuset("0-999999999999", "f", str(online), "CPU")  # (stops at the first missing one)
    with pytest.raises(UsageError, match="memory node 5 is not"):
        cpuset("4,5", "f", str(online), "memory node")
    cpuset("7", "f", str(tmp_path / "none"), "CPU")  # no list on this kernel: the cgroup says it


def test_check_resources_names_the_field() -> None:
    with pytest.raises(UsageError) as e:
        check_resources({"cpu": {"cpus": f"{1 << 40}"}}, "linux.resources")
    assert e.value.field == "linux.resources.cpu.cpus"


@pytest.mark.parametrize(("value", "ok"), [(None, False), ("strict", True), ("bogus", None), ("", None)])
def test_rlimits_annotation_takes_only_strict(value, ok) -> None:
    from berth.oci.create import strict_rlimits

    spec = {"annotations": {} if value is None else {"org.berth.rlimits": value}}
    if ok is None:
        with pytest.raises(UsageError) as e:
            strict_rlimits(spec)
        assert e.value.field == "annotations.org.berth.rlimits"
    else:
        assert strict_rlimits(spec) is ok


# -- berth's CLI -----------------------------------------------------------------------------------


def test_disk_below_the_floor_is_refused_by_the_config() -> None:
    from berth.guests import config, disk

    with pytest.raises(UsageError) as e:
        config.validate({"template": "busybox", "disk": "1K"}, "g: config")
    assert e.value.field == "g: config: disk"
    assert "'1K' is below the smallest disk, 1M" in e.value.reason
    config.validate({"template": "busybox", "disk": "1M"}, "g: config")
    with pytest.raises(UsageError):
        disk.make_image("/nonexistent-h9e/img", disk.MIN_SIZE - 1)  # before any file is made


def test_throttle_refuses_a_character_device_and_a_file(tmp_path: Path) -> None:
    from berth.cli import resources

    with pytest.raises(UsageError, match=r"^device-write-bps: /dev/null is a character device: "):
        resources.parse([("--device-write-bps", "/dev/null:1M")], ncpus=2)
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(UsageError, match=r"is not a device: I/O throttles take a block device"):
        resources.parse([("--device-read-iops", f"{f}:10")], ncpus=2)


def test_lowered_rlimit_is_one_warning_line(capsys: pytest.CaptureFixture[str]) -> None:
    from berth.cli import resources

    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    out = resources.parse([("--ulimit", "nofile=-1:-1"), ("--ulimit", "core=0:0")], ncpus=2)
    rl = {r["type"]: (r["soft"], r["hard"]) for r in out["rlimits"]}
    assert 0 < rl["RLIMIT_NOFILE"][1] <= nr_open  # no process gets more than fs.nr_open
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"berth: warning: rlimit RLIMIT_NOFILE unlimited:unlimited lowered to "
        f"{rl['RLIMIT_NOFILE'][0]}:{rl['RLIMIT_NOFILE'][1]}: the host allows no more"
    ]
    resources.parse([("--ulimit", "nofile=64:64")], ncpus=2)
    assert capsys.readouterr().err == ""


# -- berth-runtime delete of what an aborted create left ---------------------------------------------


def test_creating_finds_a_berth_process_naming_the_id() -> None:
    from berth.oci.delete import creating

    p = _berth_like("h9e-unit-id")
    try:
        assert creating("h9e-unit-id") == p.pid
        assert creating("h9e-unit-other") == 0
    finally:
        p.communicate(b"")
    assert creating("h9e-unit-id") == 0


def test_aborted_create_is_refused_while_a_creator_may_live(tmp_path: Path) -> None:
    from berth.oci.delete import _aborted_create

    d = tmp_path / "h9e-unit-ab"
    assert not _aborted_create(str(d), d.name)  # nothing there
    d.mkdir()
    os.mkfifo(d / "exec.fifo")
    assert _aborted_create(str(d), d.name)
    (d / "state.json").write_text("{")  # damaged, not missing: delete --force's
    assert not _aborted_create(str(d), d.name)
    (d / "state.json").unlink()
    p = _berth_like(d.name)
    try:
        with pytest.raises(StateError, match=rf"^container '{d.name}' is being created \(process {p.pid}; "):
            _aborted_create(str(d), d.name)
    finally:
        p.communicate(b"")
    assert _aborted_create(str(d), d.name)


# -- temporary files of killed writers -------------------------------------------------------------


def test_atomic_write_removes_stale_tmp_files_of_its_path(tmp_path: Path) -> None:
    from berth.guests.store import atomic_write

    target = tmp_path / "g.json"
    dead = tmp_path / f"g.json.{_dead_pid()}.tmp"
    live = tmp_path / f"g.json.{os.getppid()}.tmp"  # a live writer's: kept
    other = tmp_path / f"h.json.{_dead_pid()}.tmp"  # another file's: not this write's business
    odd = tmp_path / "g.json.x.tmp"
    for f in (dead, live, other, odd):
        f.write_text("partial")
    atomic_write(str(target), "{}", durable=False)
    assert target.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["g.json", live.name, other.name, odd.name])


def test_resources_index_save_takes_stale_tmp_files(tmp_path: Path) -> None:
    from berth.runtime.resources import INDEX, _Index

    dead = tmp_path / f"{INDEX}.{_dead_pid()}.tmp"
    live = tmp_path / f"{INDEX}.{os.getppid()}.tmp"
    dead.write_text("{")
    live.write_text("{")
    index = _Index(str(tmp_path)).load()
    index.save()
    assert not dead.exists()
    assert live.exists()
    assert (tmp_path / INDEX).exists()


@pytest.mark.parametrize("entry", ["FOO", "=x"])
def test_runtime_exec_env_flag_needs_name_and_equals(entry: str) -> None:
    from berth.oci.exec import build_process

    class C:
        data: dict = {}

    opts = {"env": ["A=1", entry], "gids": [], "caps": []}
    with pytest.raises(UsageError) as e:
        build_process(C(), opts, ["true"])
    assert str(e.value) == f"env: {entry!r}: entries are NAME=VALUE"
    opts["env"] = ["A=1", "B="]
    assert build_process(C(), opts, ["true"])["env"][-2:] == ["A=1", "B="]
