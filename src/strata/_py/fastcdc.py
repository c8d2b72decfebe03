"""Reference FastCDC (normalized chunking, level 2): the meaning of ``_native.fastcdc_cuts``.

References: Xia et al., "FastCDC: a Fast and Efficient Content-Defined Chunking Approach
for Data Deduplication", USENIX ATC 2016.

The cut test at byte ``i`` uses the gear hash of the 64-byte window ending at ``i``
(``W(i) = sum_k G[b[i-k]] << k mod 2**64``), so it is computed here for every position
at once with numpy; the C kernel rolls the same hash byte by byte.
"""

from __future__ import annotations

import numpy as np

Buffer = bytes | bytearray | memoryview
_M64 = (1 << 64) - 1


def _splitmix64(seed: int, count: int) -> np.ndarray:
    out = np.empty(count, np.uint64)
    state = seed
    for i in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out[i] = z ^ (z >> 31)
    return out


GEAR = _splitmix64(0x5354524154414744, 256)


def _top_mask(bits: int) -> np.uint64:
    return np.uint64(0) if bits <= 0 else np.uint64((_M64 << (64 - bits)) & _M64)


def window_hashes(data: np.ndarray) -> np.ndarray:
    """W(i) for every i (positions before 63 see a partial window)."""
    g = GEAR[data]
    h = np.zeros(data.size, np.uint64)
    for k in range(min(64, data.size)):
        h[k:] += g[: data.size - k] << np.uint64(k)
    return h


def _check(min_size: int, avg_size: int, max_size: int) -> int:
    bits = avg_size.bit_length() - 1
    if min_size < 64 or bits < 8 or 1 << bits != avg_size or not min_size <= avg_size <= max_size:
        raise ValueError(
            "need 64 <= min_size <= avg_size <= max_size, avg_size a power of two >= 256"
        )
    return bits


def fastcdc_cuts(
    buf: Buffer, min_size: int, avg_size: int, max_size: int, final: bool = True
) -> list[int]:
    bits = _check(min_size, avg_size, max_size)
    data = np.frombuffer(buf, np.uint8)
    h = window_hashes(data)
    small = np.flatnonzero((h & _top_mask(bits + 2)) == 0) + 1  # chunk ends
    large = np.flatnonzero((h & _top_mask(bits - 2)) == 0) + 1
    cuts: list[int] = []
    pos, n = 0, data.size
    while pos < n:
        length = _next_cut(pos, n, min_size, avg_size, max_size, small, large, final)
        if length == 0:
            break
        pos += length
        cuts.append(pos)
    return cuts


def _first_in(ends: np.ndarray, lo: int, hi: int) -> int | None:
    at = int(np.searchsorted(ends, lo))
    return int(ends[at]) if at < ends.size and ends[at] < hi else None


def _next_cut(
    pos: int,
    n: int,
    min_size: int,
    avg: int,
    max_size: int,
    small: np.ndarray,
    large: np.ndarray,
    final: bool,
) -> int:
    remaining = n - pos
    if remaining <= min_size:
        return remaining if final else 0
    limit = min(remaining, max_size)
    normal = min(avg, limit)
    end = _first_in(small, pos + min_size, pos + normal + 1)
    if end is None:
        end = _first_in(large, pos + normal + 1, pos + limit + 1)
    if end is not None:
        return end - pos
    if limit == max_size:
        return max_size
    return remaining if final else 0
