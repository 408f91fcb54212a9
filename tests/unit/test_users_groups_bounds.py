"""A guest's /etc/passwd and /etc/group are the image's: a malformed line is skipped (as libc's
files backend does), never an internal error; and no process gets more supplementary groups
than the kernel's NGROUPS_MAX (65536), whether from /etc/group or a spec's additionalGids."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.errors import UsageError
from berth.oci.create import check_groups
from berth.rootfs.users import resolve

NGROUPS_MAX = 65536  # the kernel's


def rootfs(tmp_path: Path, passwd: str, group: str = "") -> str:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(passwd)
    (tmp_path / "etc" / "group").write_text(group)
    return str(tmp_path)


def test_malformed_uid_line_is_skipped(tmp_path: Path) -> None:
    root = rootfs(tmp_path, "root:x:0:0::/root:/bin/sh\napp:x:notanumber:1000::/home/app:/bin/sh\n")
    with pytest.raises(UsageError) as e:
        resolve(root, "app")
    assert e.value.field == "user" and "no user 'app'" in str(e.value)


def test_a_later_well_formed_line_is_found(tmp_path: Path) -> None:
    root = rootfs(
        tmp_path,
        "app:x:notanumber:1000::/nope:/bin/sh\napp:x:1000:²:/x:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n",
    )
    assert resolve(root, "app") == (1001, 1002, [], "/home/app")


def test_malformed_group_lines_are_skipped(tmp_path: Path) -> None:
    root = rootfs(
        tmp_path,
        "app:x:1000:1000::/home/app:/bin/sh\n",
        "bad:x:12x:app\nwheel:x:10:app\nstaff:x:-5:app\nhuge:x:99999999999:app\ndev:x:20:\n",
    )
    assert resolve(root, "app") == (1000, 1000, [10], "/home/app")
    with pytest.raises(UsageError) as e:
        resolve(root, "app:bad")
    assert e.value.field == "user" and "no group 'bad'" in str(e.value)
    assert resolve(root, "app:wheel")[1] == 10


@pytest.mark.parametrize("spec", ["²", "1:²", "١٢"])
def test_non_ascii_digits_are_names_not_ids(tmp_path: Path, spec: str) -> None:
    root = rootfs(tmp_path, "root:x:0:0::/root:/bin/sh\n")
    with pytest.raises(UsageError) as e:
        resolve(root, spec)
    assert e.value.field == "user"


def test_too_many_groups_in_etc_group(tmp_path: Path) -> None:
    n = NGROUPS_MAX + 1
    group = "".join(f"g{i}:x:{i + 1}:app\n" for i in range(n))
    root = rootfs(tmp_path, "app:x:1000:0::/:/bin/sh\n", group)
    with pytest.raises(UsageError) as e:
        resolve(root, "app")
    assert e.value.field == "user" and f"in {n} groups" in str(e.value)


def test_additional_gids_limit() -> None:
    check_groups({"user": {"uid": 0, "gid": 0, "additionalGids": list(range(NGROUPS_MAX))}})
    check_groups({"args": ["true"]})
    with pytest.raises(UsageError) as e:
        check_groups({"user": {"uid": 0, "gid": 0, "additionalGids": list(range(69_999))}})
    assert e.value.field == "process.user.additionalGids"
    assert "69999 groups" in str(e.value)
