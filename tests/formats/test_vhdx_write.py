"""VHDX images strata writes, checked by qemu-img and libvhdi (pyvhdi).

The 10 GiB disks carry data across chunk boundaries (a chunk is 4 GiB at 512-byte
sectors) and in the third chunk, where a wrong sector-bitmap interleave shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev.copy import first_difference
from strata.blockdev.rawfile import RawFileDevice
from strata.errors import IntegrityError, InvalidInput, NotFound, PathOutsideAllowed
from strata.formats import registry
from strata.formats.vhdx import DRIVER
from strata.formats.vhdx.reader import VhdxDevice
from strata.ops import disk as ops

from support.images import GiB, MiB, random_bytes, write_sparse_raw
from support.tools import qemu_compare, qemu_img, require, strata
from support.vhdx_oracles import (
    assert_pyvhdi_matches,
    assert_qemu_matches,
    probe_ranges,
    sparse_copy,
)

SIZE = 10 * GiB
RUNS = [
    (0, MiB),
    (4 * GiB - MiB - 4096, 2 * MiB + 8192),  # across the chunk 0 / chunk 1 boundary
    (8 * GiB - 512 * 1024, MiB),  # across chunk 1 / chunk 2
    (9 * GiB + 3 * MiB + 4096, 3 * MiB),  # inside the third chunk, not block aligned
    (SIZE - MiB, MiB),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sparse_raw(tmp_path_factory.mktemp("vhdx") / "src.raw", SIZE, RUNS, seed=4)


def convert(src: Path, out: Path, *options: str, backing: Path | None = None) -> None:
    spec = ops.OpenSpec(str(backing)) if backing else None
    ops.convert(ops.OpenSpec(str(src)), str(out), "vhdx", list(options), spec)


def assert_strata_clean(path: Path) -> None:
    problems = DRIVER.check(str(path))  # type: ignore[misc]
    assert problems == [], problems


# A whole-disk qemu-img compare reads all 10 GiB (6-40 s on this shared machine); one
# combination gets one, the others are compared by qemu on slices around every run,
# chunk and block edge plus random samples.
WHOLE_COMPARE = {("1M", "dynamic")}

MATRIX = [
    (block, sector, sub)
    for block in ("1M", "32M", "256M")
    for sector in (512, 4096)
    for sub in ("fixed", "dynamic")
]


@pytest.mark.parametrize(("block", "sector", "sub"), MATRIX)
def test_10g_matrix_against_qemu_and_libvhdi(
    source: Path, tmp_path: Path, block: str, sector: int, sub: str
) -> None:
    out = tmp_path / "out.vhdx"
    convert(source, out, f"subformat={sub},block_size={block},logical_sector_size={sector}")
    assert_strata_clean(out)
    assert os.stat(out).st_blocks * 512 < 64 * MiB, "the image must stay sparse"
    ranges = probe_ranges(SIZE, RUNS, int(block[:-1]) * MiB)
    if sector == 512:
        check = qemu_img("check", "--output=json", "-f", "vhdx", out, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        if (block, sub) in WHOLE_COMPARE:
            assert qemu_compare(source, out, "vhdx") == 0
        else:
            assert_qemu_matches(out, source, ranges)
    else:
        # qemu 7.2 refuses VHDX with 4096-byte logical sectors (ENOTSUP): libvhdi is the oracle.
        assert qemu_img("info", "-f", "vhdx", out, check=False).returncode != 0
    if sub == "fixed":
        # libvhdi reads a fixed VHDX's BAT without the sector-bitmap interleave, so it
        # misreads every fixed VHDX past the first chunk -- qemu-img's own too
        # (test_libvhdi_misreads_qemu_fixed_past_first_chunk); qemu is the oracle there.
        ranges = [(o, n) for o, n in ranges if o + n <= sector * (1 << 23)]
    assert_pyvhdi_matches([out], source, ranges)
    with VhdxDevice(str(out)) as dev:
        assert dev.sector_size == sector
        assert dev.info()["subformat"] == sub


def test_libvhdi_misreads_qemu_fixed_past_first_chunk(source: Path, tmp_path: Path) -> None:
    """Why fixed images are compared with libvhdi only inside the first chunk."""
    pyvhdi = pytest.importorskip("pyvhdi")
    theirs = tmp_path / "qemu-fixed.vhdx"
    qemu_img("convert", "-O", "vhdx", "-o", "subformat=fixed,block_size=1M", source, theirs)
    f = pyvhdi.file()
    f.open(str(theirs))
    offset, length = RUNS[1]
    with open(source, "rb") as ref:
        want = os.pread(ref.fileno(), length, offset)
    assert f.read_buffer_at_offset(length, offset) != want
    f.close()
    with VhdxDevice(str(theirs)) as dev:  # strata reads qemu's fixed image right
        assert dev.read(offset, length) == want


def test_4k_sectors_third_chunk(tmp_path: Path) -> None:
    """At 4096-byte sectors a chunk spans 32 GiB: put data in the third one."""
    size = 72 * GiB
    runs = [(0, MiB), (32 * GiB - MiB, 2 * MiB), (64 * GiB + 5 * MiB + 4096, MiB),
            (size - MiB, MiB)]  # fmt: skip
    src = write_sparse_raw(tmp_path / "src.raw", size, runs, seed=5)
    out = tmp_path / "out.vhdx"
    convert(src, out, "block_size=1M,logical_sector_size=4096")
    assert_strata_clean(out)
    assert_pyvhdi_matches([out], src, probe_ranges(size, runs, MiB))


def test_cli_convert_and_info(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.vhdx"
    proc = strata("disk", "convert", "-O", "vhdx", "-o", "block_size=8M", source, out)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(qemu_img("info", "--output=json", out).stdout)
    assert info["format"] == "vhdx" and info["virtual-size"] == SIZE
    assert info["cluster-size"] == 8 * MiB
    ours = strata("disk", "check", out)
    assert ours.returncode == 0 and "no problems" in ours.stdout


# --- differencing chains ------------------------------------------------------------------------


CHAIN_SIZE = 9 * GiB  # chunks 0-2; the children change nothing in chunk 2


def _layers(tmp: Path) -> list[Path]:
    """Three raw states of one disk, each a few changes away from the previous."""
    base_runs = [(0, 3 * MiB), (4 * GiB - MiB, 2 * MiB), (5 * GiB, MiB), (8 * GiB + MiB, MiB)]
    first = [(MiB + 512, random_bytes(4096, 1)), (4 * GiB + 7 * 512, random_bytes(1536, 2)),
             (5 * GiB + 32 * MiB, random_bytes(3 * MiB, 3))]  # fmt: skip
    second = [(2 * MiB + 1024, bytes(2048)), (4 * GiB - 512, random_bytes(1024, 4)),
              (5 * GiB + 33 * MiB, bytes(MiB))]  # fmt: skip
    layers = []
    for i, patches in enumerate([[], first, first + second]):
        raw = write_sparse_raw(tmp / f"l{i}.raw", CHAIN_SIZE, base_runs, seed=11)
        _patch(raw, patches)
        layers.append(raw)
    return layers


def _patch(path: Path, writes: list[tuple[int, bytes]]) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        for offset, data in writes:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    tmp = tmp_path_factory.mktemp("chain")
    raws = _layers(tmp)
    images = [tmp / "l0.vhdx", tmp / "l1.vhdx", tmp / "l2.vhdx"]
    convert(raws[0], images[0], "block_size=1M")
    convert(raws[1], images[1], backing=images[0])
    convert(raws[2], images[2], backing=images[1])
    return raws, images


def test_chain_depth3_libvhdi(chain: tuple[list[Path], list[Path]]) -> None:
    raws, images = chain
    runs = [(0, 3 * MiB), (4 * GiB - MiB, 2 * MiB), (5 * GiB, 40 * MiB), (8 * GiB, 3 * MiB)]
    for depth in range(3):
        assert_strata_clean(images[depth])
        stack = list(reversed(images[: depth + 1]))
        assert_pyvhdi_matches(stack, raws[depth], probe_ranges(CHAIN_SIZE, runs, 32 * MiB))


def test_child_changing_only_a_later_chunk_libvhdi(tmp_path: Path) -> None:
    """Chunks the child never touched still read from the parent in libvhdi."""
    size = 4 * GiB + 32 * MiB
    runs = [(0, MiB), (4 * GiB + MiB, MiB)]
    base = write_sparse_raw(tmp_path / "b.raw", size, runs, seed=12)
    top = write_sparse_raw(tmp_path / "t.raw", size, runs, seed=12)
    _patch(top, [(4 * GiB + 4096, random_bytes(4096, 6))])  # chunk 1 only
    convert(base, tmp_path / "b.vhdx")
    convert(top, tmp_path / "t.vhdx", backing=tmp_path / "b.vhdx")
    assert_strata_clean(tmp_path / "t.vhdx")
    chain = [tmp_path / "t.vhdx", tmp_path / "b.vhdx"]
    assert_pyvhdi_matches(chain, top, probe_ranges(size, [*runs, (4 * GiB, 8192)], 32 * MiB))


def test_chain_depth3_strata(chain: tuple[list[Path], list[Path]]) -> None:
    raws, images = chain
    with registry.open_image(str(images[2])) as disk, RawFileDevice(str(raws[2])) as ref:
        assert [getattr(layer, "path", None) for layer in disk.layers] == [
            str(images[2]), str(images[1].resolve()), str(images[0].resolve())]  # fmt: skip
        assert first_difference(disk, ref) is None
    child = VhdxDevice(str(images[2]))
    try:
        # only what differs is stored: the child holds a few MiB, not the layer below
        data = sum(e.length for e in child.extents() if e.state.name == "DATA")
        assert data <= 2 * MiB
        assert child.info()["subformat"] == "differencing"
    finally:
        child.close()


def test_wrong_linkage(chain: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    _, images = chain
    for img in images:
        sparse_copy(img, tmp_path / img.name)
    mid, top = tmp_path / images[1].name, tmp_path / images[2].name
    with VhdxDevice(str(mid), writable=True) as dev:
        dev.write(0, b"x" * 512)  # a write changes the data-write GUID children link to
    with pytest.raises(IntegrityError, match="parent_linkage"):
        registry.open_image(str(top))
    proc = strata("disk", "info", top)
    assert proc.returncode == IntegrityError.exit_code and "parent_linkage" in proc.stderr


def test_missing_parent(tmp_path: Path) -> None:
    parent, child = tmp_path / "p.vhdx", tmp_path / "c.vhdx"
    ops.create(str(parent), "vhdx", 64 * MiB, [])
    ops.create(str(child), "vhdx", None, [], ops.OpenSpec(str(parent)))
    parent.unlink()
    with pytest.raises(NotFound, match=r"p\.vhdx"):
        registry.open_image(str(child))
    proc = strata("disk", "info", child)
    assert proc.returncode == NotFound.exit_code and "p.vhdx" in proc.stderr


@pytest.mark.parametrize("parent_sector", [512, 4096])
def test_child_sector_size_other_than_its_parents_is_refused(
    tmp_path: Path, parent_sector: int
) -> None:
    """A child reads its parent's sectors, so it takes the parent's sector size; asked for
    another, it took the parent's silently.  Now that is refused and nothing is written;
    the same size, or none, is taken."""
    parent, child = tmp_path / "p.vhdx", tmp_path / "c.vhdx"
    ops.create(str(parent), "vhdx", 64 * MiB, [f"logical_sector_size={parent_sector}"])
    other = 4096 if parent_sector == 512 else 512
    args = ["disk", "create", "-f", "vhdx", "--parent", parent, child]
    proc = strata(*args[:-1], "-o", f"logical_sector_size={other}", child)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert f"logical_sector_size={other}" in proc.stderr and str(parent_sector) in proc.stderr
    assert not child.exists()
    for given in ([], ["-o", f"logical_sector_size={parent_sector}"]):
        assert strata(*args[:-1], *given, child).returncode == 0
        assert VhdxDevice(str(child)).sector_size == parent_sector
        child.unlink()


def test_zero_reads_zero_not_present_inherits(chain: tuple[list[Path], list[Path]], tmp_path):
    """[MS-VHDX] 2.5.1.1: ZERO must read zeros even over parent data; NOT_PRESENT inherits."""
    raws, images = chain
    child = tmp_path / "z.vhdx"
    proc = strata("disk", "convert", "-O", "vhdx", "-B", images[0], raws[1], child)
    assert proc.returncode == 0, proc.stderr
    with VhdxDevice(str(child)) as dev:
        bat, block = dev._bat_region.file_offset, dev.block_size
    index_of_block_1 = 1  # block 0 holds the child's changes; block 1 is NOT_PRESENT
    with open(child, "r+b") as f:
        os.pwrite(f.fileno(), (2).to_bytes(8, "little"), bat)  # block 0 -> PAYLOAD_ZERO
    allowed = [str(tmp_path), str(images[0].parent)]
    with (
        registry.open_image(str(child), allowed_dirs=allowed) as disk,
        open(raws[0], "rb") as parent,
    ):
        assert disk.read(0, block) == bytes(block)
        assert os.pread(parent.fileno(), MiB, 0) != bytes(MiB)  # the parent has data there
        assert {e.state.name for e in disk.top.extents(0, block)} == {"ZERO"}
        ext = next(disk.top.extents(index_of_block_1 * block, block))
        assert ext.state.name == "UNALLOCATED"
        inherited = disk.read(4 * GiB - MiB, MiB)
        assert inherited == os.pread(parent.fileno(), MiB, 4 * GiB - MiB)
    # libvhdi agrees on the inherited block (it reads ZERO blocks from the parent: not used)
    assert_pyvhdi_matches([child, images[0]], raws[0], [(4 * GiB - MiB, MiB)])


def test_parent_outside_allowed_dirs(chain: tuple[list[Path], list[Path]], tmp_path: Path):
    _, images = chain
    (tmp_path / "a").mkdir()
    child = tmp_path / "a" / "c.vhdx"
    ops.create(str(child), "vhdx", None, [], ops.OpenSpec(str(images[0])))
    with pytest.raises(PathOutsideAllowed):
        registry.open_image(str(child))


# --- create and random writes ------------------------------------------------------------------


def _random_writes(size: int, count: int, seed: int) -> list[tuple[int, bytes]]:
    rng = np.random.default_rng(seed)
    writes = []
    for _ in range(count):
        length = int(rng.integers(1, 3 * MiB))
        offset = int(rng.integers(0, size - length))
        writes.append((offset, rng.integers(0, 256, length, dtype=np.uint8).tobytes()))
    writes.append((0, bytes(4096)))  # a zero write into an allocated block
    return writes


@pytest.mark.parametrize(("sub", "size"), [("dynamic", 4 * GiB + 8 * MiB), ("fixed", 96 * MiB)])
def test_random_writes_against_qemu(tmp_path: Path, sub: str, size: int) -> None:
    img, ref = tmp_path / "w.vhdx", tmp_path / "ref.raw"
    ops.create(str(img), "vhdx", size, [f"subformat={sub},block_size=1M"])
    write_sparse_raw(ref, size, [])
    writes = [*_random_writes(size, 20, seed=3), (size - 700 - 4 * MiB, random_bytes(5000, 9))]
    before = VhdxDevice(str(img)).data_write_guid
    with VhdxDevice(str(img), writable=True) as dev, open(ref, "r+b") as f:
        for offset, data in writes:
            dev.write(offset, data)
            os.pwrite(f.fileno(), data, offset)
        after = dev.data_write_guid
    assert after != before
    assert_strata_clean(img)
    assert qemu_img("check", "-f", "vhdx", img, check=False).returncode == 0
    assert qemu_compare(ref, img, "vhdx") == 0


def test_child_random_writes_libvhdi(chain: tuple[list[Path], list[Path]], tmp_path: Path):
    raws, images = chain
    parent = tmp_path / "p.vhdx"
    sparse_copy(images[0], parent)
    child, ref = tmp_path / "c.vhdx", tmp_path / "ref.raw"
    proc = strata("disk", "create", "-O", "vhdx", "--parent", parent, child)
    assert proc.returncode == 0, proc.stderr
    sparse_copy(raws[0], ref)
    writes = [*_random_writes(CHAIN_SIZE, 12, seed=8), (4 * GiB - 1000, random_bytes(3000, 5))]
    with registry.open_image(str(child), writable=True) as disk, open(ref, "r+b") as f:
        for offset, data in writes:
            disk.write(offset, data)
            os.pwrite(f.fileno(), data, offset)
    assert_strata_clean(child)
    runs = [(o, len(d)) for o, d in writes] + [(0, 3 * MiB), (5 * GiB, MiB)]
    assert_pyvhdi_matches([child, parent], ref, probe_ranges(CHAIN_SIZE, runs, 32 * MiB))
    with registry.open_image(str(child)) as disk, RawFileDevice(str(ref)) as want:
        assert first_difference(disk, want) is None


# --- a kill at any moment ------------------------------------------------------------------------


def _killed_after(img: Path, calls: int, writes: list[tuple[int, bytes]]) -> None:
    """Run the writes in a child that SIGKILLs itself at its ``calls``-th file update."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _child_writes(img, calls, writes)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _child_writes(img: Path, calls: int, writes: list[tuple[int, bytes]]) -> None:
    import signal

    from strata.formats.vhdx import layout, reader

    count = [0]

    def counted(fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kw):  # type: ignore[no-untyped-def]
            count[0] += 1
            if count[0] == calls:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kw)

        return wrapper

    reader.pwrite_all = counted(reader.pwrite_all)
    layout.os.pwrite = counted(os.pwrite)  # type: ignore[attr-defined]
    reader.os.ftruncate = counted(os.ftruncate)  # type: ignore[attr-defined]
    with VhdxDevice(str(img), writable=True) as dev:
        for offset, data in writes:
            dev.write(offset, data)


