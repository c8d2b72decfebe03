"""GPT: strata's tables against sgdisk/sfdisk/fdisk, and theirs read by strata."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev import ChainDevice, RawFileDevice
from strata.errors import CorruptImage, InvalidInput, NotFound, StrataError
from strata.ops.disk import OpenSpec, partitions
from strata.partition import (
    Partition,
    open_partition,
    read_table,
    write_gpt,
)

from support.partition_devices import MemoryDevice, OverlayDevice
from support.partition_tools import sfdisk_json, sfdisk_rows, sgdisk_verify, strata_rows
from support.tools import require, run

MiB = 1 << 20
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BASIC = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
DISK_GUID = "3F1E2D4C-5B6A-4978-8695-A4B3C2D1E0F9"

LAYOUT = [
    Partition(1, 1 * MiB, 8 * MiB, ESP, "EFI system partition"),
    Partition(2, 9 * MiB, 16 * MiB, BASIC, "Données ünïcode", attributes=1 << 63),
    Partition(4, 32 * MiB, 20 * MiB, LINUX, "root", "11111111-2222-4333-8444-555555555555"),
]


def gpt_disk(tmp_path: Path, size: int = 64 * MiB) -> Path:
    path = tmp_path / "gpt.img"
    with RawFileDevice.create(str(path), size) as dev:
        write_gpt(dev, LAYOUT, disk_guid=DISK_GUID)
    return path


def test_strata_gpt_passes_sgdisk_and_matches_sfdisk(tmp_path: Path) -> None:
    path = gpt_disk(tmp_path)
    report = sgdisk_verify(path)
    assert "No problems found" in report, report
    assert "corrupt" not in report.lower(), report
    table = sfdisk_json(path)
    assert table["label"] == "gpt"
    assert table["id"] == DISK_GUID
    assert (table["firstlba"], table["lastlba"]) == (34, 64 * MiB // 512 - 34)
    with RawFileDevice(str(path)) as dev:
        ours = read_table(dev)
    assert sfdisk_rows(path) == strata_rows(ours)
    assert [r["number"] for r in sfdisk_rows(path)] == [1, 2, 4]
    assert sfdisk_rows(path)[1]["name"] == "Données ünïcode"
    attrs = [p.get("attrs") for p in table["partitions"]]
    assert attrs == [None, "GUID:63", None]
    fdisk = run([require("fdisk"), "-l", path]).stdout
    rows = [line.split(None, 5) for line in fdisk.splitlines() if line.startswith(str(path))]
    assert [(r[0][len(str(path)) :], *r[1:4], r[5]) for r in rows] == [
        ("1", "2048", "18431", "16384", "EFI System"),
        ("2", "18432", "51199", "32768", "Microsoft basic data"),
        ("4", "65536", "106495", "40960", "Linux filesystem"),
    ], fdisk


def test_protective_mbr_and_backup_are_what_sgdisk_reads(tmp_path: Path) -> None:
    path = gpt_disk(tmp_path)
    # sgdisk rebuilds the table from the backup when told to; it must see the same partitions.
    run([require("sgdisk"), "-b", tmp_path / "backup.bin", path])
    data = path.read_bytes()
    assert data[0x1C2] == 0xEE and data[510:512] == b"\x55\xaa"
    assert int.from_bytes(data[0x1C6:0x1CA], "little") == 1
    assert int.from_bytes(data[0x1CA:0x1CE], "little") == len(data) // 512 - 1
    backup = data[-512:]
    assert backup[:8] == b"EFI PART"
    assert data[512 * 2 : 512 * 34] == data[-512 * 33 : -512]


def test_sgdisk_table_reads_identically(tmp_path: Path) -> None:
    path = tmp_path / "sg.img"
    path.write_bytes(b"")
    with open(path, "r+b") as f:
        f.truncate(100 * MiB)
    run(
        [
            require("sgdisk"),
            "-o",
            "-n",
            "1:2048:+10M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI",
            "-n",
            "3:0:+30M",
            "-t",
            "3:0700",
            "-c",
            "3:Data ∆ volume",
            "-A",
            "3:set:2",
            "-n",
            "2:0:+5M",
            "-t",
            "2:8300",
            path,
        ]
    )
    with RawFileDevice(str(path)) as dev:
        table = read_table(dev)
    assert table.scheme == "gpt"
    assert table.disk_id == sfdisk_json(path)["id"]
    assert strata_rows(table) == sfdisk_rows(path)
    assert table.get(3).attributes == 1 << 2
    assert table.warnings == []


def test_rewrite_of_read_table_is_identical_to_sgdisk(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.truncate(48 * MiB)
    run([require("sgdisk"), "-n", "1:0:+7M", "-c", "1:one", "-n", "2:0:0", "-t", "2:8200", src])
    with RawFileDevice(str(src)) as dev:
        table = read_table(dev)
    dst = tmp_path / "dst.img"
    with RawFileDevice.create(str(dst), 48 * MiB) as dev:
        write_gpt(dev, table.partitions, disk_guid=table.disk_id)
    # same disk GUID, entries and CRCs: the table sectors match byte for byte
    a, b = src.read_bytes(), dst.read_bytes()
    assert a[512 : 34 * 512] == b[512 : 34 * 512]
    assert a[-33 * 512 :] == b[-33 * 512 :]
    assert "No problems found" in sgdisk_verify(dst)


def test_damaged_primary_falls_back_to_backup(tmp_path: Path) -> None:
    path = gpt_disk(tmp_path)
    with open(path, "r+b") as f:
        f.seek(512 + 40)
        f.write(b"\xff")  # first_usable_lba: the header CRC no longer matches
    with RawFileDevice(str(path)) as dev:
        table = read_table(dev)
    assert [p.number for p in table.partitions] == [1, 2, 4]
    assert any("header CRC-32" in w and "backup" in w for w in table.warnings)
    assert "problem" in sgdisk_verify(path).lower()  # the oracle sees the damage too


def test_damaged_entry_array_falls_back(tmp_path: Path) -> None:
    path = gpt_disk(tmp_path)
    with open(path, "r+b") as f:
        f.seek(1024 + 128 + 56)
        f.write(b"X\0")
    with RawFileDevice(str(path)) as dev:
        table = read_table(dev)
    assert table.get(2).name == "Données ünïcode"
    assert any("entry array CRC-32" in w for w in table.warnings)


def test_both_copies_damaged_is_corrupt_with_field(tmp_path: Path) -> None:
    path = gpt_disk(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(512 + 16)
        f.write(b"\0\0\0\0")
        f.seek(size - 512)
        f.write(b"NOT PART")
    with RawFileDevice(str(path)) as dev, pytest.raises(CorruptImage) as err:
        read_table(dev)
    assert err.value.structure == "GPT primary header"
    assert err.value.field == "header_crc32"
    assert err.value.offset == 512 + 16


def test_entries_checked_against_usable_range(tmp_path: Path) -> None:
    disk = MemoryDevice(bytes(8 * MiB))
    write_gpt(disk, [Partition(1, MiB, MiB, LINUX)], disk_guid=DISK_GUID)
    for lba in (2, 2 + 33 + (8 * MiB // 512) - 67):
        _set_entry_last(disk, lba, 10**9)
    with pytest.raises(CorruptImage) as err:
        read_table(disk)
    assert err.value.field == "first_lba" and "entry 1" in err.value.structure


def _set_entry_last(disk: MemoryDevice, array_lba: int, last: int) -> None:
    """Rewrite an entry and fix both CRCs, so only the range check can catch it."""
    at = array_lba * 512
    disk.data[at + 40 : at + 48] = last.to_bytes(8, "little")
    crc = zlib.crc32(disk.data[at : at + 128 * 128])
    for hdr in (512, len(disk.data) - 512):
        if int.from_bytes(disk.data[hdr + 72 : hdr + 80], "little") == array_lba:
            disk.data[hdr + 88 : hdr + 92] = crc.to_bytes(4, "little")
            disk.data[hdr + 16 : hdr + 20] = bytes(4)
            fixed = zlib.crc32(disk.data[hdr : hdr + 92])
            disk.data[hdr + 16 : hdr + 20] = fixed.to_bytes(4, "little")


def test_open_partition_through_a_differencing_chain(tmp_path: Path) -> None:
    base = MemoryDevice(bytes(16 * MiB))
    write_gpt(base, [Partition(1, MiB, 4 * MiB, BASIC), Partition(2, 6 * MiB, MiB, LINUX)])
    base.write(6 * MiB + 100, b"base data")
    top = OverlayDevice(base)
    chain = ChainDevice(top)
    part = open_partition(chain, 2)
    assert (part.start, part.size) == (6 * MiB, MiB)
    assert part.read(100, 9) == b"base data"
    part.write(200, b"child")
    assert base.read(6 * MiB + 200, 5) == bytes(5)
    assert chain.read(6 * MiB + 200, 5) == b"child"
    with pytest.raises(NotFound):
        open_partition(chain, 3)


def test_write_refuses_bad_layouts() -> None:
    disk = MemoryDevice(bytes(8 * MiB))
    cases = [
        [Partition(1, 512, MiB, LINUX)],  # inside the primary array
        [Partition(1, MiB, 3 * MiB, LINUX), Partition(2, 2 * MiB, MiB, LINUX)],  # overlap
        [Partition(1, MiB + 1, MiB, LINUX)],  # not sector aligned
        [Partition(1, MiB, MiB, "not-a-guid")],
        [Partition(1, MiB, 7 * MiB, LINUX)],  # runs into the backup array
        [Partition(1, MiB, MiB, LINUX, "x" * 37)],
    ]
    for parts in cases:
        with pytest.raises(InvalidInput):
            write_gpt(disk, parts)


def test_partitions_report(tmp_path: Path) -> None:
    path = gpt_disk(tmp_path)
    report = partitions(OpenSpec(str(path)))
    assert report["scheme"] == "gpt" and report["disk_id"] == DISK_GUID
    rows = report["partitions"]
    assert [(r["number"], r["start_sector"], r["sectors"]) for r in rows] == [
        (p["number"], p["start"], p["size"]) for p in sfdisk_rows(path)
    ]
    assert rows[0]["type_name"] == "EFI System"
    assert report["warnings"] == [] and report["filesystem"] is None


def test_fuzzed_tables_raise_only_strata_errors() -> None:
    disk = MemoryDevice(bytes(2 * MiB))
    write_gpt(
        disk, [Partition(1, 64 << 10, 512 << 10, BASIC, "a"), Partition(2, MiB, 512 << 10, LINUX)]
    )
    pristine = bytes(disk.data)
    hot = [*range(0, 2 * 512 + 256), *range(len(pristine) - 512, len(pristine) - 512 + 92)]
    rng = np.random.default_rng(7)
    started = time.perf_counter()
    outcomes = {"ok": 0, "error": 0}
    for _ in range(2500):
        disk.data[:] = pristine
        for pos in rng.choice(hot, size=int(rng.integers(1, 6))):
            disk.data[int(pos)] = int(rng.integers(0, 256))
        try:
            read_table(disk)
            outcomes["ok"] += 1
        except StrataError:
            outcomes["error"] += 1
    assert time.perf_counter() - started < 30
    assert outcomes["error"] > 100 and outcomes["ok"] > 100, outcomes


def test_4k_sector_gpt_is_read_by_fdisk(tmp_path: Path) -> None:
    path = tmp_path / "4kn.img"
    with RawFileDevice.create(str(path), 64 * MiB, sector_size=4096) as dev:
        write_gpt(dev, LAYOUT, disk_guid=DISK_GUID)
        ours = read_table(dev)
    assert ours.usable_start == 6 * 4096  # header + 4 sectors of entries after the MBR
    proc = run(
        [require("fdisk"), "-b", "4096", "-l", "-o", "Device,Start,Sectors,Type-UUID,Name", path]
    )
    assert proc.stderr == ""  # fdisk warns there about a corrupt primary or backup table
    rows = [line.split(None, 4) for line in proc.stdout.splitlines() if line.startswith(str(path))]
    assert [(r[0][len(str(path)) :], int(r[1]), int(r[2]), r[3], r[4]) for r in rows] == [
        (str(p.number), p.start // 4096, p.length // 4096, p.type, p.name) for p in LAYOUT
    ]


def test_grown_disk_reads_with_a_warning(tmp_path: Path) -> None:
    path = gpt_disk(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(80 * MiB)  # copied onto a larger disk: the backup is no longer at the end
    with RawFileDevice(str(path)) as dev:
        table = read_table(dev)
    assert [p.number for p in table.partitions] == [1, 2, 4]
    assert any("not the last sector" in w for w in table.warnings), table.warnings
    assert "No problems found" not in sgdisk_verify(path)  # the oracle flags it too
