"""Native kernels against the pure-Python reference, on random inputs."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

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


@st.composite
def lznt1_streams(draw: st.DrawFn) -> tuple[bytes, int]:
    """A valid LZNT1 stream (runs, repeats, noise) with a few bytes damaged or cut off, or
    plain noise, and a limit below, at or above its size."""
    from support.lznt1_tools import compress

    parts = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=300),
                st.builds(
                    lambda b, n: b * n, st.binary(min_size=1, max_size=9), st.integers(1, 900)
                ),
            ),
            max_size=8,
        )
    )
    data = b"".join(parts)
    stream = bytearray(compress(data)) if draw(st.booleans()) else bytearray(draw(st.binary()))
    for _ in range(draw(st.integers(0, 3))):
        if stream:
            stream[draw(st.integers(0, len(stream) - 1))] = draw(st.integers(0, 255))
    if stream and draw(st.booleans()):
        del stream[draw(st.integers(0, len(stream) - 1)) :]
    return bytes(stream), draw(st.sampled_from([0, 1, len(data), len(data) + 4096, 1 << 20]))


@needs_native
@CASES
@given(lznt1_streams())
def test_lznt1_agrees(case: tuple[bytes, int]) -> None:
    """The same bytes, or the same problem at the same byte, as the reference."""
    stream, limit = case
    assert _native.lznt1_decompress(stream, limit) == _py.lznt1_decompress(stream, limit)


@pytest.mark.parametrize("impl", [_py, _native] if _native else [_py], ids=lambda m: m.__name__)
def test_lznt1_round_trips_and_names_damage(impl: object) -> None:
    from support.lznt1_tools import compress

    data = b"".join(b"layer %d of the packaging disk; " % (i % 97) for i in range(3000))
    data += bytes(10_000) + b"ab" * 5000 + np.random.default_rng(2).bytes(9000)
    stream = compress(data)
    assert impl.lznt1_decompress(stream, len(data)) == (data, None, 0)  # type: ignore[attr-defined]
    assert impl.lznt1_decompress(stream, 5000) == (data[:5000], None, 0)  # type: ignore[attr-defined]
    starts, at = [], 0
    while at + 2 <= len(stream):
        starts.append(at)
        at += 3 + (int.from_bytes(stream[at : at + 2], "little") & 0x0FFF)
    size = (int.from_bytes(stream[starts[-1] : starts[-1] + 2], "little") & 0x0FFF) + 1
    assert impl.lznt1_decompress(stream[:-10], len(data)) == (  # type: ignore[attr-defined]
        b"",
        f"chunk of {size} bytes runs past the unit",
        starts[-1],
    )
    bad = bytearray(stream)
    assert bad[1] & 0x80  # the first chunk is compressed; its first flag byte follows
    bad[2] |= 0x01  # its first item becomes a back reference, with no literal before it
    assert impl.lznt1_decompress(bytes(bad), len(data)) == (  # type: ignore[attr-defined]
        b"",
        "back reference before any literal",
        5,
    )


# RFC 3720 B.4 check values.
CRC32C_VECTORS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("impl", [_py, _native] if _native else [_py], ids=lambda m: m.__name__)
def test_crc32c_rfc3720_vectors(impl: object) -> None:
    for data, expected in CRC32C_VECTORS:
        assert impl.crc32c(data) == expected  # type: ignore[attr-defined]


@needs_native
@CASES
@given(st.binary(max_size=5000), st.integers(0, 5000), st.integers(0, 0xFFFFFFFF))
def test_crc32c_agrees_with_the_crc32c_package(data: bytes, cut: int, seed: int) -> None:
    """The native kernel, the reference and the crc32c package (google's algorithm, hardware
    or software) agree, also when continued from an earlier value."""
    import crc32c

    expected = crc32c.crc32c(data, seed)
    assert _native.crc32c(data, seed) == _py.crc32c(data, seed) == expected
    cut = min(cut, len(data))
    assert _native.crc32c(data[cut:], _native.crc32c(data[:cut], seed)) == expected


@st.composite
def read_pieces(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A limit (at, below or past the file's 20 000 bytes) and pieces (offset, length), some
    of them past the limit or the file's end, or below 0."""
    limit = draw(st.sampled_from([20_000, 12_345, 30_000]))
    spans = st.tuples(st.integers(-2, 30_000), st.integers(0, 3_000))
    return limit, draw(st.lists(spans, max_size=12))


