"""Damaged NTFS volumes: a bad update sequence, an attribute running past its record, a
runlist past the volume, a parent-reference cycle, a bad boot sector, a truncated image, and
fuzzes of MFT records and of directory indexes — specific StrataErrors, or a named warning for
the one record in a full listing, never another exception or a hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice
from strata.blockdev.base import BaseDevice
from strata.errors import CorruptImage, InvalidInput, NotFound, StrataError, TruncatedImage
from strata.fs.ntfs import NtfsVolume, link_of
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.index import children as index_children
from strata.fs.ntfs.index import names as index_names
from strata.fs.ntfs.lznt1 import decompress

from support.ntfs_tools import attr_offsets, protect, small_volume, write_record
from support.tools import strata


def open_vol(image: Path) -> NtfsVolume:
    return NtfsVolume(RawFileDevice(str(image)))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return small_volume(tmp_path)


def damage(image: Path, path: str, change) -> int:  # type: ignore[no-untyped-def]
    """Apply ``change(bytearray record)`` to the record of ``path``; return its number."""
    vol = open_vol(image)
    number = vol.stat(path).record
    rec = bytearray(vol.record(number))
    change(rec)
    write_record(image, vol.record_offset(number), bytes(rec))
    return number


def test_bad_update_sequence(image: Path) -> None:
    vol = open_vol(image)
    number = vol.stat("/docs/readme.txt").record
    with open(image, "r+b") as f:  # a torn write: sector 2's check value no longer matches
        f.seek(vol.record_offset(number) + 1022)
        f.write(b"\xde\xad")
    vol = open_vol(image)
    problems = vol.scan().problems
    assert [p.record for p in problems] == [number]
    assert "update sequence mismatch" in str(problems[0])
    assert f"{vol.record_offset(number):#x}" in str(problems[0])
    with pytest.raises(NotFound):
        vol.stat("/docs/readme.txt")
    with pytest.raises(CorruptImage, match="update sequence"):
        vol.record(number)
    assert vol.read_file("/docs/big.bin")[:4] == b"\0\x01\x02\x03"  # the rest still reads


def test_attribute_length_past_record(image: Path) -> None:
    def change(rec: bytearray) -> None:
        pos = attr_offsets(rec)[s.FILE_NAME][0]
        rec[pos + 4 : pos + 8] = (4096).to_bytes(4, "little")

    number = damage(image, "/docs/empty", change)
    vol = open_vol(image)
    problems = vol.scan().problems
    assert [p.record for p in problems] == [number]
    assert "attribute" in problems[0].problem
    with pytest.raises(CorruptImage, match="attribute length 4096") as e:
        vol.attributes(number)
    assert e.value.field == "attribute.length"


def test_runlist_past_volume(image: Path) -> None:
    vol = open_vol(image)
    total = vol.geometry.total_clusters

    def change(rec: bytearray) -> None:
        pos = attr_offsets(rec)[s.DATA][0]
        runs = pos + int.from_bytes(rec[pos + 32 : pos + 34], "little")
        rec[runs : runs + 7] = bytes([0x41, 0x10]) + (total + 100).to_bytes(4, "little") + b"\0"

    damage(image, "/docs/big.bin", change)
    vol = open_vol(image)
    assert not vol.scan().problems  # the listing does not decode runlists
    with pytest.raises(CorruptImage, match="outside the volume"):
        vol.read_file("/docs/big.bin")
    result = strata("fs", "cat", image, "/docs/big.bin", check=False)
    assert result.returncode == 5 and "outside the volume" in result.stderr


def test_parent_cycle(image: Path) -> None:
    vol = open_vol(image)
    a, b = vol.stat("/level00/level01"), vol.stat("/level00/level01/level02")
    seq_b = int.from_bytes(vol.record(b.record)[16:18], "little")

    def change(rec: bytearray) -> None:
        value = attr_offsets(rec)[s.FILE_NAME][0]
        value += int.from_bytes(rec[value + 20 : value + 22], "little")
        rec[value : value + 8] = (b.record | seq_b << 48).to_bytes(8, "little")

    damage(image, "/level00/level01", change)
    vol = open_vol(image)
    listing = vol.scan()
    assert any(p.problem == "parent reference cycle" for p in listing.problems)
    assert not any(p.startswith("/level00/level01") for p in listing.paths)
    assert "/level00" in listing.paths and "/docs/readme.txt" in listing.paths
    assert a.record in {p.record for p in listing.problems} | {b.record}
    out = strata("fs", "ls", "--json", "-r", image, check=False)
    assert out.returncode == 0 and "parent reference cycle" in out.stdout


def test_bad_boot_sector(image: Path) -> None:
    with open(image, "r+b") as f:
        f.seek(3)
        f.write(b"XXXX    ")
    with pytest.raises(CorruptImage, match="boot sector"):
        open_vol(image)


def test_mft_lcn_outside(image: Path) -> None:
    with open(image, "r+b") as f:
        f.seek(0x30)
        f.write((1 << 40).to_bytes(8, "little"))
    with pytest.raises(CorruptImage, match=r"\$MFT at LCN") as e:
        open_vol(image)
    assert e.value.field == "mft_lcn"


def test_truncated_image(image: Path) -> None:
    with open(image, "r+b") as f:
        f.truncate(4 << 20)
    with pytest.raises(TruncatedImage, match="larger than the device"):
        open_vol(image)


def test_lznt1_garbage_raises_only_corrupt() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(2, 300)))
        with contextlib.suppress(CorruptImage):
            assert len(decompress(blob, 65536)) <= 65536


class MemoryDevice(BaseDevice):
    """A whole (small) image in memory, so a mutation costs nothing to make or undo."""

    def __init__(self, data: bytearray) -> None:
        self.data = data
        self.path = "<fuzz>"

    @property
    def size(self) -> int:
        return len(self.data)

    def _readinto(self, offset: int, view: memoryview) -> None:
        view[:] = self.data[offset : offset + len(view)]

    def _extents(self, offset: int, length: int):  # type: ignore[no-untyped-def]
        return iter(())


def exercise(dev: MemoryDevice, number: int, paths: list[str]) -> None:
    """Read record ``number`` every way: through the lookups (``paths`` are its names on the
    healthy volume: each resolved, its directory listed, its own subtree walked) and through
    the full listing."""
    vol = NtfsVolume(dev)
    for path in paths:
        with contextlib.suppress(NotFound):
            vol.stat(path)
        with contextlib.suppress(NotFound):
            vol.listdir(path.rpartition("/")[0] or "/")
        with contextlib.suppress(NotFound, InvalidInput):  # InvalidInput: not a directory
            vol.subtree(path)
    listing = vol.scan()
    for e in listing.entries():
        if e.record == number:
            link_of(vol, e)
            if not e.is_dir:
                list(itertools.islice(vol.iter_file(e, 65536), 4))
            for name, _ in e.streams:
                list(itertools.islice(vol.iter_stream(e.record, name, 65536), 4))
            vol.security(e.record)
    vol.attributes(number)


def test_fuzz_mft_records(image: Path) -> None:
    data = bytearray(image.read_bytes())
    dev = MemoryDevice(data)
    vol = NtfsVolume(dev)
    paths: dict[int, list[str]] = {}
    for e in vol.walk():
        paths.setdefault(e.record, []).append(e.path)
    records = sorted(paths)
    rng = random.Random(2024)
    outcomes = {"ok": 0, "error": 0}
    for i in range(2000):
        number = rng.choice(records)
        at = vol.record_offset(number)
        saved = bytes(data[at : at + 1024])
        rec = bytearray(vol._fixup(saved, number, at))
        used = max(64, min(1024, int.from_bytes(rec[24:28], "little")))
        for _ in range(rng.randrange(1, 6)):
            pos = rng.randrange(0, used)
            rec[pos] = rng.randrange(256) if rng.random() < 0.7 else rec[pos] ^ 0x80
        data[at : at + 1024] = protect(bytes(rec)) if i % 2 else bytes(rec)
        try:
            exercise(dev, number, paths[number])
            outcomes["ok"] += 1
        except StrataError:
            outcomes["error"] += 1
        finally:
            data[at : at + 1024] = saved
        assert len(data) == image.stat().st_size
    assert outcomes["ok"] and outcomes["error"], outcomes


def test_fuzz_directory_index(image: Path) -> None:
    """Mutated $INDEX_ROOT values and INDX blocks: the children or a CorruptImage, no other
    exception and no hang (a looping tree is read once per block)."""
    vol = open_vol(image)
    dirs = [e.record for e in vol.walk() if e.is_dir] + [s.ROOT_RECORD]
    with_blocks = [d for d in dirs if any(a.type == s.INDEX_ALLOCATION for a in vol.attributes(d))]
    assert with_blocks
    number = with_blocks[0]
    attrs = vol.attributes(number)
    expected = vol.directory_children(number)
    alloc = b"".join(vol.iter_attribute([a for a in attrs if a.type == s.INDEX_ALLOCATION]))
    root_at = next(i for i, a in enumerate(attrs) if a.type == s.INDEX_ROOT)

    def bad(problem: str, field: str, at: int) -> CorruptImage:
        return CorruptImage(path="<fuzz>", structure="$I30", problem=problem, field=field)

    rng = random.Random(99)
    outcomes = {"same": 0, "other": 0, "error": 0}
    for i in range(2000):
        root = bytearray(attrs[root_at].value)
        blocks = bytearray(alloc)
        target = root if i % 3 == 0 else blocks
        for _ in range(rng.randrange(1, 5)):
            pos = rng.randrange(len(target))
            target[pos] = rng.randrange(256) if rng.random() < 0.7 else target[pos] ^ 0x01
        mutated = list(attrs)
        mutated[root_at] = dataclasses.replace(attrs[root_at], value=bytes(root))
        try:
            data = bytes(blocks)
            got = index_children(mutated, vol.geometry.cluster_size, lambda _, d=data: d, bad)
            named = index_names(mutated, vol.geometry.cluster_size, lambda _, d=data: d, bad)
            assert all(isinstance(n, str) for _ref, _ns, n in named)
            outcomes["same" if got == expected else "other"] += 1
        except CorruptImage:
            outcomes["error"] += 1
    assert outcomes["same"] and outcomes["error"], outcomes
