"""vmdk: VMware virtual disks — monolithicSparse, streamOptimized, monolithicFlat,
twoGbMaxExtentSparse/Flat, and child disks (parentCID / parentFileNameHint).

References: VMware Virtual Disk Format 5.0.
"""

from __future__ import annotations

from strata.formats.registry import Deferred, DeferredOptions, FormatDriver, ProbeInput
from strata.formats.vmdk import structs as s
from strata.formats.vmdk.descriptor import MAX_DESCRIPTOR


def probe(data: ProbeInput) -> int:
    if data.head.startswith(s.MAGIC):
        return 100
    if data.size <= MAX_DESCRIPTOR and data.head.lstrip().startswith(s.DESCRIPTOR_MAGIC):
        return 100
    if data.size <= MAX_DESCRIPTOR and b"createType" in data.head and b"version" in data.head:
        return 80
    return 0


DRIVER = FormatDriver(
    name="vmdk",
    description="VMware VMDK (monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtent*)",
    probe=probe,
    open=Deferred("strata.formats.vmdk.image:open_vmdk"),
    create=Deferred("strata.formats.vmdk.writer:create"),
    write=Deferred("strata.formats.vmdk.writer:write"),
    check=Deferred("strata.formats.vmdk.check:check"),
    options=DeferredOptions("strata.formats.vmdk.writer:OPTIONS"),
)

__all__ = ["DRIVER"]
