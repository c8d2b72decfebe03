"""BlockDevice plumbing against flat in-memory models: chains, ranges, io view, streaming."""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.blockdev import (
    BaseDevice,
    ChainDevice,
    DeviceIO,
    Extent,
    ExtentState,
    RangeDevice,
    RawFileDevice,
    first_difference,
    iter_blocks,
    rawfile,
    stream_copy,
)
from strata.blockdev.chain import ParentRef, attach_parents
from strata.blockdev.copy import WINDOW, page_aligned_buffer
from strata.blockdev.rawfile import PREALLOCATE_MIN, data_runs, pwrite_new
from strata.errors import CorruptImage, InvalidInput, StrataError, Unsupported
from strata.layer.blocks import BLOCK_SIZE, capture_disk
from strata.store import Store

SECTOR = 512


class MemLayer(BaseDevice):
    """A layer whose sectors are DATA, ZERO or UNALLOCATED, as a format driver reports them."""

    format_name = "mem"

    def __init__(self, content: bytes, states: list[int], parent: BaseDevice | None = None) -> None:
        self.content = bytearray(content)
        self.states = states
        self._size = len(content)
        self._parent = parent

    def _readinto(self, offset: int, view: memoryview) -> None:
        for i in range(len(view)):
            s = self.states[(offset + i) // SECTOR]
            view[i] = self.content[offset + i] if s == ExtentState.DATA else 0

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        end = offset + length
        pos = offset
        while pos < end:
            state = self.states[pos // SECTOR]
            nxt = min(end, (pos // SECTOR + 1) * SECTOR)
            while nxt < end and self.states[nxt // SECTOR] == state:
                nxt = min(end, nxt + SECTOR)
            yield Extent(pos, nxt - pos, ExtentState(state))
            pos = nxt


@st.composite
def chains(draw: st.DrawFn) -> tuple[ChainDevice, bytes]:
    """A chain of 1 to 3 layers and the flat content it must read as."""
    sectors = draw(st.integers(1, 24))
    depth = draw(st.integers(1, 3))
    concurrent = draw(st.booleans())  # bulk copies then keep two reads in flight
    flat = bytes(sectors * SECTOR)
    layer: BaseDevice | None = None
    for level in range(depth):
        states = draw(st.lists(st.sampled_from([0, 1, 2]), min_size=sectors, max_size=sectors))
        data = (
            np.random.default_rng(level)
            .integers(1, 256, sectors * SECTOR, dtype=np.uint8)
            .tobytes()
        )
        merged = bytearray(flat)
        for i, s in enumerate(states):
            part = slice(i * SECTOR, (i + 1) * SECTOR)
            if s == ExtentState.DATA:
                merged[part] = data[part]
            elif s == ExtentState.ZERO:
                merged[part] = bytes(SECTOR)
        flat = bytes(merged)
        layer = MemLayer(data, states, layer)
        layer.concurrent_reads = concurrent
    assert layer is not None
    return ChainDevice(layer), flat


@settings(max_examples=200, deadline=None)
@given(chains(), st.data())
def test_chain_reads_like_flat_model(case: tuple[ChainDevice, bytes], data: st.DataObject) -> None:
    dev, flat = case
    start = data.draw(st.integers(0, len(flat)))
    length = data.draw(st.integers(0, len(flat) - start))
    assert dev.read(start, length) == flat[start : start + length]
    covered = sum(e.length for e in dev.extents(start, length))
    assert covered == length
    for ext in dev.extents(0, len(flat)):
        if ext.state != ExtentState.DATA:
            assert flat[ext.offset : ext.end] == bytes(ext.length)


@settings(max_examples=100, deadline=None)
@given(chains(), st.sampled_from([512, 1024, 4096]))
def test_iter_blocks_rebuilds_the_disk(case: tuple[ChainDevice, bytes], block: int) -> None:
    dev, flat = case
    rebuilt = bytearray(len(flat))
    for blk in iter_blocks(dev, block, window=2048 if block <= 2048 else block):
        assert blk.offset % block == 0 and any(blk.data)
        rebuilt[blk.offset : blk.end] = blk.data
    assert bytes(rebuilt) == flat


@settings(max_examples=100, deadline=None)
@given(chains(), chains(), st.sampled_from([512, 2048]))
def test_iter_blocks_against_base_marks_exactly_the_changed_sectors(
    a: tuple[ChainDevice, bytes], b: tuple[ChainDevice, bytes], block: int
) -> None:
    (src, flat), (base, base_flat) = a, b
    base_flat = (base_flat + bytes(len(flat)))[: len(flat)]
    expected = {
        i for i in range(0, len(flat), SECTOR) if flat[i : i + SECTOR] != base_flat[i : i + SECTOR]
    }
    seen: set[int] = set()
    for blk in iter_blocks(src, block, base=base, window=block):
        assert blk.changed is not None
        bits = np.unpackbits(np.frombuffer(blk.changed, np.uint8), bitorder="little")
        for k in range(len(blk.data) // SECTOR):
            if bits[k]:
                seen.add(blk.offset + k * SECTOR)
        assert bytes(blk.data) == flat[blk.offset : blk.end]
    assert seen == expected


@settings(max_examples=100, deadline=None)
@given(chains(), chains())
def test_first_difference_matches_model(
    a: tuple[ChainDevice, bytes], b: tuple[ChainDevice, bytes]
) -> None:
    (da, fa), (db, fb) = a, b
    n = min(len(fa), len(fb))
    expected = next((i for i in range(n) if fa[i] != fb[i]), None)
    if expected is None:
        longer = fa if len(fa) > len(fb) else fb
        expected = next((i for i in range(n, len(longer)) if longer[i]), None)
    assert first_difference(da, db, window=1024) == expected


def test_range_device_slices_and_checks_bounds() -> None:
    data = bytes(range(256)) * 16
    base = MemLayer(data, [0] * 8)
    part = RangeDevice(base, 1024, 2048)
    assert part.read(0, 16) == data[1024:1040]
    assert [e.offset for e in part.extents()] == [0]
    with pytest.raises(InvalidInput):
        part.read(2000, 100)
    with pytest.raises(InvalidInput):
        RangeDevice(base, 4000, 200)


def test_device_io_is_a_file(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "f.raw").write_bytes(data)
    with RawFileDevice(str(tmp_path / "f.raw")) as dev:
        f = io.BufferedReader(DeviceIO(dev))
        f.seek(1234)
        assert f.read(100) == data[1234:1334]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]


def test_raw_zero_write_punches_hole(tmp_path: Path) -> None:
    path = tmp_path / "d.raw"
    with RawFileDevice.create(str(path), 4 << 20) as dev:
        dev.write(1 << 20, os.urandom(1 << 20))
        before = os.stat(path).st_blocks
        dev.write(1 << 20, bytes(1 << 20))
        assert dev.read(1 << 20, 1 << 20) == bytes(1 << 20)
    assert os.stat(path).st_blocks < before
    assert path.read_bytes() == bytes(4 << 20)


def _new_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)


def test_pwrite_new_allocates_only_what_it_writes(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    fd = _new_file(tmp_path / "new.img")
    try:
        pwrite_new(fd, 8 << 20, memoryview(data))  # past EOF: the file grows
        pwrite_new(fd, 4096, memoryview(b"below the threshold"))
        runs = [(lo, hi) for lo, hi, is_data in data_runs(fd, 0, 9 << 20) if is_data]
        allocated = os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)
    content = (tmp_path / "new.img").read_bytes()
    assert len(content) == 9 << 20
    assert content[8 << 20 :] == data
    assert content[4096 : 4096 + 19] == b"below the threshold"
    assert (8 << 20, 9 << 20) in runs
    assert all(hi <= 8192 or lo >= 8 << 20 for lo, hi in runs)
    assert allocated <= (1 << 20) + 8192  # what was written, not the 8 MiB in between


def test_pwrite_new_writes_where_allocation_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def refuse(*args: int) -> int:
        calls.append(args)
        return -1

    monkeypatch.setattr(rawfile, "_fallocate", lambda: refuse)
    data = os.urandom(PREALLOCATE_MIN)
    fd = _new_file(tmp_path / "refused.img")
    try:
        pwrite_new(fd, 512, memoryview(data))
    finally:
        os.close(fd)
    assert calls == [(fd, 0, 512, len(data))]
    assert (tmp_path / "refused.img").read_bytes() == bytes(512) + data


def test_stream_copy_refuses_smaller_destination(tmp_path: Path) -> None:
    src = MemLayer(bytes(4096), [1] * 8)
    with (
        RawFileDevice.create(str(tmp_path / "small.raw"), 1024) as dst,
        pytest.raises(InvalidInput),
    ):
        stream_copy(src, dst)


@settings(max_examples=200, deadline=None)
@given(
    chains(), st.lists(st.tuples(st.integers(0, 24 * SECTOR), st.integers(0, 3000)), max_size=12)
)
def test_readv_reads_like_readinto(
    case: tuple[ChainDevice, bytes], spans: list[tuple[int, int]]
) -> None:
    """Scattered pieces in one call give what each readinto gives (the flat model), through a
    chain and a range over it; a piece outside the device is refused."""
    dev, flat = case
    part = RangeDevice(dev, SECTOR // 2, len(flat) - SECTOR // 2)
    for target, model in ((dev, flat), (part, flat[SECTOR // 2 :])):
        fits = [(o, n) for o, n in spans if o + n <= len(model)]
        bufs = [bytearray(n) for _, n in fits]
        target.readv(list(zip((o for o, _ in fits), bufs, strict=True)))
        assert [bytes(b) for b in bufs] == [model[o : o + n] for o, n in fits]
        with pytest.raises(InvalidInput):
            target.readv([(len(model) - 1, bytearray(2))])


def test_raw_readv_through_holes(tmp_path: Path) -> None:
    path = tmp_path / "holes.raw"
    data = np.random.default_rng(3).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        f.truncate(1 << 20)
        f.seek(300_000)
        f.write(data)
    flat = path.read_bytes()
    spans = [(0, 512), (299_000, 4096), (300_000 + 65_000, 2000), ((1 << 20) - 7, 7)]
    with RawFileDevice(str(path)) as dev, ChainDevice(RawFileDevice(str(path))) as chain:
        for target in (dev, chain, RangeDevice(chain, 4096, (1 << 20) - 8192)):
            shift = 4096 if isinstance(target, RangeDevice) else 0
            fits = [
                (o - shift, n) for o, n in spans if o - shift >= 0 and o - shift + n <= target.size
            ]
            bufs = [bytearray(n) for _, n in fits]
            target.readv(list(zip((o for o, _ in fits), bufs, strict=True)))
            assert [bytes(b) for b in bufs] == [flat[o + shift : o + shift + n] for o, n in fits]
            with pytest.raises(InvalidInput):
                target.readv([(target.size, bytearray(1))])


def test_raw_readv_says_the_file_shrank(tmp_path: Path) -> None:
    """A piece the file no longer holds (it was cut short after opening) is refused with
    StrataError, not read as zeros; the pieces before it were read."""
    path = tmp_path / "shrinks.raw"
    path.write_bytes(bytes(range(256)) * 64)
    with RawFileDevice(str(path)) as dev:
        os.truncate(path, 8192)
        first, cut = bytearray(16), bytearray(512)
        with pytest.raises(StrataError, match="shrank"):
            dev.readv([(16, first), (8000, cut), (0, bytearray(1))])
        assert first == bytes(range(16, 32))


class _ReadintoOnly:
    """A BlockDevice with the protocol's readinto and nothing more (no readv)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.sector_size = data, len(data), 512

    def readinto(self, offset: int, buf: bytearray) -> int:
        buf[:] = self.data[offset : offset + len(buf)]
        return len(buf)


def test_range_readv_over_a_base_without_readv() -> None:
    data = np.random.default_rng(4).bytes(64 << 10)
    part = RangeDevice(_ReadintoOnly(data), 4096, 32 << 10)  # type: ignore[arg-type]
    bufs = [bytearray(100), bytearray(7000)]
    part.readv([(0, bufs[0]), (20_000, bufs[1])])
    assert bufs == [data[4096:4196], data[24_096:31_096]]


class _SlowReads(BaseDevice):
    """Non-zero content whose reads take a while and record how many ran at once."""

    def __init__(self, size: int, concurrent: bool, fail_at: int | None = None) -> None:
        self._size = size
        self.concurrent_reads = concurrent
        self.fail_at = fail_at
        self.active = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def _readinto(self, offset: int, view: memoryview) -> None:
        with self.lock:
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        try:
            time.sleep(0.01)
            if self.fail_at is not None and offset >= self.fail_at:
                raise StrataError(f"cannot read at {offset:#x}")
            view[:] = (offset // SECTOR % 255 + 1).to_bytes() * len(view)
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.parametrize(
    ("concurrent", "max_reads", "at_once"), [(False, 2, 1), (True, 2, 2), (True, 1, 1)]
)
def test_iter_blocks_reads_concurrently_only_devices_that_allow_it(
    concurrent: bool, max_reads: int, at_once: int
) -> None:
    dev = _SlowReads(16 * 4096, concurrent)
    blocks = iter_blocks(dev, 4096, window=4096, max_reads=max_reads)
    offsets = [blk.offset for blk in blocks]
    assert offsets == list(range(0, dev.size, 4096))  # in order, whatever the depth
    assert dev.most_at_once == at_once


def test_iter_blocks_refuses_no_reads_in_flight() -> None:
    with pytest.raises(InvalidInput, match="max_reads is 0"):
        next(iter_blocks(_SlowReads(4096, True), 4096, max_reads=0))


def test_a_capture_reads_one_window_at_a_time(tmp_path: Path) -> None:
    """The store's compression threads keep the cores busy: a capture adds no read thread."""
    dev = _SlowReads(3 * WINDOW, True)  # three windows: room for two reads at once
    with Store.init(tmp_path / "store") as store:
        capture = capture_disk(store, dev)
        assert capture.blocks["offset"].tolist() == list(range(0, dev.size, BLOCK_SIZE))
    assert dev.most_at_once == 1


def test_a_failed_read_ahead_stops_the_copy_and_its_threads() -> None:
    dev = _SlowReads(16 * 4096, True, fail_at=5 * 4096)
    seen = []
    with pytest.raises(StrataError, match="cannot read at 0x5000"):
        for blk in iter_blocks(dev, 4096, window=4096):
            seen.append(blk.offset)
    assert seen == list(range(0, 5 * 4096, 4096))
    assert not [t for t in threading.enumerate() if t.name.startswith("strata-readahead")]


def test_page_aligned_buffer_is_zeroed_writable_and_aligned() -> None:
    view = page_aligned_buffer(3 * mmap.PAGESIZE + 100)
    assert len(view) == 3 * mmap.PAGESIZE + 100 and not view.readonly and not any(view)
    view[-1] = 7
    assert ctypes.addressof(ctypes.c_char.from_buffer(view)) % mmap.PAGESIZE == 0


class _Layer(BaseDevice):
    """An empty layer at ``path`` whose parent is ``parent_path``."""

    def __init__(self, path: str, parent_path: str | None) -> None:
        self.path = path
        self._size = 1 << 20
        self.parent_ref = ParentRef([parent_path]) if parent_path else None

    def _readinto(self, offset: int, view: memoryview) -> None:
        view[:] = bytes(len(view))


def test_a_chain_looping_back_to_its_top_is_corrupt_before_the_top_opens_again(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.touch()
    b.touch()
    opened: list[str] = []

    def open_layer(path: str) -> _Layer:
        opened.append(path)
        return _Layer(path, str(a if path == str(b) else b))

    with pytest.raises(CorruptImage, match="corrupt parent chain: loops back to") as caught:
        attach_parents(_Layer(str(a), str(b)), open_layer, [str(tmp_path)])
    assert caught.value.path == str(b) and opened == [str(b)]


def test_a_chain_deeper_than_the_limit_is_unsupported(tmp_path: Path) -> None:
    """Layer i names layer i + 1 as its parent, the last none: 64 parents attach, 65 do not."""

    def chain(parents: int) -> BaseDevice:
        names = [str(tmp_path / f"l{i}.img") for i in range(parents + 1)]
        for name in names:
            Path(name).touch()

        def open_layer(path: str) -> _Layer:
            below = names.index(path) + 1
            return _Layer(path, names[below] if below < len(names) else None)

        return attach_parents(_Layer(names[0], names[1]), open_layer, [str(tmp_path)])

    assert len(ChainDevice(chain(64)).layers) == 65
    with pytest.raises(Unsupported, match="deeper than 64"):
        chain(65)
