"""A Windows packaging disk before and after ntfs-3g changed it, and the block delta finalize
would hand the NTFS file delta (changed 64 KiB blocks and their differing sectors)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from strata.layer.blocks import BLOCK_SIZE, SECTOR_MASK_ROW

from support.integrity_tools import on_ntfs, windows_disk


def base_and_child(
    root: Path, fill: Callable[[Path], None], change: Callable[[Path], None]
) -> tuple[Path, Path]:
    """A Windows disk filled through ntfs-3g, and a copy of it changed through ntfs-3g."""
    base = windows_disk(root)
    on_ntfs(base, fill, root)
    child = root / "child.raw"
    shutil.copyfile(base, child)
    on_ntfs(child, change, root)
    return base, child


def changed_blocks(a: Path, b: Path) -> np.ndarray:
    """Disk offsets of the 64 KiB blocks that differ (test disks are small: read whole)."""
    x = np.fromfile(a, np.uint8).reshape(-1, BLOCK_SIZE)
    y = np.fromfile(b, np.uint8).reshape(-1, BLOCK_SIZE)
    return np.flatnonzero((x != y).any(axis=1)).astype(np.uint64) * BLOCK_SIZE


def sector_masks(a: Path, b: Path, offsets: np.ndarray) -> np.ndarray:
    """What the block delta records beside each changed block: its differing 512-byte sectors."""
    x = np.fromfile(a, np.uint8).reshape(-1, BLOCK_SIZE // 512, 512)
    y = np.fromfile(b, np.uint8).reshape(-1, BLOCK_SIZE // 512, 512)
    blocks = (np.asarray(offsets, np.int64) // BLOCK_SIZE).tolist()
    rows = np.zeros(len(blocks), SECTOR_MASK_ROW)
    rows["offset"] = offsets
    bits = (x[blocks] != y[blocks]).any(axis=2)
    rows["mask"] = np.frombuffer(np.packbits(bits, axis=1, bitorder="little").tobytes(), "V16")
    return rows
