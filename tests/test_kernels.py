"""Native kernels against the pure-Python reference, on random inputs."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata import _py, native

try:
    _native = importlib.import_module("strata._native")
except ImportError:  # pragma: no cover - make test always builds it
    _native = None

needs_native = pytest.mark.skipif(_native is None, reason="strata._native is not built")
CASES = settings(max_examples=1000, deadline=None)


def test_backend_is_native_when_built() -> None:
    assert ("native" if _native is not None else "python") == native.BACKEND


@st.composite
def sparse_buffers(draw: st.DrawFn) -> bytes:
    size = draw(st.integers(0, 9000))
    buf = bytearray(size)
    for _ in range(draw(st.integers(0, 3))):
        if size:
            buf[draw(st.integers(0, size - 1))] = draw(st.integers(1, 255))
    return bytes(buf)


@needs_native
@CASES
@given(sparse_buffers())
def test_is_zero_agrees(buf: bytes) -> None:
    assert _native.is_zero(buf) == _py.is_zero(buf) == (buf.count(0) == len(buf))


@st.composite
def sector_pairs(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    sector = draw(st.sampled_from([1, 7, 512, 4096]))
    count = draw(st.integers(0, 40 if sector < 4096 else 6))
    a = bytearray(draw(st.binary(min_size=sector * count, max_size=sector * count)))
    b = bytearray(a)
    for _ in range(draw(st.integers(0, 5))):
        if a:
            at = draw(st.integers(0, len(a) - 1))
            b[at] = (b[at] + draw(st.integers(1, 255))) % 256
    return bytes(a), bytes(b), sector


@needs_native
@CASES
@given(sector_pairs())
def test_changed_sectors_agrees(case: tuple[bytes, bytes, int]) -> None:
    a, b, sector = case
    got = _native.changed_sectors(a, b, sector)
    assert got == _py.changed_sectors(a, b, sector)
    expected = [a[i : i + sector] != b[i : i + sector] for i in range(0, len(a), sector)]
    bits = np.unpackbits(np.frombuffer(got, np.uint8), bitorder="little")[: len(expected)]
    assert bits.tolist() == [int(x) for x in expected]


@needs_native
@CASES
@given(st.binary(max_size=300), st.booleans(), st.integers(-1, 2400))
def test_bitmap_runs_agrees(bitmap: bytes, msb_first: bool, nbits: int) -> None:
    assert _native.bitmap_runs(bitmap, msb_first, nbits) == _py.bitmap_runs(
        bitmap, msb_first, nbits
    )


@needs_native
@CASES
@given(sparse_buffers(), st.sampled_from([1, 512, 4096, 65536]))
def test_nonzero_blocks_agrees(buf: bytes, block: int) -> None:
    assert _native.nonzero_blocks(buf, block) == _py.nonzero_blocks(buf, block)


def test_bitmap_runs_bit_orders() -> None:
    assert _py.bitmap_runs(b"\x80\x01", msb_first=True) == [(0, 1), (15, 1)]
    assert _py.bitmap_runs(b"\x80\x01", msb_first=False) == [(7, 2)]


@pytest.mark.parametrize("impl", [_py, _native] if _native else [_py], ids=lambda m: m.__name__)
def test_kernels_reject_bad_arguments(impl: object) -> None:
    with pytest.raises(ValueError):
        impl.changed_sectors(b"ab", b"abc", 1)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        impl.changed_sectors(b"abc", b"abd", 2)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        impl.nonzero_blocks(b"abc", 0)  # type: ignore[attr-defined]
