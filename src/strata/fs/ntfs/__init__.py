"""NTFS: a reader over any BlockDevice (the full-volume listing is a bulk numpy MFT scan).

References: Russon & Fledel "NTFS Documentation"; [MS-FSCC]; see ``structs``.
"""

from __future__ import annotations

from strata.blockdev.base import BlockDevice
from strata.fs.ntfs.attributes import Attribute, Reparse
from strata.fs.ntfs.records import RecordProblem
from strata.fs.ntfs.volume import (
    Listing,
    NtfsEntry,
    NtfsVolume,
    attribute_names,
    filetime,
    link_of,
)

__all__ = [
    "Attribute",
    "Listing",
    "NtfsEntry",
    "NtfsVolume",
    "RecordProblem",
    "Reparse",
    "attribute_names",
    "filetime",
    "link_of",
    "open_ntfs",
]


def open_ntfs(dev: BlockDevice) -> NtfsVolume:
    """The NTFS file system on ``dev``, read-only."""
    return NtfsVolume(dev)
