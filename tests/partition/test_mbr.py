"""MBR with extended/logical partitions: strata against sfdisk, both directions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev import RawFileDevice
from strata.errors import CorruptImage, InvalidInput, StrataError
from strata.partition import Partition, open_partition, read_table, write_mbr

from support.partition_devices import MemoryDevice
from support.partition_tools import sfdisk_json, sfdisk_rows, strata_rows
from support.tools import require, run

MiB = 1 << 20

SCRIPT = """label: dos
label-id: 0x5eed1234
2048,16384,c,*
18432,8192,83
26624,60000,5
28672,4096,7
34816,8192,83
45056,2048,82
90112,4096,ef
"""


def sfdisk_disk(tmp_path: Path) -> Path:
    path = tmp_path / "sf.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    run([require("sfdisk"), "-q", path], input=SCRIPT)
    return path


def test_sfdisk_logicals_read_identically(tmp_path: Path) -> None:
    path = sfdisk_disk(tmp_path)
    with RawFileDevice(str(path)) as dev:
        table = read_table(dev)
    assert table.scheme == "mbr"
    assert table.disk_id == sfdisk_json(path)["id"] == "0x5eed1234"
    assert strata_rows(table) == sfdisk_rows(path)
    assert [p.number for p in table.partitions] == [1, 2, 3, 4, 5, 6, 7]
    assert table.get(1).attributes == 0x80


def test_strata_logicals_match_sfdisk(tmp_path: Path) -> None:
    path = tmp_path / "ours.img"
    parts = [
        Partition(1, MiB, 8 * MiB, "0c", attributes=0x80),
        Partition(2, 40 * MiB, 4 * MiB, "83"),
        Partition(5, 10 * MiB, 4 * MiB, "07"),
        Partition(6, 15 * MiB, 4 * MiB, "83"),
        Partition(7, 20 * MiB, 10 * MiB, "0b"),
    ]
    with RawFileDevice.create(str(path), 64 * MiB) as dev:
        write_mbr(dev, parts, disk_id=0xCAFEF00D)
        ours = read_table(dev)
    theirs = sfdisk_rows(path)
    assert strata_rows(ours) == theirs
    logical = [(r["number"], r["start"], r["size"], r["type"]) for r in theirs if r["number"] >= 5]
    assert logical == [(5, 20480, 8192, 7), (6, 30720, 8192, 0x83), (7, 40960, 20480, 0x0B)]
    extended = [r for r in theirs if r["type"] == 5]
    assert len(extended) == 1 and extended[0]["number"] == 3
    verify = run([require("sfdisk"), "--verify", path], check=False)
    assert verify.returncode == 0 and "No errors detected" in verify.stdout, verify.stdout
    fdisk = run([require("fdisk"), "-l", path]).stdout
    assert "Extended" in fdisk and f"{path}7" in fdisk


def test_round_trip_of_sfdisk_table(tmp_path: Path) -> None:
    src = sfdisk_disk(tmp_path)
    with RawFileDevice(str(src)) as dev:
        table = read_table(dev)
    dst = tmp_path / "copy.img"
    with RawFileDevice.create(str(dst), 64 * MiB) as dev:
        write_mbr(dev, table.partitions, disk_id=int(table.disk_id or "0", 16))
    assert sfdisk_rows(dst) == sfdisk_rows(src)
    assert sfdisk_json(dst)["id"] == sfdisk_json(src)["id"]


def test_open_logical_partition(tmp_path: Path) -> None:
    path = sfdisk_disk(tmp_path)
    with open(path, "r+b") as f:
        f.seek(34816 * 512 + 4)
        f.write(b"logical six")
    with RawFileDevice(str(path)) as dev:
        part = open_partition(dev, 6)
        assert part.size == 8192 * 512
        assert part.read(4, 11) == b"logical six"


def _ebr_disk() -> MemoryDevice:
    disk = MemoryDevice(bytes(16 * MiB))
    write_mbr(
        disk,
        [
            Partition(1, MiB, MiB, "83"),
            Partition(5, 3 * MiB, MiB, "83"),
            Partition(6, 5 * MiB, MiB, "83"),
        ],
    )
    return disk


def test_ebr_loop_is_corrupt_not_a_hang() -> None:
    disk = _ebr_disk()
    table = read_table(disk)
    ext = next(p for p in table.partitions if p.type == "05")
    second_ebr = 4 * MiB  # EBR of logical 6, 1 MiB before it
    assert disk.data[second_ebr + 510 : second_ebr + 512] == b"\x55\xaa"
    # link the second EBR back to the first
    link = second_ebr + 446 + 16
    disk.data[link : link + 16] = (
        bytes([0, 0, 0, 0, 5, 0, 0, 0])
        + (0).to_bytes(4, "little")
        + (ext.length // 512).to_bytes(4, "little")
    )
    started = time.perf_counter()
    with pytest.raises(CorruptImage) as err:
        read_table(disk)
    assert time.perf_counter() - started < 1
    assert err.value.structure == "EBR chain" and "returns to sector" in err.value.problem


def test_hostile_records() -> None:
    disk = _ebr_disk()
    pristine = bytes(disk.data)
    disk.data[446] = 0x12
    with pytest.raises(CorruptImage) as err:
        read_table(disk)
    assert (err.value.field, err.value.offset) == ("status", 446)
    disk.data[:] = pristine
    disk.data[446 + 12 : 446 + 16] = (10**8).to_bytes(4, "little")
    with pytest.raises(CorruptImage) as err:
        read_table(disk)
    assert err.value.field == "sectors" and "outside" in err.value.problem
    disk.data[:] = pristine
    disk.data[4 * MiB + 510] = 0
    with pytest.raises(CorruptImage) as err:
        read_table(disk)
    assert err.value.structure == "EBR" and err.value.field == "signature"


def test_write_refuses_bad_layouts() -> None:
    disk = MemoryDevice(bytes(16 * MiB))
    cases = [
        [Partition(1, 0, MiB, "83")],
        [Partition(1, MiB, 2 * MiB, "83"), Partition(2, 2 * MiB, MiB, "83")],
        [Partition(1, MiB, MiB, "ee")],
        [Partition(5, MiB, MiB, "83"), Partition(6, MiB // 2, 1024, "83")],
        [Partition(n, n * MiB, MiB, "83") for n in range(1, 5)]
        + [Partition(5, 9 * MiB, MiB, "83")],
        [Partition(1, MiB, MiB, "zz")],
    ]
    for parts in cases:
        with pytest.raises(InvalidInput):
            write_mbr(disk, parts)


def test_superfloppy_fat_is_not_a_partition_table(tmp_path: Path) -> None:
    path = tmp_path / "fat.img"
    with open(path, "wb") as f:
        f.truncate(32 * MiB)
    run([require("mkfs.fat"), "-F", "16", path])
    with RawFileDevice(str(path)) as dev:
        table = read_table(dev)
    assert table.scheme == "none" and table.partitions == []


def test_fuzzed_mbr_chain_raises_only_strata_errors() -> None:
    disk = _ebr_disk()
    pristine = bytes(disk.data)
    hot = [
        *range(446, 512),
        *range(2 * MiB + 446, 2 * MiB + 512),
        *range(4 * MiB + 446, 4 * MiB + 512),
    ]
    rng = np.random.default_rng(11)
    started = time.perf_counter()
    seen = {"ok": 0, "error": 0}
    for _ in range(2500):
        spots = [int(p) for p in rng.choice(hot, size=int(rng.integers(1, 5)))]
        for pos in spots:
            disk.data[pos] = int(rng.integers(0, 256))
        try:
            read_table(disk)
            seen["ok"] += 1
        except StrataError:
            seen["error"] += 1
        for pos in spots:
            disk.data[pos] = pristine[pos]
    assert time.perf_counter() - started < 30
    assert seen["ok"] > 100 and seen["error"] > 100, seen
