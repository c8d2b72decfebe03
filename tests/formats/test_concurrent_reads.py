"""Every format's reader claims concurrent reads, so bulk copies keep two windows reading at
once: images that qemu-img and qemu-io wrote, copied block by block in small windows (many
reads overlapping), must come out as qemu-img's own raw conversion, byte for byte."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import pytest

from strata.blockdev.copy import _reads_in_flight, iter_blocks
from strata.formats import registry

from support.images import MiB
from support.tools import qemu_img, qemu_io_scribble

SIZE = 96 * MiB
WINDOW = 64 << 10  # small windows: hundreds of reads, two in flight at every step
FORMATS = {
    "vhd-fixed": ("vpc", ["-o", "subformat=fixed"]),
    "vhd-dynamic": ("vpc", ["-o", "subformat=dynamic"]),
    "vhdx": ("vhdx", ["-o", "block_size=1M"]),
    "vmdk-sparse": ("vmdk", ["-o", "subformat=monolithicSparse"]),
    "vmdk-flat": ("vmdk", ["-o", "subformat=monolithicFlat"]),
}


def _scribble(image: Path, fmt: str, seed: int) -> None:
    qemu_io_scribble(image, fmt, SIZE, seed=seed, writes=60, extra=[(SIZE - 512, 512, 0x5A)])


def _qemu_image(tmp_path: Path, name: str) -> Path:
    fmt, opts = FORMATS[name]
    image = tmp_path / f"{name}.{fmt}"
    qemu_img("create", "-q", "-f", fmt, *opts, image, str(SIZE))
    _scribble(image, fmt, seed=len(name))
    return image


def _copied_in_small_windows(image: Path, out: Path) -> None:
    with registry.open_image(str(image)) as disk:
        assert disk.concurrent_reads and _reads_in_flight(disk, None) == 2
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, disk.size)
            for blk in iter_blocks(disk, 4096, window=WINDOW):
                os.pwrite(fd, blk.data, blk.offset)
        finally:
            os.close(fd)


def _assert_reads_as_qemu(image: Path, fmt: str, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    _copied_in_small_windows(image, ours)
    qemu_img("convert", "-f", fmt, "-O", "raw", image, theirs)
    assert ours.stat().st_size == theirs.stat().st_size
    assert filecmp.cmp(ours, theirs, shallow=False), f"{image.name} copied differently"


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_qemu_written_copies_identically_with_reads_in_parallel(tmp_path: Path, name: str) -> None:
    image = _qemu_image(tmp_path, name)
    _assert_reads_as_qemu(image, FORMATS[name][0], tmp_path)


def test_stream_optimized_grains_inflate_in_parallel(tmp_path: Path) -> None:
    """Compressed grains are inflated by the reading threads (one cached grain per extent)."""
    sparse = _qemu_image(tmp_path, "vmdk-sparse")
    stream = tmp_path / "stream.vmdk"
    options = ["-o", "subformat=streamOptimized"]
    qemu_img("convert", "-f", "vmdk", "-O", "vmdk", *options, sparse, stream)
    _assert_reads_as_qemu(stream, "vmdk", tmp_path)


def test_differencing_chain_reads_in_parallel(tmp_path: Path) -> None:
    """A qemu-made VMDK child over its base: each window reads through both layers."""
    base = _qemu_image(tmp_path, "vmdk-sparse")
    child = tmp_path / "child.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-b", base.name, "-F", "vmdk", child)
    _scribble(child, "vmdk", seed=99)
    _assert_reads_as_qemu(child, "vmdk", tmp_path)
