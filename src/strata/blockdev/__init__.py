"""Block devices: one protocol for every disk, volume and view."""

from strata.blockdev.base import (
    BaseDevice,
    BlockDevice,
    Extent,
    ExtentState,
    coalesce,
)
from strata.blockdev.chain import ChainDevice, ParentRef, attach_parents
from strata.blockdev.copy import Block, Progress, first_difference, iter_blocks, stream_copy
from strata.blockdev.range import RangeDevice
from strata.blockdev.rawfile import RawFileDevice
from strata.blockdev.rawio import DeviceIO

__all__ = [
    "BaseDevice",
    "Block",
    "BlockDevice",
    "ChainDevice",
    "DeviceIO",
    "Extent",
    "ExtentState",
    "ParentRef",
    "Progress",
    "RangeDevice",
    "RawFileDevice",
    "attach_parents",
    "coalesce",
    "first_difference",
    "iter_blocks",
    "stream_copy",
]
