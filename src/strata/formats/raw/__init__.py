"""raw: the disk's bytes as they are, sparse where the file system allows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from strata.blockdev.base import BlockDevice
from strata.blockdev.copy import stream_copy
from strata.blockdev.rawfile import RawFileDevice
from strata.errors import InvalidInput
from strata.formats.raw.device import is_block_device, write_device
from strata.formats.registry import CreateRequest, FormatDriver, ProbeInput, Problem, WriteRequest


def probe(data: ProbeInput) -> int:
    # Raw matches anything, so it is the fallback; a size that is not whole
    # sectors is more likely some other file than a disk.
    return 1 if data.size > 0 and data.size % 512 == 0 else 0


def open_raw(path: str, writable: bool) -> BlockDevice:
    return RawFileDevice(path, writable=writable)


def check_options(options: Mapping[str, Any], size: int, child: bool) -> None:
    if child:
        raise InvalidInput("raw images have no parent; choose vhd, vhdx or vmdk for a child")


def create(req: CreateRequest) -> BlockDevice:
    check_options(req.options, req.size, req.parent is not None)
    return RawFileDevice.create(req.path, req.size)


def write(req: WriteRequest) -> None:
    if req.backing is not None:
        raise InvalidInput("raw images have no backing file; choose vhd, vhdx or vmdk")
    if is_block_device(req.path):
        write_device(req.source, req.path, req.progress)
        return
    dst = RawFileDevice.create(req.path, req.source.size)
    try:
        stream_copy(req.source, dst, progress=req.progress)
        dst.flush()
    finally:
        dst.close()


def check(path: str, allowed_dirs: Sequence[str] = ()) -> list[Problem]:
    with RawFileDevice(path) as dev:
        if dev.size % 512:
            return [
                Problem(
                    "file", f"size {dev.size} is not a multiple of 512", "size", severity="warning"
                )
            ]
    return []


DRIVER = FormatDriver(
    onto_devices=True,
    name="raw",
    description="plain disk bytes (sparse file)",
    probe=probe,
    open=open_raw,
    create=create,
    write=write,
    check=check,
    check_options=check_options,
)
