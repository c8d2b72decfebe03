"""The C MFT scan (``strata._native.mft_scan``) against its reference, the numpy path of
``fs.ntfs.records``: the same columns, names, streams, problems and attribute rows, on a
volume that mkntfs made and ntfs-3g filled (~5 000 files, hard links, ADS, sparse and
compressed files, reparse points), whole and with its record and attribute headers damaged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev import RawFileDevice
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import records as r

from support.ntfs_tools import volume

try:
    _native = importlib.import_module("strata._native")
except ImportError:  # pragma: no cover - make test always builds it
    _native = None
pytestmark = pytest.mark.skipif(_native is None, reason="strata._native is not built")
Kernel = Callable[..., tuple[bytes, ...]] | None
Damage = Callable[[np.ndarray, np.random.Generator], None]
# Values that sit on the boundaries the scan tests: attribute lengths and value sizes, the
# four attribute types it keeps, the end marker's byte.
TELLING = [0, 1, 8, 16, 24, 48, 56, 64, 66, 0x10, 0x30, 0x80, 0xC0, 0xFF]


@pytest.fixture(autouse=True)
def kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel, whatever STRATA_BACKEND selected for the rest of strata."""
    monkeypatch.setattr(r, "mft_scan", _native.mft_scan if _native is not None else None)


@pytest.fixture(scope="module")
def vol() -> NtfsVolume:
    return NtfsVolume(RawFileDevice(str(volume(5000))))


def _windows(vol: NtfsVolume, damage: Damage | None, seed: int) -> list[tuple[np.ndarray, ...]]:
    """The MFT in windows of 1 024 records (raw bytes, numbers, disk offsets), damaged."""
    rs, per = vol.geometry.record_size, 1024
    rng = np.random.default_rng(seed)
    out = []
    for first in range(0, vol.record_count, per):
        n = min(per, vol.record_count - first)
        buf = np.empty(n * rs, np.uint8)
        offsets = vol._read_window(first * rs, buf)
        buf = buf.reshape(n, rs)
        if damage is not None:
            damage(buf, rng)
        out.append((buf, first + np.arange(n, dtype=np.int64), offsets))
    return out


def _scan_all(
    kernel: Kernel, vol: NtfsVolume, windows: list[tuple[np.ndarray, ...]], sparse: bool
) -> tuple[r.Columns, list[r.Attributes | None], list[np.ndarray]]:
    """Each window through ``scan_window`` (the kernel, or the numpy reference when None) into
    one table (Columns, or SparseColumns given the record numbers as the NTFS delta gives
    them), with the attribute rows; the rows themselves are compared first."""
    cols = r.SparseColumns(vol.record_count) if sparse else r.Columns(vol.record_count)
    found, fixed = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(r, "mft_scan", kernel)
        for buf, numbers, offsets in windows:
            buf = buf.copy()
            first, given = (0, numbers) if sparse else (int(numbers[0]), None)
            found.append(r.scan_window(buf, first, vol.record_dtype, cols, offsets, given, True))
            fixed.append(buf)
    return cols, found, fixed


def _assert_rows_same(vol: NtfsVolume, windows: list[tuple[np.ndarray, ...]]) -> None:
    for buf, _, _ in windows:
        mine, theirs = buf.copy(), buf.copy()
        got = r.native_rows(mine, True)
        ref = r.numpy_rows(theirs, vol.record_dtype, True)
        for field, a, b in zip(r.ScanRows._fields, got, ref, strict=True):
            assert np.array_equal(a, b), field
        assert np.array_equal(mine, theirs)  # the same records fixed up


def _assert_same(vol: NtfsVolume, windows: list[tuple[np.ndarray, ...]], sparse: bool) -> r.Columns:
    _assert_rows_same(vol, windows)
    ref, ref_attrs, ref_bytes = _scan_all(None, vol, windows, sparse)
    got, got_attrs, got_bytes = _scan_all(_native.mft_scan, vol, windows, sparse)
    numbers = np.arange(vol.record_count)
    if sparse:
        assert np.array_equal(got.get(numbers), ref.get(numbers))
    else:
        for field in ("flags", "sequence", "base", "links", "size", "reparse", "si"):
            assert np.array_equal(getattr(got, field), getattr(ref, field)), field
    assert np.array_equal(_fn_rows(got), _fn_rows(ref))
    assert got.names == ref.names
    assert got.ads == ref.ads
    assert got.problems == ref.problems
    for mine, theirs in zip(got_attrs, ref_attrs, strict=True):
        assert mine is not None and theirs is not None
        for a, b in zip(mine, theirs, strict=True):
            assert np.array_equal(a, b)
    for a, b in zip(got_bytes, ref_bytes, strict=True):  # the same records fixed up
        assert np.array_equal(a, b)
    return ref


