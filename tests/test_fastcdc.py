"""FastCDC: native and reference give identical cut points; streaming gives the same cuts."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata import _py

_native = importlib.import_module("strata._native")
SIZES = [(64, 256, 1024), (2048, 8192, 32768), (16 << 10, 64 << 10, 256 << 10)]


@st.composite
def inputs(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 300_000))
    seed = draw(st.integers(0, 2**32 - 1))
    alphabet = draw(st.sampled_from([2, 16, 256]))  # low entropy finds mask edge cases
    return np.random.default_rng(seed).integers(0, alphabet, n, dtype=np.uint8).tobytes()


@settings(max_examples=300, deadline=None)
@given(inputs(), st.sampled_from(SIZES), st.booleans())
def test_native_matches_reference(data: bytes, sizes: tuple[int, int, int], final: bool) -> None:
    assert _native.fastcdc_cuts(data, *sizes, final=final) == _py.fastcdc_cuts(
        data, *sizes, final=final
    )


@settings(max_examples=200, deadline=None)
@given(inputs(), st.sampled_from(SIZES))
def test_chunk_sizes_within_bounds(data: bytes, sizes: tuple[int, int, int]) -> None:
    lo, _, hi = sizes
    cuts = _native.fastcdc_cuts(data, *sizes)
    assert (cuts[-1] if cuts else 0) == len(data)
    lengths = np.diff([0, *cuts])
    assert all(lo <= n <= hi for n in lengths[:-1])
    assert all(0 < n <= hi for n in lengths[-1:])


@settings(max_examples=100, deadline=None)
@given(inputs(), st.integers(1, 8))
def test_streaming_in_pieces_gives_the_same_cuts(data: bytes, pieces: int) -> None:
    sizes = SIZES[1]
    whole = _native.fastcdc_cuts(data, *sizes)
    cuts: list[int] = []
    start, carried = 0, b""
    step = max(1, len(data) // pieces)
    for at in range(0, len(data), step):
        piece = carried + data[at : at + step]
        final = at + step >= len(data)
        ends = _native.fastcdc_cuts(piece, *sizes, final=final)
        cuts += [start + e for e in ends]
        used = ends[-1] if ends else 0
        start += used
        carried = piece[used:]
    assert cuts == whole


def test_an_edit_moves_only_nearby_cuts() -> None:
    data = bytearray(np.random.default_rng(9).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes())
    before = set(_native.fastcdc_cuts(data, *SIZES[2]))
    data[2 << 20 : (2 << 20) + 10] = b"0123456789"
    after = set(_native.fastcdc_cuts(data, *SIZES[2]))
    assert len(before & after) >= len(before) - 3


@pytest.mark.parametrize("impl", [_py, _native], ids=["python", "native"])
@pytest.mark.parametrize("bad", [(32, 64, 128), (1000, 3000, 8000), (4096, 2048, 8192)])
def test_bad_parameters_rejected(impl: object, bad: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        impl.fastcdc_cuts(b"x" * 10_000, *bad)  # type: ignore[attr-defined]
