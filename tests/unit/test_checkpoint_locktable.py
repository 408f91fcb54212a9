"""The nftables table CRIU locks a dump's connections in, named from the dump's inventory
(berth.runtime.checkpoint.lock_table: pure parsing of the image)."""

from __future__ import annotations

from pathlib import Path

from berth.runtime.checkpoint import _pb_string, lock_table

RUN_ID = "e338be21-72fb-48d1-82a4-725dfce9f4c9"


def _inventory(msg: bytes) -> bytes:
    return (0x58313116).to_bytes(4, "little") + len(msg).to_bytes(4, "little") + msg


def _message(run_id: str | None) -> bytes:
    # img_version = 2 (varint), root_ids (a nested message), dump_uptime (varint > 1 byte),
    # then dump_criu_run_id = 13 (length-delimited)
    msg = bytes([0x08, 0x02, 0x1A, 0x04, 0x08, 0x01, 0x10, 0x01, 0x40, 0x96, 0x01])
    if run_id is not None:
        raw = run_id.encode()
        msg += bytes([0x6A, len(raw)]) + raw
    return msg


def test_table_named_as_criu_names_it(tmp_path: Path) -> None:
    (tmp_path / "inventory.img").write_bytes(_inventory(_message(RUN_ID)))
    # "inet CRIU-%s" cut to CRIU's 32-byte buffer (as the tables it leaves are named)
    assert lock_table(str(tmp_path)) == "CRIU-e338be21-72fb-48d1-82"


def test_no_run_id_or_no_inventory_or_garbage(tmp_path: Path) -> None:
    assert lock_table(str(tmp_path)) is None
    (tmp_path / "inventory.img").write_bytes(_inventory(_message(None)))
    assert lock_table(str(tmp_path)) is None
    (tmp_path / "inventory.img").write_bytes(_inventory(_message("x; flush ruleset")))
    assert lock_table(str(tmp_path)) is None  # not a run id: never handed to nft
    (tmp_path / "inventory.img").write_bytes(b"\x16\x31\x31\x58\xff\x00\x00\x00\x6a\x7f")
    assert lock_table(str(tmp_path)) is None
    assert _pb_string(b"\x08\x80", 13) is None  # a truncated varint
    assert _pb_string(b"\x6a\x05ab", 13) is None  # a string longer than the message