def _fn_rows(cols: r.Columns) -> np.ndarray:
    return np.concatenate(cols.fn) if cols.fn else np.zeros((0, 3), np.int64)


@pytest.mark.parametrize("sparse", [False, True], ids=["listing", "delta"])
def test_whole_volume_scans_the_same(vol: NtfsVolume, sparse: bool) -> None:
    cols = _assert_same(vol, _windows(vol, None, 0), sparse)
    assert len(cols.names) > 5000 and cols.ads and not cols.problems


def _damage_headers(buf: np.ndarray, rng: np.random.Generator) -> None:
    """One to three bytes in the first 400 of half the records (the record header, the
    update sequence array and the first attributes' headers and values), often set to a
    boundary value."""
    n = buf.shape[0]
    for row in rng.integers(0, n, n // 2).tolist():
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, 400))
            buf[row, at] = rng.choice(TELLING) if rng.random() < 0.5 else rng.integers(256)


@pytest.mark.parametrize("seed", range(12))
def test_damaged_records_scan_the_same(vol: NtfsVolume, seed: int) -> None:
    cols = _assert_same(vol, _windows(vol, _damage_headers, seed), sparse=seed % 2 == 1)
    codes = {p.problem for p in cols.problems}
    assert r.BROKEN_CHAIN in codes and set(r.PROBLEMS.values()) <= codes


def test_kernel_refuses_what_is_not_a_window(vol: NtfsVolume) -> None:
    mft_scan = _native.mft_scan
    with pytest.raises(ValueError):
        mft_scan(bytearray(1000), 1024, False)  # not whole records
    with pytest.raises(ValueError):
        mft_scan(bytearray(512), 256, False)  # below the 512 bytes a volume allows
    with pytest.raises((TypeError, BufferError)):
        mft_scan(bytes(1024), 1024, False)  # fixups are applied in place
    codes, live, *tables = mft_scan(bytearray(2048), 1024, True)
    assert codes == b"\x01\x01" and live == bytes(2) and tables == [b""] * 6  # never used


def test_listing_equals_the_reference_listing(vol: NtfsVolume, tmp_path: Path) -> None:
    """The whole listing (paths, sizes, owners) through the kernel and through numpy."""
    native = vol.scan()
    with RawFileDevice(vol.dev.path) as dev, pytest.MonkeyPatch.context() as mp:
        mp.setattr(r, "mft_scan", None)
        reference = NtfsVolume(dev).scan()
    assert native.paths == reference.paths
    assert np.array_equal(native.size, reference.size)
    assert np.array_equal(native.owner, reference.owner)


def _root_record(vol: NtfsVolume) -> np.ndarray:
    raw, _ = vol.read_records(np.array([5]))  # the root directory: in use, several attributes
    return raw[0].copy()


def _first_attr(rec: np.ndarray) -> int:
    return int(rec[20:22].view("<u2")[0])


def _chain(first_length: int, then: int | None) -> Callable[[np.ndarray], None]:
    """The first attribute's length set, and (optionally) an end marker or a second length
    right after it."""

    def edit(rec: np.ndarray) -> None:
        at = _first_attr(rec)
        rec[at + 4 : at + 8] = np.frombuffer(first_length.to_bytes(4, "little"), np.uint8)
        if then is not None:
            rec[at + first_length : at + first_length + 4] = np.frombuffer(
                then.to_bytes(4, "little"), np.uint8
            )

    return edit


def _used(value: int) -> Callable[[np.ndarray], None]:
    def edit(rec: np.ndarray) -> None:
        rec[24:28] = np.frombuffer(value.to_bytes(4, "little"), np.uint8)

    return edit


def _end_first(rec: np.ndarray) -> None:
    at = _first_attr(rec)
    rec[at : at + 4] = 0xFF


CRAFTED = {  # edit of the root record, and whether it stays in use (else: a broken chain)
    "length not a multiple of 8, then the end": (_chain(20, 0xFFFFFFFF), False),
    "length below a header": (_chain(8, None), False),
    "length past the bytes in use": (_chain(1000, None), False),
    "end marker first": (_end_first, True),
    "bytes in use past the record": (_used(5000), True),
    "a whole first attribute, then the end": (_chain(96, 0xFFFFFFFF), True),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_attribute_chains(vol: NtfsVolume, case: str) -> None:
    """Chains built to sit on each rule of the walk: both scans agree, and on the verdict."""
    edit, stays = CRAFTED[case]
    rec = _root_record(vol)
    edit(rec)
    windows = [(rec[None, :].copy(), np.array([5]), np.array([0]))]
    cols = _assert_same(vol, windows, sparse=True)
    assert bool(cols.get(np.array([5]))[0, 0] & 1) == stays
    assert (r.BROKEN_CHAIN in {p.problem for p in cols.problems}) == (not stays)
