"""What the full NTFS listing keeps in memory, a record's worth: the growth from the 40-file to
the 5 000-file volume, counted by tracemalloc (numpy's arrays included), so it does not
depend on the interpreter's own start-up or on which scan kernel ran.

Its tables by record as wide as their fields and a row per name (no path strings) keep 88
bytes a record; with int64 tables and every path a string it was 178 (355 at 200 000 files,
whose ``fs ls -r`` peaked at 111 MB RSS, 66 MB since).
"""

from __future__ import annotations

import tracemalloc

from strata.blockdev import RawFileDevice
from strata.fs.ntfs import NtfsVolume

from support.ntfs_tools import volume

BYTES_A_RECORD = 110


def kept(files: int, size: str) -> tuple[int, int]:
    """The volume's MFT records, and the bytes its full listing keeps once made."""
    vol = NtfsVolume(RawFileDevice(str(volume(files, size))))
    tracemalloc.start()
    try:
        vol.scan()
        return vol.record_count, tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_a_full_listing_keeps_little_a_record() -> None:
    (few, small), (many, large) = kept(40, "16M"), kept(5000, "512M")
    assert many - few > 4000
    assert (large - small) / (many - few) < BYTES_A_RECORD
