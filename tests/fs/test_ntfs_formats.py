"""The ``struct`` formats the NTFS hot paths unpack with read the same fields as the construct
declarations beside them (structs.py, Russon & Fledel 4.2, 5.2, 3.12), on random bytes; and the
attribute parser built on them agrees with ntfs-3g's own view of a real record through the
reader tests (tests/fs/test_ntfs_read.py)."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from construct import Struct

from strata.blockdev import RawFileDevice
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.records import apply_fixups, fixup_one

from support.ntfs_tools import volume

PAIRS = [
    (s.ATTR_COMMON, s.ATTR_COMMON_FORMAT, s.ATTR_COMMON_SIZE),
    (s.ATTR_RESIDENT, s.ATTR_RESIDENT_FORMAT, s.ATTR_RESIDENT_SIZE - s.ATTR_COMMON_SIZE),
    (s.ATTR_NONRESIDENT, s.ATTR_NONRESIDENT_FORMAT, s.ATTR_NONRESIDENT_SIZE - s.ATTR_COMMON_SIZE),
    (s.ATTR_LIST_ENTRY, s.ATTR_LIST_ENTRY_FORMAT, s.ATTR_LIST_ENTRY_SIZE),
    (s.SDS_ENTRY, s.SDS_ENTRY_FORMAT, s.SDS_ENTRY_SIZE),
]


@pytest.mark.parametrize(("declared", "fmt", "size"), PAIRS, ids=lambda p: str(p)[:12])
def test_format_reads_what_the_declaration_reads(declared: Struct, fmt: str, size: int) -> None:
    unpack = struct.Struct(fmt)
    assert unpack.size == declared.sizeof() == size
    rng = random.Random(size)
    for _ in range(500):
        raw = rng.randbytes(size)
        parsed = declared.parse(raw)
        fields = [v for k, v in parsed.items() if not k.startswith("_")]
        assert list(unpack.unpack(raw)) == fields


def test_fixup_one_agrees_with_the_bulk_fixup() -> None:
    """The single-record fixup (Python) and the bulk one (numpy) on real records of an
    ntfs-3g volume and on 2 000 damaged copies: same problem code, same fixed-up bytes."""
    with RawFileDevice(str(volume(5000))) as dev:
        vol = NtfsVolume(dev)
        raw, _ = vol.read_records(np.arange(0, 400))
    rng = random.Random(7)
    cases = [bytes(r) for r in raw]
    for _ in range(2000):
        bad = bytearray(cases[rng.randrange(400)])
        for _ in range(rng.randrange(1, 4)):  # the header, the sequence array or a sector tail
            at = rng.choice([rng.randrange(8), rng.randrange(40, 56), 510, 511, 1022, 1023])
            bad[at] = rng.randrange(256)
        cases.append(bytes(bad))
    bulk = np.frombuffer(b"".join(cases), np.uint8).reshape(len(cases), -1).copy()
    _ok, codes = apply_fixups(bulk, vol.record_dtype)
    seen = set()
    for case, code, fixed in zip(cases, codes.tolist(), bulk, strict=True):
        got, got_code = fixup_one(case)
        assert got_code == code
        if code == 0:
            assert got == fixed.tobytes()
        seen.add(code)
    assert seen >= {0, 2, 3, 4}  # every outcome was met
