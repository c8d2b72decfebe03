"""Reference kernels: the meaning of every function in ``strata._native``.

Bitmaps are LSB-first (``numpy.packbits(bitorder="little")``) unless a
function takes ``msb_first``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

Buffer = bytes | bytearray | memoryview


def _u8(buf: Buffer) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.uint8)


def is_zero(buf: Buffer) -> bool:
    return not _u8(buf).any()


def changed_sectors(a: Buffer, b: Buffer, sector_size: int) -> bytes:
    if sector_size <= 0:
        raise ValueError("sector_size must be positive")
    va, vb = _u8(a), _u8(b)
    if va.size != vb.size or va.size % sector_size:
        raise ValueError("buffers must have equal length, a multiple of sector_size")
    differs = (va != vb).reshape(-1, sector_size).any(axis=1)
    return np.packbits(differs, bitorder="little").tobytes()


def nonzero_blocks(buf: Buffer, block_size: int) -> bytes:
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    v = _u8(buf)
    count = -(-v.size // block_size)
    padded = np.zeros(count * block_size, dtype=np.uint8)
    padded[: v.size] = v
    nonzero = padded.reshape(count, block_size).any(axis=1) if count else np.zeros(0, bool)
    return np.packbits(nonzero, bitorder="little").tobytes()


def bitmap_runs(bitmap: Buffer, msb_first: bool, nbits: int = -1) -> list[tuple[int, int]]:
    bits = np.unpackbits(_u8(bitmap), bitorder="big" if msb_first else "little")
    if 0 <= nbits < bits.size:
        bits = bits[:nbits]
    edges = np.diff(np.concatenate(([0], bits.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]


def pread_pieces(fd: int, pieces: Sequence[tuple[int, Buffer]], limit: int) -> int:
    """How many pieces, in order, were filled whole from ``fd`` at their offsets; it stops at
    one that ends past ``limit`` (or starts below 0) and at one the file ends inside."""
    for i, (offset, buf) in enumerate(pieces):
        view = memoryview(buf).cast("B")
        if offset < 0 or len(view) > limit - offset:
            return i
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                return i
            done += got
    return len(pieces)


def join_spans(columns: Sequence[tuple[Buffer, Buffer]]) -> bytes:
    """For each row, the span ``(start, length)`` of each column's data, in column order;
    a column is ``(data, spans)``, spans holding one int64 pair per row (the same rows in
    every column).  A span outside its data is a ValueError."""
    tables = [_span_table(column) for column in columns]
    if len({len(spans) for _data, spans in tables}) > 1:
        raise ValueError("every column must have the same rows")
    if not tables:
        return b""
    # Every column's data one after another, and each span (row-major) as a range of it.
    every = np.concatenate([np.frombuffer(data, np.uint8) for data, _spans in tables])
    shifts = np.cumsum([0] + [len(data) for data, _spans in tables[:-1]])
    starts = np.stack([s[:, 0] + at for (_d, s), at in zip(tables, shifts, strict=True)], 1)
    lengths = np.stack([spans[:, 1] for _data, spans in tables], 1)
    return every[_ranges(starts.reshape(-1), lengths.reshape(-1))].tobytes()


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indexes of each range ``(start, length)``, one range after another."""
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if ends.size else 0
    return np.arange(total) + np.repeat(starts - (ends - lengths), lengths)


def _span_table(column: tuple[Buffer, Buffer]) -> tuple[memoryview, np.ndarray]:
    if not isinstance(column, tuple) or len(column) != 2:
        raise TypeError("a column is a (data, spans) tuple")
    data, raw = memoryview(column[0]).cast("B"), memoryview(column[1]).cast("B")
    if len(raw) % 16:
        raise ValueError("spans must hold one int64 (start, length) pair per row")
    spans = np.frombuffer(raw, np.int64).reshape(-1, 2)
    start, length = spans[:, 0], spans[:, 1]
    if ((start < 0) | (length < 0) | (start > len(data)) | (length > len(data) - start)).any():
        raise ValueError("a span lies outside its data")
    return data, spans
