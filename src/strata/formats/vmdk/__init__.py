"""vmdk: VMware virtual disks — monolithicSparse, streamOptimized, monolithicFlat,
twoGbMaxExtentSparse/Flat, and child disks (parentCID / parentFileNameHint).

References: VMware Virtual Disk Format 5.0.
"""

from __future__ import annotations

from strata.formats.registry import Deferred, DeferredOptions, FormatDriver, ProbeInput
from strata.formats.vmdk import structs as s


def probe(data: ProbeInput) -> int:
    if data.head.startswith(s.MAGIC):
        return 100
    if data.head.lstrip().startswith(s.DESCRIPTOR_MAGIC):
        score = 100
    elif b"createType" in data.head and b"version" in data.head:
        score = 80
    else:
        return 0
    # Imported only for text that looks like a descriptor: every probe of every other
    # image would otherwise pay for the descriptor parser (start-up).
    from strata.formats.vmdk.descriptor import MAX_DESCRIPTOR

    return score if data.size <= MAX_DESCRIPTOR else 0


DRIVER = FormatDriver(
    name="vmdk",
    description="VMware VMDK (monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtent*)",
    probe=probe,
    open=Deferred("strata.formats.vmdk.image:open_vmdk"),
    create=Deferred("strata.formats.vmdk.writer:create"),
    write=Deferred("strata.formats.vmdk.writer:write"),
    check_options=Deferred("strata.formats.vmdk.writer:check_options"),
    check=Deferred("strata.formats.vmdk.check:check"),
    options=DeferredOptions("strata.formats.vmdk.writer:OPTIONS"),
    # A descriptor names its extent files (a monolithicSparse file names itself), so a
    # VMDK is written under its own names, in place.
    atomic_replace=False,
)

__all__ = ["DRIVER"]
