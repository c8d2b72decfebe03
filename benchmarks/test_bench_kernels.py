"""Native kernels beside the pure-Python/numpy reference on the same page-cached buffers."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from strata import _py

from conftest import scaled

_native = importlib.import_module("strata._native")
SIZE = scaled(256 << 20, 16 << 20)
TARGET_GBPS = 5.0


@pytest.fixture(scope="module")
def zeros() -> np.ndarray:
    # Written zeros: a fresh calloc'd buffer maps the shared zero page and would
    # measure the cache, not memory.
    buf = np.ones(SIZE, np.uint8)
    buf[:] = 0
    return buf


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    a = np.random.default_rng(5).integers(0, 256, SIZE, dtype=np.uint8)
    b = a.copy()
    b[:: 1 << 16] ^= 1  # one changed byte every 64 KiB
    return a.tobytes(), b.tobytes()


def test_is_zero_throughput(versus, record_ratio, zeros: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    assert _native.is_zero(zeros) and _py.is_zero(zeros)
    ratio = versus(
        lambda: _native.is_zero(zeros),
        lambda: _py.is_zero(zeros),
        peer="strata._py.is_zero (numpy reference)",
        rounds=5,
        per_byte=SIZE,
    )
    assert ratio < 1.0, "native is_zero slower than the numpy reference"


def test_changed_sectors_throughput(versus, pair: tuple[bytes, bytes]) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    assert _native.changed_sectors(a, b, 512) == _py.changed_sectors(a, b, 512)
    ratio = versus(
        lambda: _native.changed_sectors(a, b, 512),
        lambda: _py.changed_sectors(a, b, 512),
        peer="strata._py.changed_sectors (numpy reference)",
        rounds=5,
        per_byte=2 * SIZE,
    )
    assert ratio < 1.0, "native changed_sectors slower than the numpy reference"


def test_fastcdc_throughput(versus, record_ratio) -> None:  # type: ignore[no-untyped-def]
    # The numpy reference needs ~64 passes over the data: keep its input modest.
    size = scaled(8 << 20, 1 << 20)
    data = np.random.default_rng(11).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert _native.fastcdc_cuts(data, 16384, 65536, 262144) == _py.fastcdc_cuts(
        data, 16384, 65536, 262144
    )
    ratio = versus(
        lambda: _native.fastcdc_cuts(data, 16384, 65536, 262144),
        lambda: _py.fastcdc_cuts(data, 16384, 65536, 262144),
        peer="strata._py.fastcdc_cuts (numpy reference)",
        rounds=3,
        per_byte=size,
    )
    assert ratio < 1.0


def test_lznt1_throughput(versus) -> None:  # type: ignore[no-untyped-def]
    """One 64 KiB NTFS compression unit of text-like data (what a compressed folder holds),
    native beside the pure-Python reference."""
    from support.images import mixed_bytes
    from support.lznt1_tools import compress

    words = [b"strata ", b"layers ", b"compose ", b"disks ", b"windows ", b"\r\n"]
    picks = np.random.default_rng(1).integers(0, len(words), 20_000).tolist()
    text = b"".join(words[i] for i in picks)[: 32 << 10]
    unit = text + mixed_bytes(32 << 10, 4)
    stream = compress(unit)
    assert _native.lznt1_decompress(stream, len(unit)) == (unit, None, 0)
    assert _py.lznt1_decompress(stream, len(unit)) == (unit, None, 0)
    ratio = versus(
        lambda: _native.lznt1_decompress(stream, len(unit)),
        lambda: _py.lznt1_decompress(stream, len(unit)),
        peer="strata._py.lznt1_decompress (pure-Python reference)",
        rounds=5,
        per_byte=len(unit),
    )
    assert ratio < 0.1, "native LZNT1 not 10x faster than the Python reference"