def test_kill_at_every_step_leaves_an_openable_image(tmp_path: Path) -> None:
    require("qemu-img")
    pristine = tmp_path / "p.vhdx"
    ops.create(str(pristine), "vhdx", 16 * MiB, ["block_size=1M"])
    with VhdxDevice(str(pristine), writable=True) as dev:
        dev.write(0, random_bytes(MiB, 1))
    old = VhdxDevice(str(pristine)).read(0, 16 * MiB)
    writes = [(512, random_bytes(4096, 2)), (5 * MiB + 100, random_bytes(2 * MiB, 3)),
              (14 * MiB, random_bytes(512, 4))]  # fmt: skip
    new = bytearray(old)
    for offset, data in writes:
        new[offset : offset + len(data)] = data
    for calls in range(1, 40):
        img = tmp_path / f"k{calls}.vhdx"
        sparse_copy(pristine, img)
        _killed_after(img, calls, writes)
        assert qemu_img("check", "-f", "vhdx", img, check=False).returncode == 0, calls
        with VhdxDevice(str(img)) as dev:
            got = np.frombuffer(dev.read(0, 16 * MiB), np.uint8).reshape(-1, 512)
        o = np.frombuffer(bytes(old), np.uint8).reshape(-1, 512)
        n = np.frombuffer(bytes(new), np.uint8).reshape(-1, 512)
        assert ((got == o).all(axis=1) | (got == n).all(axis=1)).all(), calls
        img.unlink()
        if (got == n).all():
            break
    else:
        pytest.fail("the writes never completed")
