"""VHDX images others wrote (qemu-img, qemu-io) and live logs, read by strata.

Every expected content comes from qemu: ``qemu-img convert -O raw`` after qemu wrote
or replayed the image (``qemu-img check -r all`` replays a log).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest

from strata.blockdev.base import ExtentState
from strata.blockdev.copy import first_difference
from strata.blockdev.rawfile import RawFileDevice
from strata.errors import CorruptImage, TruncatedImage
from strata.formats import registry
from strata.formats.vhdx import DRIVER
from strata.formats.vhdx import structs as S
from strata.formats.vhdx.layout import entry, new_guid
from strata.formats.vhdx.log import LogWrite
from strata.formats.vhdx.reader import VhdxDevice

from support.images import GiB, MiB, random_bytes, write_sparse_raw
from support.tools import qemu_compare, qemu_img, require, run
from support.vhdx_oracles import set_log_guid, sparse_copy, write_log_entries

SIZE = 4 * GiB + 512 * MiB  # past the first chunk (4 GiB at 512-byte sectors)

SMALL = 192 * MiB  # fixed images with block_state_zero=off cost their whole size to read


def qemu_io_writes(size: int) -> list[str]:
    writes = ["write -P 0x5a 3M 64k", "write -z 9M 1M", "write -P 0x31 100M 1536k",
              "write -z 101M 4k"]  # fmt: skip
    if size > 4 * GiB:
        writes.append("write -P 0x77 4194300k 8k")  # across the chunk boundary at 4 GiB
    return writes


def same_as_qemu(image: Path, tmp: Path) -> None:
    """strata reads ``image`` exactly as ``qemu-img convert -O raw`` does."""
    raw = tmp / (image.stem + ".qemu.raw")
    qemu_img("convert", "-f", "vhdx", "-O", "raw", image, raw)
    with registry.open_image(str(image)) as ours, RawFileDevice(str(raw)) as theirs:
        assert ours.size == theirs.size
        assert first_difference(ours, theirs) is None


@pytest.mark.parametrize(
    ("sub", "zero", "size"),
    [("dynamic", "on", SIZE), ("dynamic", "off", SIZE), ("fixed", "on", SIZE),
     ("fixed", "off", SMALL)],
)  # fmt: skip
def test_qemu_created_then_written(tmp_path: Path, sub: str, zero: str, size: int) -> None:
    img = tmp_path / "q.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", f"subformat={sub},block_state_zero={zero},"
             "block_size=1M", img, str(size))  # fmt: skip
    args = [require("qemu-io"), "-f", "vhdx"]
    for command in qemu_io_writes(size):
        args += ["-c", command]
    run([*args, img])
    assert DRIVER.check(str(img)) == []  # type: ignore[misc]
    same_as_qemu(img, tmp_path)
    with VhdxDevice(str(img)) as dev:
        states = {e.state for e in dev.extents(9 * MiB, MiB)}
        # qemu's "write -z" leaves a ZERO (or, for fixed with block_state_zero=off, zeroed
        # DATA) block; it must never read from a parent
        assert ExtentState.UNALLOCATED not in states


@pytest.mark.parametrize(
    ("sub", "zero", "size"), [("dynamic", "on", SIZE), ("fixed", "off", SMALL)]
)
def test_qemu_converted_then_written(tmp_path: Path, sub: str, zero: str, size: int) -> None:
    runs = [(0, MiB), (size // 2 - 3 * MiB, 5 * MiB), (size - 2 * MiB, MiB)]
    if size > 4 * GiB:
        runs.append((4 * GiB - 3 * MiB, 5 * MiB))
    src = write_sparse_raw(tmp_path / "src.raw", size, sorted(runs), seed=21)
    img = tmp_path / "c.vhdx"
    qemu_img("convert", "-O", "vhdx", "-o", f"subformat={sub},block_state_zero={zero}", src, img)
    with registry.open_image(str(img)) as ours, RawFileDevice(str(src)) as ref:
        assert first_difference(ours, ref) is None
    run([require("qemu-io"), "-f", "vhdx", "-c", f"write -P 0x42 {size // 2} 128k", img])
    same_as_qemu(img, tmp_path)


# --- live logs ---------------------------------------------------------------------------------


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    src = write_sparse_raw(tmp_path / "b.raw", 64 * MiB, [(0, 2 * MiB)], seed=3)
    img = tmp_path / "b.vhdx"
    registry.get("vhdx").write  # noqa: B018 - the driver is registered
    from strata.ops import disk as ops

    ops.convert(ops.OpenSpec(str(src)), str(img), "vhdx", ["block_size=1M"])
    return img


def _layout(img: Path) -> tuple[int, int, bytes]:
    with VhdxDevice(str(img)) as dev:
        bat_offset = dev._bat_region.file_offset
    with open(img, "rb") as f:
        bat = os.pread(f.fileno(), 4096, bat_offset)
    return bat_offset, os.path.getsize(img), bat


def _bat_sector(bat: bytes, changes: dict[int, int]) -> bytes:
    sector = bytearray(bat)
    for index, value in changes.items():
        sector[index * 8 : index * 8 + 8] = value.to_bytes(8, "little")
    return bytes(sector)


def _live_log(img: Path) -> bytes:
    """Two entries: the first allocates block 5, the second also zeroes block 0 and part of 5.

    The payload for block 5 is appended first, as a writer must before logging the BAT.
    """
    bat_offset, size, bat = _layout(img)
    block5 = -(-size // MiB) * MiB
    with open(img, "r+b") as f:
        os.pwrite(f.fileno(), random_bytes(MiB, 77), block5)
    v1 = _bat_sector(bat, {5: entry(S.PAYLOAD_FULLY_PRESENT, block5)})
    v2 = _bat_sector(bat, {5: entry(S.PAYLOAD_FULLY_PRESENT, block5), 0: S.PAYLOAD_ZERO})
    guid = new_guid()
    set_log_guid(img, guid)
    write_log_entries(img, guid, [
        (0, 5, 0, [LogWrite(bat_offset, 4096, v1)]),
        (8192, 6, 0, [LogWrite(bat_offset, 4096, v2), LogWrite(block5 + 64 * 1024, 8192)]),
    ])  # fmt: skip
    return guid


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_live_log_read_only_matches_qemu_replay(base_image: Path, tmp_path: Path) -> None:
    _live_log(base_image)
    refused = qemu_img("info", "-f", "vhdx", base_image, check=False)
    assert refused.returncode != 0 and "log that needs to be replayed" in refused.stderr
    replayed = sparse_copy(base_image, tmp_path / "qemu.vhdx")
    assert qemu_img("check", "-r", "all", "-f", "vhdx", replayed, check=False).returncode == 0
    raw = tmp_path / "qemu.raw"
    qemu_img("convert", "-f", "vhdx", "-O", "raw", replayed, raw)
    before = _digest(base_image)
    with VhdxDevice(str(base_image)) as dev, RawFileDevice(str(raw)) as want:
        assert dev.log_replayed == 2
        assert dev.read(0, MiB) == bytes(MiB)  # block 0 became ZERO through the log
        assert first_difference(dev, want) is None
    assert _digest(base_image) == before, "a read-only open must not touch the file"


def test_live_log_writable_open_replays_into_the_file(base_image: Path, tmp_path: Path):
    _live_log(base_image)
    replayed = sparse_copy(base_image, tmp_path / "qemu.vhdx")
    qemu_img("check", "-r", "all", "-f", "vhdx", replayed)
    raw = tmp_path / "qemu.raw"
    qemu_img("convert", "-f", "vhdx", "-O", "raw", replayed, raw)
    with VhdxDevice(str(base_image), writable=True) as dev:
        assert dev.log_replayed == 2
    with VhdxDevice(str(base_image)) as dev:
        assert dev.log_replayed == 0 and dev.header.log_guid == S.ZERO_GUID
    assert qemu_img("check", "-f", "vhdx", base_image, check=False).returncode == 0
    assert qemu_compare(raw, base_image, "vhdx") == 0


def test_log_entry_wrapping_the_ring(base_image: Path, tmp_path: Path) -> None:
    bat_offset, _, bat = _layout(base_image)
    v1 = _bat_sector(bat, {3: S.PAYLOAD_ZERO, 1: S.PAYLOAD_ZERO})
    guid = new_guid()
    set_log_guid(base_image, guid)
    last = MiB - 4096  # header sector at the end of the log, its data sector at the start
    write_log_entries(base_image, guid, [(last, 9, last, [LogWrite(bat_offset, 4096, v1)])])
    replayed = sparse_copy(base_image, tmp_path / "qemu.vhdx")
    qemu_img("check", "-r", "all", "-f", "vhdx", replayed)
    same = tmp_path / "qemu.raw"
    qemu_img("convert", "-f", "vhdx", "-O", "raw", replayed, same)
    with VhdxDevice(str(base_image)) as dev, RawFileDevice(str(same)) as want:
        assert dev.log_replayed == 1
        assert first_difference(dev, want) is None
        assert dev.read(MiB, MiB) == bytes(MiB)


def _corrupt_log_byte(img: Path, at: int) -> None:
    with VhdxDevice(str(img)) as dev:
        log_offset = dev.header.log_offset
    with open(img, "r+b") as f:
        byte = os.pread(f.fileno(), 1, log_offset + at)
        os.pwrite(f.fileno(), bytes([byte[0] ^ 0xFF]), log_offset + at)


def test_corrupt_log_is_refused(base_image: Path) -> None:
    bat_offset, _, bat = _layout(base_image)
    guid = new_guid()
    set_log_guid(base_image, guid)
    write_log_entries(base_image, guid, [(0, 3, 0, [LogWrite(bat_offset, 4096, bat)])])
    with VhdxDevice(str(base_image)) as dev:
        assert dev.log_replayed == 1
    _corrupt_log_byte(base_image, 4096 + 100)  # inside the data sector: the CRC fails
    with pytest.raises(CorruptImage, match="no valid, complete sequence"):
        VhdxDevice(str(base_image))
    problems = DRIVER.check(str(base_image))  # type: ignore[misc]
    assert [p.structure for p in problems] == ["log"]


def test_log_whose_tail_is_missing_is_refused(base_image: Path) -> None:
    bat_offset, _, bat = _layout(base_image)
    guid = new_guid()
    set_log_guid(base_image, guid)
    # the head says its sequence starts at 64 KiB, where no entry is
    write_log_entries(base_image, guid, [(8192, 4, 65536, [LogWrite(bat_offset, 4096, bat)])])
    with pytest.raises(CorruptImage, match="log"):
        VhdxDevice(str(base_image))


def test_log_of_a_truncated_file_is_refused(base_image: Path) -> None:
    bat_offset, size, bat = _layout(base_image)
    guid = new_guid()
    set_log_guid(base_image, guid)
    write_log_entries(base_image, guid, [(0, 3, 0, [LogWrite(bat_offset, 4096, bat)])],
                      flushed=size + 8 * MiB)  # fmt: skip
    with pytest.raises(TruncatedImage, match="FlushedFileOffset"):
        VhdxDevice(str(base_image))


def test_qemu_interrupted_after_setting_log_guid(tmp_path: Path) -> None:
    """qemu-io stopped (an injected I/O error) between its header update and its first entry."""
    img = tmp_path / "q.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", img, "64M")
    with VhdxDevice(str(img)) as dev:
        bat = dev._bat_region.file_offset
    conf = tmp_path / "blkdebug.conf"
    conf.write_text(f'[inject-error]\nevent = "pwritev"\nerrno = "5"\nsector = "{bat // 512}"\n')
    opts = f"driver=vhdx,file.driver=blkdebug,file.config={conf},file.image.filename={img}"
    proc = run([require("qemu-io"), "--image-opts", "-c", "write -P 0x5a 3M 64k", opts], False)
    assert "failed" in proc.stdout + proc.stderr
    with VhdxDevice(str(img)) as dev:
        assert dev.header.log_guid != S.ZERO_GUID and dev.log_replayed == 0
    problems = DRIVER.check(str(img))  # type: ignore[misc]
    assert [p.severity for p in problems] == ["warning"]
    same_as_qemu(img, tmp_path)


def _stop_at_write(conf: Path, n: int) -> None:
    """blkdebug: count qemu's writes with states and fail the n-th (and every later) one."""
    rules = [
        f'[set-state]\nevent = "pwritev"\nstate = "{i}"\nnew_state = "{i + 1}"\n'
        for i in range(1, n)
    ]
    rules.append(f'[inject-error]\nevent = "pwritev"\nstate = "{n}"\nerrno = "5"\n')
    conf.write_text("\n".join(rules))