@needs_native
@CASES
@given(read_pieces())
def test_pread_pieces_agrees(tmp_path_factory: pytest.TempPathFactory, case: tuple) -> None:  # type: ignore[type-arg]
    """Both stop at the same piece (one past the limit, or the file ends inside it), having
    filled every piece before it with the file's bytes."""
    limit, spans = case
    path = tmp_path_factory.getbasetemp() / "pread_pieces.bin"
    if not path.exists():
        path.write_bytes(np.random.default_rng(5).bytes(20_000))
    data = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        got = []
        for impl in (_native, _py):
            bufs = [bytearray(n) for _, n in spans]
            done = impl.pread_pieces(fd, list(zip((o for o, _ in spans), bufs, strict=True)), limit)
            got.append((done, [bytes(b) for b in bufs[:done]]))
    finally:
        os.close(fd)
    assert got[0] == got[1]
    done, filled = got[0]
    assert filled == [data[o : o + n] for o, n in spans[:done]]
    if done < len(spans):
        o, n = spans[done]
        assert o < 0 or o + n > min(limit, len(data))


@needs_native
def test_pread_pieces_refuses_what_is_not_a_piece(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(100))
    fd = os.open(path, os.O_RDONLY)
    try:
        for impl in (_native, _py):
            with pytest.raises((TypeError, BufferError)):
                impl.pread_pieces(fd, [(0, b"read-only")], 100)  # not writable
            with pytest.raises((TypeError, ValueError)):
                impl.pread_pieces(fd, [(0,)], 100)
        with pytest.raises(OSError):
            _native.pread_pieces(-1, [(0, bytearray(1))], 100)
    finally:
        os.close(fd)


@st.composite
def span_columns(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """1-4 columns of random data over the same rows, each row's span inside its data
    (empty spans and spans at the data's end included), and each row as it should come out."""
    rows = draw(st.integers(0, 30))
    columns, expected = [], [b""] * rows
    for _ in range(draw(st.integers(1, 4))):
        data = draw(st.binary(max_size=200))
        starts = draw(st.lists(st.integers(0, len(data)), min_size=rows, max_size=rows))
        lengths = [draw(st.integers(0, len(data) - s)) for s in starts]
        spans = np.array([starts, lengths], np.int64).T.copy()
        columns.append((data, spans.tobytes()))
        expected = [e + data[s : s + k] for e, s, k in zip(expected, starts, lengths, strict=True)]
    return columns, expected


@needs_native
@CASES
@given(span_columns())
def test_join_spans_agrees(case: tuple[list[tuple[bytes, bytes]], list[bytes]]) -> None:
    columns, expected = case
    assert _native.join_spans(columns) == _py.join_spans(columns) == b"".join(expected)


@pytest.mark.parametrize("impl", [_py, _native] if _native else [_py], ids=lambda m: m.__name__)
def test_join_spans_refuses_spans_outside_their_data(impl: object) -> None:
    join = impl.join_spans  # type: ignore[attr-defined]
    pair = np.array([[0, 3]], np.int64)
    assert join([(b"abc", pair), (memoryview(b"xyz"), pair.tobytes())]) == b"abcxyz"
    assert join([]) == b""
    for start, length in [(-1, 1), (0, 4), (3, 1), (4, 0), (1, -1), (2**62, 2**62)]:
        with pytest.raises(ValueError):
            join([(b"abc", np.array([[start, length]], np.int64))])
    with pytest.raises(ValueError):  # columns over different rows
        join([(b"abc", pair), (b"abc", np.zeros((2, 2), np.int64))])
    with pytest.raises(ValueError):  # half a pair
        join([(b"abc", np.zeros(3, np.int64))])
    with pytest.raises(TypeError):
        join([(b"abc",)])
    with pytest.raises(TypeError):
        join([[b"abc", pair]])
