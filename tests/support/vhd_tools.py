"""VHD test helpers: libvhdi (pyvhdi) as an oracle, sparse sources, byte surgery."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from support.images import MiB, write_sparse_raw

CHUNK = 64 << 10


def pyvhdi_module() -> Any:
    try:
        import pyvhdi
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pyvhdi (libvhdi-python) is not installed")
        pytest.skip("pyvhdi (libvhdi-python) is not installed")
    return pyvhdi


def pyvhdi_chain(paths: Sequence[Path]) -> list[Any]:
    """Open child..base with libvhdi, linking each to its parent with set_parent."""
    pyvhdi = pyvhdi_module()
    files = []
    for path in paths:
        f = pyvhdi.file()
        f.open(str(path))
        files.append(f)
    for child, parent in itertools.pairwise(files):
        child.set_parent(parent)
    return files


def edge_runs(size: int) -> list[tuple[int, int]]:
    """Data at the first and last bytes and across 2 MiB block and 64 KiB chunk boundaries."""
    runs = [
        (0, CHUNK),
        (2 * MiB - 4096, 8192),
        (6 * MiB - 1024, 2 * MiB + 3072),
        (size // 2 - CHUNK // 2, CHUNK),
        (size - CHUNK - 512, CHUNK + 512),
    ]
    return sorted(runs)


def edge_source(path: Path, size: int, seed: int = 1) -> Path:
    return write_sparse_raw(path, size, edge_runs(size), seed=seed)


def read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    return data + bytes(length - len(data))


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def be32(path: Path, offset: int) -> int:
    return int.from_bytes(read_range(path, offset, 4), "big")


def put_be32(path: Path, offset: int, value: int) -> None:
    patch(path, offset, value.to_bytes(4, "big"))


def refresh_checksum(path: Path, start: int, length: int, field_at: int) -> None:
    """Recompute a VHD ones'-complement checksum after an edit (to reach deeper checks)."""
    raw = bytearray(read_range(path, start, length))
    raw[field_at : field_at + 4] = bytes(4)
    put_be32(path, start + field_at, ~sum(raw) & 0xFFFFFFFF)