def test_qemu_stopped_at_every_write(tmp_path: Path) -> None:
    """qemu-io as the real writer, stopped at each of its writes in turn (one of them
    leaves a flushed but unapplied log entry); strata must read what qemu shows after
    ``qemu-img check -r all``."""
    qemu_io = require("qemu-io")
    live = 0
    for n in range(1, 13):
        img, conf = tmp_path / f"s{n}.vhdx", tmp_path / f"s{n}.conf"
        qemu_img("create", "-f", "vhdx", "-o", "block_size=1M", img, "64M")
        _stop_at_write(conf, n)
        opts = f"driver=vhdx,file.driver=blkdebug,file.config={conf},file.image.filename={img}"
        run([qemu_io, "--image-opts", "-c", "write -P 0x5a 3M 64k", opts], False)
        with VhdxDevice(str(img)) as dev:
            live += dev.log_replayed > 0
        replayed = sparse_copy(img, tmp_path / f"r{n}.vhdx")
        qemu_img("check", "-r", "all", "-f", "vhdx", replayed, check=False)
        raw = tmp_path / f"r{n}.raw"
        qemu_img("convert", "-f", "vhdx", "-O", "raw", replayed, raw)
        with registry.open_image(str(img)) as ours, RawFileDevice(str(raw)) as theirs:
            assert first_difference(ours, theirs) is None, n
    assert live >= 1, "no stop left a live log entry"


