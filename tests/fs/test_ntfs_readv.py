"""MFT records read through a device's vectored ``readv`` (when it offers one) are the same bytes
as one ``readinto`` per run of records, and as ``os.pread`` of the image at each record's
offset (the oracle: the file itself, no strata reader)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev import RawFileDevice
from strata.blockdev.base import BaseDevice
from strata.fs.ntfs import NtfsVolume

from support.ntfs_tools import volume


class Vectored(BaseDevice):
    """A raw image with a ``readv`` that fills every piece with ``os.pread`` and counts calls."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self.fd).st_size
        self.calls: list[int] = []  # pieces per readv call

    def _readinto(self, offset: int, view: memoryview) -> None:
        view[:] = os.pread(self.fd, len(view), offset)

    def readv(self, pieces: list[tuple[int, memoryview]]) -> None:
        self.calls.append(len(pieces))
        for offset, view in pieces:
            view[:] = os.pread(self.fd, len(view), offset)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture(scope="module")
def image() -> Path:
    return volume(5000)


def test_readv_reads_the_same_records(image: Path) -> None:
    rng = np.random.default_rng(9)
    with RawFileDevice(str(image)) as raw:
        plain = NtfsVolume(raw)
        nums = np.unique(rng.integers(16, plain.record_count, 300))
        nums = np.union1d(nums, np.arange(40, 60))  # a run of adjacent records: one piece
        want, want_at = plain.read_records(nums)
    dev = Vectored(image)
    try:
        vec = NtfsVolume(dev)
        got, got_at = vec.read_records(nums)
        assert dev.calls and dev.calls[-1] < len(nums)  # the run went as one piece
        assert np.array_equal(got, want) and np.array_equal(got_at, want_at)
        rs = vec.geometry.record_size
        with open(image, "rb") as f:
            for row, at in zip(got[::37], got_at[::37].tolist(), strict=True):
                assert row.tobytes() == os.pread(f.fileno(), rs, at)
    finally:
        dev.close()
