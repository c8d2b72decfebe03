"""vhd: Microsoft Virtual Hard Disk (fixed, dynamic, differencing), read and write.

References: Microsoft "Virtual Hard Disk Image Format Specification" v1.0.  How strata sizes
the VHDs it writes so that qemu, libvhdi and Hyper-V agree: see ``writer``.
"""

from __future__ import annotations

from strata.formats.options import FormatOption, bool_option, size_option
from strata.formats.registry import Deferred, FormatDriver, ProbeInput
from strata.formats.vhd import structs as s


def probe(data: ProbeInput) -> int:
    if data.head.startswith(s.FOOTER_COOKIE):
        return 100
    if data.size >= s.FOOTER_SIZE and data.tail[-s.FOOTER_SIZE :].startswith(s.FOOTER_COOKIE):
        return 100
    return 0


OPTIONS = (
    FormatOption(
        "subformat",
        "fixed or dynamic (without it: dynamic, or fixed with azure=on; a child of "
        "--parent/--backing is always differencing)",
        None,
        str,
        ("fixed", "dynamic"),
    ),
    bool_option("azure", "fixed VHD for Azure: size must be whole MiB, file = size + 512"),
    size_option("block_size", "dynamic/differencing block size, power of two", 2 << 20),
)

DRIVER = FormatDriver(
    name="vhd",
    description="Microsoft VHD (fixed, dynamic, differencing)",
    probe=probe,
    open=Deferred("strata.formats.vhd.reader:open_vhd"),
    create=Deferred("strata.formats.vhd.writer:create"),
    write=Deferred("strata.formats.vhd.writer:write"),
    check_options=Deferred("strata.formats.vhd.writer:check_options"),
    check=Deferred("strata.formats.vhd.check:check"),
    options=OPTIONS,
)