# --- random reads of a partially present child against a flat reference ---------------------

CHILD = 48 * MiB


@pytest.fixture(scope="module")
def partial_child(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytearray]:
    import numpy as np

    from strata.ops import disk as ops

    tmp = tmp_path_factory.mktemp("partial")
    runs = [(0, 5 * MiB), (20 * MiB + 512, 3 * MiB), (40 * MiB, 8 * MiB)]
    parent_raw = write_sparse_raw(tmp / "p.raw", CHILD, runs, seed=31)
    ops.convert(ops.OpenSpec(str(parent_raw)), str(tmp / "p.vhdx"), "vhdx", ["block_size=1M"])
    ops.create(str(tmp / "c.vhdx"), "vhdx", None, [], ops.OpenSpec(str(tmp / "p.vhdx")))
    reference = bytearray(parent_raw.read_bytes())
    rng = np.random.default_rng(5)
    with registry.open_image(str(tmp / "c.vhdx"), writable=True) as disk:
        for _ in range(60):
            length = int(rng.integers(1, 300_000))
            offset = int(rng.integers(0, CHILD - length))
            data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
            disk.write(offset, data)
            reference[offset : offset + length] = data
    return tmp / "c.vhdx", reference


def test_random_reads_of_a_partial_child(partial_child: tuple[Path, bytearray]) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    path, reference = partial_child
    disk = registry.open_image(str(path))

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, CHILD - 1), st.integers(1, 3 * MiB))
    def check(offset: int, length: int) -> None:
        length = min(length, CHILD - offset)
        assert disk.read(offset, length) == bytes(reference[offset : offset + length])
        runs = list(disk.top.extents(offset, length))
        assert runs[0].offset == offset and sum(e.length for e in runs) == length
        assert all(a.end == b.offset for a, b in itertools.pairwise(runs))

    try:
        check()
        states = {e.state for e in disk.top.extents()}
        assert {ExtentState.DATA, ExtentState.UNALLOCATED} <= states  # sector-level mix
        assert DRIVER.check(str(path)) == []  # type: ignore[misc]
    finally:
        disk.close()
