"""VHDX: fixed, dynamic and differencing Hyper-V disks, with log replay on open.

References: [MS-VHDX] Virtual Hard Disk v2 (VHDX) File Format.
"""

from __future__ import annotations

from strata.formats.registry import FormatDriver, ProbeInput
from strata.formats.vhdx.check import check
from strata.formats.vhdx.reader import VhdxDevice, open_vhdx
from strata.formats.vhdx.writer import OPTIONS, create, write


def probe(data: ProbeInput) -> int:
    return 100 if data.head.startswith(b"vhdxfile") else 0


DRIVER = FormatDriver(
    name="vhdx",
    description="Hyper-V VHDX: fixed, dynamic, differencing (log replayed on open)",
    probe=probe,
    open=open_vhdx,
    create=create,
    write=write,
    check=check,
    options=OPTIONS,
)

__all__ = ["DRIVER", "VhdxDevice", "open_vhdx"]
