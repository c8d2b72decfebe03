"""Deterministic test content: sparse raw disks with known data runs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MiB = 1 << 20
GiB = 1 << 30


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def mixed_bytes(n: int, seed: int) -> bytes:
    """Random, text-like and zero quarters: what a real disk's data looks like to a compressor."""
    rng = np.random.default_rng(seed)
    q = n // 4
    text = np.frombuffer(b"strata layers compose disks; " * (q // 29 + 1), np.uint8)[:q]
    parts = [
        rng.integers(0, 256, q, dtype=np.uint8),
        text,
        np.zeros(q, np.uint8),
        rng.integers(0, 4, n - 3 * q, dtype=np.uint8),
    ]
    return np.concatenate(parts).tobytes()


def write_sparse_raw(
    path: Path, size: int, runs: Sequence[tuple[int, int]], seed: int = 1, mixed: bool = False
) -> Path:
    """A sparse raw file of ``size`` with data only in ``runs`` (offset, length)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for index, (offset, length) in enumerate(runs):
            data = (mixed_bytes if mixed else random_bytes)(length, seed * 1000 + index)
            os.pwrite(f.fileno(), data, offset)
    return path


def scattered_runs(
    size: int, count: int, total: int, seed: int, align: int = 4096
) -> list[tuple[int, int]]:
    """``count`` non-overlapping aligned runs adding up to about ``total`` bytes."""
    rng = np.random.default_rng(seed)
    length = max(align, total // count // align * align)
    slots = size // (length + align)
    picks = np.sort(rng.choice(slots, size=count, replace=False))
    return [(int(p) * (length + align), length) for p in picks]
