"""VHDX: fixed, dynamic and differencing Hyper-V disks, with log replay on open.

References: [MS-VHDX] Virtual Hard Disk v2 (VHDX) File Format.
"""

from __future__ import annotations

from strata.formats.registry import Deferred, DeferredOptions, FormatDriver, ProbeInput


def probe(data: ProbeInput) -> int:
    return 100 if data.head.startswith(b"vhdxfile") else 0


DRIVER = FormatDriver(
    name="vhdx",
    description="Hyper-V VHDX: fixed, dynamic, differencing (log replayed on open)",
    probe=probe,
    open=Deferred("strata.formats.vhdx.reader:open_vhdx"),
    create=Deferred("strata.formats.vhdx.writer:create"),
    write=Deferred("strata.formats.vhdx.writer:write"),
    check_options=Deferred("strata.formats.vhdx.writer:check_options"),
    check=Deferred("strata.formats.vhdx.check:check"),
    options=DeferredOptions("strata.formats.vhdx.writer:OPTIONS"),
)

__all__ = ["DRIVER"]
