"""FAT12/16/32: a reader and an editor over any BlockDevice.

References: Microsoft "FAT: General Overview of On-Disk Format" 1.03 (fatgen103).
"""

from __future__ import annotations

from strata.blockdev.base import BlockDevice
from strata.fs.fat.editor import FatEditor
from strata.fs.fat.reader import FatEntry, FatVolume, Geometry

__all__ = ["FatEditor", "FatEntry", "FatVolume", "Geometry", "open_fat"]


def open_fat(dev: BlockDevice, writable: bool = False) -> FatVolume:
    """The FAT file system on ``dev``; an editor when ``writable``."""
    return FatEditor(dev) if writable else FatVolume(dev)
