"""Damaged VHDX files: each damage gets a specific strata error; a fuzz run gets nothing else.

References: [MS-VHDX] 2.2.2 (header CRC), 2.2.3 (region tables), 2.5 (BAT), 2.6 (metadata).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from strata.errors import CorruptImage, StrataError, TruncatedImage, Unsupported
from strata.formats.vhdx import DRIVER
from strata.formats.vhdx import structs as S
from strata.formats.vhdx.layout import entry, new_guid
from strata.formats.vhdx.log import LogWrite
from strata.formats.vhdx.reader import VhdxDevice
from strata.ops import disk as ops

from support.images import MiB, write_sparse_raw
from support.tools import strata
from support.vhdx_oracles import set_log_guid, write_log_entries

H1, H2 = S.HEADER_OFFSETS
R1, R2 = S.REGION_TABLE_OFFSETS


@pytest.fixture
def image(tmp_path: Path) -> Path:
    src = write_sparse_raw(tmp_path / "s.raw", 8 * MiB, [(0, 2 * MiB), (5 * MiB, 512)], seed=2)
    img = tmp_path / "d.vhdx"
    ops.convert(ops.OpenSpec(str(src)), str(img), "vhdx", ["block_size=1M"])
    return img


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        os.pwrite(f.fileno(), data, offset)


def read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


def fix_crc(path: Path, offset: int, size: int) -> None:
    patch(path, offset, bytes(S.with_checksum(bytearray(read(path, offset, size)))))


def where(img: Path) -> tuple[int, int]:
    with VhdxDevice(str(img)) as dev:
        bat = dev._bat_region.file_offset
        meta = next(r.file_offset for r in dev.regions if r.guid == S.METADATA_REGION)
    return bat, meta


def problems(img: Path) -> list[str]:
    return [str(p) for p in DRIVER.check(str(img))]  # type: ignore[misc]


def test_one_bad_header_crc_is_tolerated_and_reported(image: Path) -> None:
    before = VhdxDevice(str(image)).read(0, 8 * MiB)
    patch(image, H2 + 100, b"\x01")  # the newer header (strata writes slot 1 last)
    with VhdxDevice(str(image)) as dev:
        assert dev.read(0, 8 * MiB) == before
    found = problems(image)
    assert len(found) == 1 and "header at 128 KiB" in found[0] and "CRC-32C" in found[0]


def test_both_header_crcs_bad(image: Path) -> None:
    patch(image, H1 + 100, b"\x01")
    patch(image, H2 + 100, b"\x01")
    with pytest.raises(CorruptImage, match="neither header is valid") as e:
        VhdxDevice(str(image))
    assert e.value.offset == H1
    proc = strata("disk", "info", image)
    assert proc.returncode == CorruptImage.exit_code and "neither header" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_region_table(image: Path) -> None:
    patch(image, R1 + 20, b"\x07")
    with VhdxDevice(str(image)) as dev:  # the second copy still describes the file
        assert dev.size == 8 * MiB
    assert any("region table at 192 KiB" in p and "CRC-32C" in p for p in problems(image))
    proc = strata("disk", "check", image)
    assert proc.returncode == 1 and "region table at 192 KiB" in proc.stdout
    patch(image, R2 + 20, b"\x07")
    with pytest.raises(CorruptImage, match="region table at 192 KiB"):
        VhdxDevice(str(image))


def test_region_tables_that_differ(image: Path) -> None:
    _, meta = where(image)
    table = bytearray(read(image, R2, S.REGION_TABLE_SIZE))
    for i in range(2):  # move the metadata region in copy 2 only
        at = S.REGION_HEADER_SIZE + i * S.REGION_ENTRY_SIZE
        if table[at : at + 16] == S.METADATA_REGION:
            table[at + 16 : at + 24] = (meta + 64 * MiB).to_bytes(8, "little")
    patch(image, R2, bytes(S.with_checksum(table)))
    with pytest.raises(CorruptImage, match="region tables differ"):
        VhdxDevice(str(image))


def test_bat_entry_past_eof(image: Path) -> None:
    bat, _ = where(image)
    patch(image, bat + 8 * 3, entry(S.PAYLOAD_FULLY_PRESENT, 900 * MiB).to_bytes(8, "little"))
    with pytest.raises(CorruptImage, match="past the end of the file") as e:
        VhdxDevice(str(image))
    assert e.value.offset == bat + 8 * 3 and e.value.structure == "BAT"
    assert any("entry 3" in p and "past the end" in p for p in problems(image))


def test_bat_entry_over_a_region_and_overlapping_blocks(image: Path) -> None:
    bat, meta = where(image)
    patch(image, bat + 8 * 2, entry(S.PAYLOAD_FULLY_PRESENT, meta).to_bytes(8, "little"))
    with pytest.raises(CorruptImage, match="overlaps the metadata region"):
        VhdxDevice(str(image))
    first = read(image, bat, 8)
    patch(image, bat + 8 * 2, first)  # two entries sharing one block
    assert any("overlaps the block of entry 0" in p for p in problems(image))


def test_partially_present_in_a_dynamic_disk(image: Path) -> None:
    bat, _ = where(image)
    value = int.from_bytes(read(image, bat, 8), "little")
    patch(image, bat, (value & ~7 | S.PAYLOAD_PARTIALLY_PRESENT).to_bytes(8, "little"))
    with pytest.raises(CorruptImage, match="invalid state 7"):
        VhdxDevice(str(image))


@pytest.mark.parametrize("cut", [100, 70 * 1024, 2 * MiB + 4096, 5 * MiB])
def test_truncated_file(image: Path, cut: int) -> None:
    os.truncate(image, cut)
    with pytest.raises(CorruptImage) as e:
        VhdxDevice(str(image))
    if cut < 4 * MiB:  # inside the header section or the tables
        assert isinstance(e.value, TruncatedImage) or "header" in str(e.value)
    else:
        assert "past the end of the file" in str(e.value)
    assert problems(image)


def _add_metadata_item(img: Path, flags: int) -> None:
    _, meta = where(img)
    head = read(img, meta, S.METADATA_HEADER_SIZE)
    count = int.from_bytes(head[10:12], "little")
    item = S.MetadataTableEntry.build(
        dict(item_id=new_guid(), offset=S.METADATA_TABLE_SIZE, length=8, flags=flags, reserved=0)
    )
    patch(img, meta + S.METADATA_HEADER_SIZE + count * S.METADATA_ENTRY_SIZE, item)
    patch(img, meta + 10, (count + 1).to_bytes(2, "little"))


def test_required_unknown_metadata_item(image: Path) -> None:
    _add_metadata_item(image, S.META_IS_REQUIRED)
    with pytest.raises(Unsupported, match="marked required"):
        VhdxDevice(str(image))
    proc = strata("disk", "info", image)
    assert proc.returncode == Unsupported.exit_code


def test_optional_unknown_metadata_item_is_ignored(image: Path) -> None:
    _add_metadata_item(image, S.META_IS_USER)
    with VhdxDevice(str(image)) as dev:
        assert dev.size == 8 * MiB
    assert problems(image) == []


def test_required_unknown_region(image: Path) -> None:
    for offset in (R1, R2):
        table = bytearray(read(image, offset, S.REGION_TABLE_SIZE))
        at = S.REGION_HEADER_SIZE + 2 * S.REGION_ENTRY_SIZE
        table[at : at + 32] = S.RegionTableEntry.build(
            dict(guid=new_guid(), file_offset=64 * MiB, length=MiB, required=1)
        )
        table[8:12] = (3).to_bytes(4, "little")
        patch(image, offset, bytes(S.with_checksum(table)))
    with pytest.raises(Unsupported, match=r"region .* is marked required"):
        VhdxDevice(str(image))


def test_bad_block_size(image: Path) -> None:
    _, meta = where(image)
    patch(image, meta + S.METADATA_TABLE_SIZE, (3 * MiB).to_bytes(4, "little"))
    with pytest.raises(CorruptImage, match="block size"):
        VhdxDevice(str(image))


# --- fuzzing --------------------------------------------------------------------------------------

INTERESTING = [0, 1, 7, 0xFF, 0x1000, 0x100000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, (1 << 64) - 1]


def _targets(img: Path) -> list[tuple[int, int]]:
    bat, meta = where(img)
    with VhdxDevice(str(img)) as dev:
        log = dev.header.log_offset
    return [
        (0, 16), (H1, 80), (H2, 80), (R1, 16 + 64), (R2, 16 + 64), (meta, 32 + 6 * 32),
        (meta + S.METADATA_TABLE_SIZE, 64), (bat, 8 * 10), (log, 256), (log + 4096, 64),
    ]  # fmt: skip


def _mutation(rng: np.random.Generator, targets: list[tuple[int, int]]) -> tuple[int, bytes]:
    start, length = targets[int(rng.integers(len(targets)))]
    kind = int(rng.integers(4))
    if kind == 0:
        return start + int(rng.integers(length)), bytes([int(rng.integers(256))])
    value = INTERESTING[int(rng.integers(len(INTERESTING)))]
    width = (4, 8, 2)[kind - 1]
    at = start + int(rng.integers(length // width)) * width
    return at, (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def _exercise(img: Path) -> type:
    """What opening and reading gave: NoneType when it worked, else the StrataError class."""
    outcome: type = type(None)
    try:
        with VhdxDevice(str(img)) as dev:
            dev.read(0, min(dev.size, 2 * MiB))
            list(dev.extents(0, min(dev.size, 64 * MiB)))
    except StrataError as e:
        outcome = type(e)
    DRIVER.check(str(img))  # type: ignore[misc]
    return outcome


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError("a fuzz case took more than 10 s")


def test_fuzz_2000_mutations(image: Path) -> None:
    """Only StrataError subclasses may escape; no case may hang."""
    bat, _ = where(image)
    guid = new_guid()  # a live log, so the log parser is fuzzed too
    set_log_guid(image, guid)
    write_log_entries(image, guid, [(0, 3, 0, [LogWrite(bat, 4096, read(image, bat, 4096))])])
    targets = _targets(image)
    rng = np.random.default_rng(2024)
    previous = signal.signal(signal.SIGALRM, _alarm)
    slowest = 0.0
    outcomes: dict[type, int] = {}
    try:
        for case in range(2000):
            at, data = _mutation(rng, targets)
            original = read(image, at, len(data))
            patch(image, at, data)
            fixes = [(o, n) for o, n in ((H1, 4096), (H2, 4096), (R1, 65536), (R2, 65536))
                     if case % 2 and o <= at < o + n]  # fmt: skip
            for o, n in fixes:  # half the cases get past the CRC to the fields behind it
                fix_crc(image, o, n)
            start = time.perf_counter()
            signal.alarm(10)
            try:
                outcome = _exercise(image)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            finally:
                signal.alarm(0)
            slowest = max(slowest, time.perf_counter() - start)
            patch(image, at, original)
            for o, n in fixes:
                fix_crc(image, o, n)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert slowest < 10
    # the mutations reach the parsers: many open, many are refused, for several reasons
    assert outcomes.get(type(None), 0) > 200
    assert {CorruptImage, Unsupported} <= set(outcomes), outcomes
    with VhdxDevice(str(image)) as dev:  # every mutation was undone
        assert dev.log_replayed == 1
