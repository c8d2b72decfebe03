"""VMDK random writes, empty images, children with copy-on-write, and failure cleanup."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strata.blockdev.base import BaseDevice
from strata.blockdev.copy import Block
from strata.errors import InvalidInput, StrataError, Unsupported
from strata.formats import registry
from strata.formats.registry import WriteRequest
from strata.formats.vmdk import structs as vs
from strata.formats.vmdk.stream import StreamPlan, StreamWriter
from strata.formats.vmdk.writer import MAX_SIZE, ONE_EXTENT_MAX, make_descriptor
from strata.ops import disk as ops

from support.images import GiB, MiB, write_sparse_raw
from support.tools import qemu_compare, qemu_img, require, run, strata
from support.vmdk_helpers import SUBFORMATS, pyvmdk_handle

SIZE = 8 * MiB


def _create(path: Path, size: int, subformat: str, parent: Path | None = None) -> None:
    spec = ops.OpenSpec(str(parent)) if parent else None
    ops.create(str(path), "vmdk", size, [f"subformat={subformat}"], spec)


def _write_raw(path: Path, writes: list[tuple[int, bytes]]) -> None:
    with open(path, "r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


@pytest.mark.parametrize(
    "subformat",
    ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"],
)
def test_random_writes_read_back_by_qemu(tmp_path: Path, subformat: str) -> None:
    require("qemu-img")
    size = 2 * GiB + 4 * MiB if subformat.startswith("twoGb") else 64 * MiB
    image, ref = tmp_path / "w.vmdk", tmp_path / "ref.raw"
    _create(image, size, subformat)
    with open(ref, "wb") as f:
        f.truncate(size)
    rng = np.random.default_rng(3)
    writes = [(0, b"A" * 100), (65536 - 512, b"B" * 1024), (size - 700, b"C" * 700)]
    writes += [(2 * GiB - 3000, b"D" * 6000)] if size > 2 * GiB else []
    writes += [
        (int(rng.integers(0, size - 200_000)), rng.bytes(int(rng.integers(1, 200_000))))
        for _ in range(20)
    ]
    with registry.open_image(str(image), writable=True) as disk:
        for offset, data in writes:
            disk.write(offset, data)
        disk.flush()
    _write_raw(ref, writes)
    assert qemu_compare(ref, image, "vmdk") == 0
    assert qemu_img("check", "-f", "vmdk", image, check=False).returncode == 0
    assert not ops.check(ops.OpenSpec(str(image))), "redundant tables must mirror the primary"


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops_=st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 150_000)), max_size=8))
def test_writes_match_a_flat_reference(tmp_path: Path, ops_: list[tuple[int, int]]) -> None:
    image = tmp_path / f"h{os.getpid()}-{len(os.listdir(tmp_path))}.vmdk"
    _create(image, SIZE, "monolithicSparse")
    model = bytearray(SIZE)
    with registry.open_image(str(image), writable=True) as disk:
        for n, (offset, length) in enumerate(ops_):
            length = min(length, SIZE - offset)
            data = bytes([n + 1]) * length
            disk.write(offset, data)
            model[offset : offset + length] = data
        assert disk.read(0, SIZE) == model
    with registry.open_image(str(image)) as disk:
        assert disk.read(0, SIZE) == model
    image.unlink()


def test_child_partial_write_copies_the_rest_from_the_parent(tmp_path: Path) -> None:
    require("qemu-img")
    size = 32 * MiB
    ref = write_sparse_raw(tmp_path / "p.raw", size, [(0, 4 * MiB), (20 * MiB, MiB)])
    parent = tmp_path / "p.vmdk"
    ops.convert(ops.OpenSpec(str(ref)), str(parent), "vmdk", [])
    child = tmp_path / "c.vmdk"
    _create(child, size, "monolithicSparse", parent)
    writes = [(1000, b"x" * 10), (3 * MiB + 70000, b"y" * 100), (20 * MiB + 65536 * 3 + 5, b"z")]
    with registry.open_image(str(child), writable=True) as disk:
        for offset, data in writes:
            disk.write(offset, data)
    _write_raw(ref, writes)
    assert qemu_compare(ref, child, "vmdk") == 0
    # only the three touched grains live in the child
    with registry.open_layer(str(child)) as layer:
        data_runs = [e for e in layer.extents() if e.state.name == "DATA"]
    assert sum(e.length for e in data_runs) == 3 * 65536
    handle, base = pyvmdk_handle(child), pyvmdk_handle(parent)
    handle.set_parent(base)
    with open(ref, "rb") as f:
        assert handle.read_buffer_at_offset(4 * MiB, 0) == f.read(4 * MiB)


def test_write_gives_a_new_cid(tmp_path: Path) -> None:
    image = tmp_path / "cid.vmdk"
    _create(image, SIZE, "monolithicSparse")
    before = ops.info(ops.OpenSpec(str(image)))["cid"]
    with registry.open_image(str(image), writable=True) as disk:
        disk.write(0, b"1")
    assert ops.info(ops.OpenSpec(str(image)))["cid"] != before


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_create_cli_each_subformat(tmp_path: Path, subformat: str) -> None:
    require("qemu-img")
    image = tmp_path / "n.vmdk"
    proc = strata("disk", "create", "-f", "vmdk", "-o", f"subformat={subformat}", image, "3G")
    assert proc.returncode == 0, proc.stderr
    info = qemu_img("info", "--output=json", image).stdout
    assert '"virtual-size": 3221225472' in info and subformat in info
    assert qemu_img("check", image, check=False).returncode == 0
    files = registry.open_layer(str(image)).files
    expected = {"twoGbMaxExtentSparse": 3, "twoGbMaxExtentFlat": 3, "monolithicFlat": 2}
    assert len(files) == expected.get(subformat, 1)


class FailingSource(BaseDevice):
    """Reads fine for a while, then fails like a dying disk."""

    def __init__(self, size: int, fail_after: int) -> None:
        self._size = size
        self.calls = 0
        self.fail_after = fail_after

    def _readinto(self, offset: int, view: memoryview) -> None:
        self.calls += 1
        if self.calls > self.fail_after:
            raise StrataError("source read failed")
        view[:] = b"\x11" * len(view)


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_failed_write_removes_every_file(tmp_path: Path, subformat: str) -> None:
    driver = registry.get("vmdk")
    options = registry.options_for("vmdk", [f"subformat={subformat}"])
    out = tmp_path / "f.vmdk"
    with pytest.raises(StrataError, match="source read failed"):
        driver.write(WriteRequest(FailingSource(5 * GiB, 3), str(out), options))  # type: ignore[misc]
    assert os.listdir(tmp_path) == []


def test_child_options_refused(tmp_path: Path) -> None:
    ref = write_sparse_raw(tmp_path / "r.raw", SIZE, [(0, MiB)])
    base = tmp_path / "b.vmdk"
    ops.convert(ops.OpenSpec(str(ref)), str(base), "vmdk", [])
    for sub in ("streamOptimized", "monolithicFlat"):
        with pytest.raises(InvalidInput):
            ops.convert(
                ops.OpenSpec(str(ref)),
                str(tmp_path / "x.vmdk"),
                "vmdk",
                [f"subformat={sub}"],
                ops.OpenSpec(str(base)),
            )
    with pytest.raises(InvalidInput):
        ops.convert(
            ops.OpenSpec(str(ref)), str(tmp_path / "y.vmdk"), "vmdk", [], ops.OpenSpec(str(ref))
        )
    assert not (tmp_path / "x.vmdk").exists() and not (tmp_path / "y.vmdk").exists()


def test_renamed_monolithic_still_opens_and_check_warns(tmp_path: Path) -> None:
    require("qemu-img")
    ref = write_sparse_raw(tmp_path / "r.raw", SIZE, [(0, MiB)])
    image = tmp_path / "a.vmdk"
    ops.convert(ops.OpenSpec(str(ref)), str(image), "vmdk", [])
    moved = tmp_path / "b.vmdk"
    image.rename(moved)
    assert qemu_compare(ref, moved, "vmdk") == 0
    with registry.open_image(str(moved)) as disk:
        assert disk.read(0, 4096) == ref.read_bytes()[:4096]
    problems = ops.check(ops.OpenSpec(str(moved)))
    assert [p.severity for p in problems] == ["warning"] and "a.vmdk" in problems[0].message


def test_qemu_io_writes_into_strata_sparse(tmp_path: Path) -> None:
    qemu_io = require("qemu-io")
    image = tmp_path / "s.vmdk"
    _create(image, SIZE, "monolithicSparse")
    run([qemu_io, "-f", "vmdk", "-c", "write -P 0x42 100k 300k", str(image)])
    with registry.open_image(str(image)) as disk:
        assert disk.read(100 << 10, 300 << 10) == b"\x42" * (300 << 10)
        assert disk.read(0, 100 << 10) == bytes(100 << 10)
    assert not ops.check(ops.OpenSpec(str(image)))


def test_write_allocates_missing_grain_tables(tmp_path: Path) -> None:
    """Hosted sparse files may leave grain tables unallocated (GD entry 0): writes add them."""
    require("qemu-img")
    size = 96 * MiB  # three grain tables
    image, ref = tmp_path / "g.vmdk", tmp_path / "g.raw"
    _create(image, size, "monolithicSparse")
    with open(image, "r+b") as f:
        header = f.read(512)
        rgd, gd = struct.unpack_from("<QQ", header, 0x30)
        for table in (rgd, gd):
            f.seek(table * 512 + 4)
            f.write(bytes(8))  # drop tables 1 and 2 from both directories
    with open(ref, "wb") as f:
        f.truncate(size)
    writes = [(40 * MiB + 3, b"a" * 100_000), (70 * MiB, b"b" * 65536), (0, b"c" * 10)]
    with registry.open_image(str(image), writable=True) as disk:
        for offset, data in writes:
            disk.write(offset, data)
    _write_raw(ref, writes)
    assert qemu_compare(ref, image, "vmdk") == 0
    assert qemu_img("check", "-f", "vmdk", image, check=False).returncode == 0
    assert not ops.check(ops.OpenSpec(str(image)))


def _refused_quickly(tmp_path: Path, *args: str | Path) -> str:
    """The one stderr line of a CLI call refused as invalid input at once, leaving no file."""
    before = set(os.listdir(tmp_path))
    start = time.monotonic()
    proc = strata(*args, timeout=120)
    seconds = time.monotonic() - start
    assert proc.returncode == InvalidInput.exit_code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strata: "), proc.stderr
    assert set(os.listdir(tmp_path)) == before
    assert seconds < 10, seconds  # the tables of a 64 TiB sparse disk took minutes
    return lines[0]


@pytest.mark.parametrize("size", ["100T", "64T", "past"])
@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_create_refuses_a_size_past_the_limit(tmp_path: Path, subformat: str, size: str) -> None:
    one_extent = subformat in ("monolithicSparse", "streamOptimized")
    limit = ONE_EXTENT_MAX if one_extent else MAX_SIZE
    text = str(limit + 512) if size == "past" else size
    args = ("disk", "create", "-O", "vmdk", "-o", f"subformat={subformat}")
    line = _refused_quickly(tmp_path, *args, tmp_path / "x.vmdk", text)
    assert f"holds at most 2 TiB{' less its grain tables' if one_extent else ''} ({limit}" in line


def test_convert_refuses_a_source_past_the_limit(tmp_path: Path) -> None:
    source = tmp_path / "big.vhdx"
    assert strata("disk", "create", "-O", "vhdx", source, "64T").returncode == 0
    line = _refused_quickly(tmp_path, "disk", "convert", "-O", "vmdk", source, tmp_path / "o.vmdk")
    assert "holds at most 2 TiB less its grain tables" in line


def test_the_largest_sparse_disk_keeps_every_grain_addressable(tmp_path: Path) -> None:
    """At the limit, the header, tables and every grain of a full disk end by sector 2**32,
    the last a 32-bit grain table entry (and qemu) can point at; qemu takes the image."""
    require("qemu-img")
    image = tmp_path / "max.vmdk"
    assert strata("disk", "create", "-O", "vmdk", image, str(ONE_EXTENT_MAX)).returncode == 0
    with open(image, "rb") as f:
        capacity, grain = struct.unpack_from("<QQ", f.read(512), 12)
        f.seek(64)
        (overhead,) = struct.unpack("<Q", f.read(8))
    assert capacity * 512 == ONE_EXTENT_MAX and capacity % grain == 0
    assert overhead + capacity <= 1 << 32
    info = qemu_img("info", "--output=json", image).stdout
    assert f'"virtual-size": {ONE_EXTENT_MAX}' in info
    assert qemu_img("check", image, check=False).returncode == 0


def _stream_near_the_end(path: Path, data: bytes, room: int) -> None:
    """A streamOptimized file of ``data`` whose grains start ``room`` sectors before sector
    2**32, the last a grain table entry holds (the file is sparse up to there)."""
    sectors = len(data) // 512
    desc = make_descriptor(
        str(path),
        "streamOptimized",
        [(str(path), sectors)],
        {"adapter_type": "ide", "hwversion": "4"},
        None,
    )
    with open(path, "wb") as f:
        writer = StreamWriter(f, StreamPlan(sectors, desc.encode()), workers=1)
        f.seek((vs.MAX_EXTENT_SECTORS - room) * 512)
        writer.write_blocks([Block(0, memoryview(data))])
        writer.finish()


def test_stream_output_past_what_grain_tables_address_is_refused(tmp_path: Path) -> None:
    """Random data does not compress: near the end of what 32-bit entries address, a grain
    that would start past it is refused by name (before: numpy wrapped its entry to a low
    sector, then the table's directory entry raised OverflowError, exit 70).  One that
    starts before it is read back by qemu."""
    grain = 64 << 10
    data = np.random.default_rng(5).integers(0, 256, 4 * grain, np.uint8).tobytes()
    fits, past = tmp_path / "fits.vmdk", tmp_path / "past.vmdk"
    _stream_near_the_end(fits, data[:grain], room=400)  # grain, table and directory fit
    raw = tmp_path / "grain.raw"
    raw.write_bytes(data[:grain])
    assert qemu_compare(raw, fits, "vmdk") == 0
    with pytest.raises(Unsupported, match="outgrows the 2 TiB its 32-bit grain tables"):
        _stream_near_the_end(past, data, room=300)  # the fourth grain would start past it


@pytest.mark.parametrize("size", ["1", "511", "1000"])
@pytest.mark.parametrize(
    "fmt", [*(f"vmdk:{sub}" for sub in SUBFORMATS), "vhd:dynamic", "vhdx:dynamic"]
)
def test_create_refuses_a_size_not_in_whole_sectors(tmp_path: Path, fmt: str, size: str) -> None:
    name, subformat = fmt.split(":")
    args = ("disk", "create", "-O", name, "-o", f"subformat={subformat}")
    line = _refused_quickly(tmp_path, *args, tmp_path / f"x.{name}", size)
    assert f"size must be a positive multiple of 512, not {size}" in line
