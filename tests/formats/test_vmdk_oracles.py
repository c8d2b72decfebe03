"""Issue 5 acceptance: strata's VMDKs checked by qemu-img and libvmdk; qemu's read by strata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice, first_difference
from strata.formats import registry
from strata.ops import disk as ops

from support.images import GiB, MiB, write_sparse_raw
from support.tools import qemu_compare, qemu_img, require, run, strata
from support.vmdk_helpers import (
    SUBFORMATS,
    grain_table_entries,
    pyvmdk_handle,
    pyvmdk_windows,
    reference,
    walk_stream,
)

SIZES = {"64M": 64 * MiB, "3G1M": 3 * GiB + MiB, "10G": 10 * GiB}


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vmdk-refs")
    return {name: reference(root / f"{name}.raw", size) for name, size in SIZES.items()}


def convert(src: Path, dst: Path, *opts: str, backing: Path | None = None) -> None:
    spec = ops.OpenSpec(str(backing)) if backing else None
    ops.convert(ops.OpenSpec(str(src)), str(dst), "vmdk", list(opts), spec)


def qemu_check_clean(path: Path) -> None:
    proc = qemu_img("check", "--output=json", "-f", "vmdk", path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert not report.get("corruptions") and not report.get("leaks"), report


def assert_pyvmdk_equal(image: Path, ref: Path, size: int) -> None:
    handle = pyvmdk_handle(image)
    try:
        assert handle.get_media_size() == size
        windows = [(0, size)] if size <= 64 * MiB else pyvmdk_windows(size)
        with open(ref, "rb") as f:
            for offset, length in windows:
                f.seek(offset)
                expected = f.read(length)
                got = handle.read_buffer_at_offset(length, offset)
                assert got == expected, f"pyvmdk differs in {offset:#x}+{length:#x}"
    finally:
        handle.close()


@pytest.mark.parametrize("size_name", list(SIZES))
@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_strata_writes_qemu_and_libvmdk_read(
    refs: dict[str, Path], tmp_path: Path, subformat: str, size_name: str
) -> None:
    require("qemu-img")
    ref, size = refs[size_name], SIZES[size_name]
    out = tmp_path / "out.vmdk"
    convert(ref, out, f"subformat={subformat},adapter_type=lsilogic")
    assert qemu_compare(ref, out, "vmdk") == 0
    qemu_check_clean(out)
    info = json.loads(qemu_img("info", "--output=json", "-f", "vmdk", out).stdout)
    assert info["virtual-size"] == size
    assert info["format-specific"]["data"]["create-type"] == subformat
    assert_pyvmdk_equal(out, ref, size)
    assert 'ddb.adapterType = "lsilogic"' in _descriptor_text(out)
    assert not ops.check(ops.OpenSpec(str(out)))


def _descriptor_text(path: Path) -> str:
    head = path.read_bytes()[:16384] if path.stat().st_size < 1 << 20 else _head(path)
    return head.decode("latin-1")


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16384)


def test_stream_layout_is_canonical(refs: dict[str, Path], tmp_path: Path) -> None:
    """Markers, GT after its grains, GD, footer and end-of-stream, walked without strata."""
    out = tmp_path / "s.vmdk"
    convert(refs["3G1M"], out, "subformat=streamOptimized")
    walk = walk_stream(out)
    h, f = walk.header, walk.footer
    assert h["gd_offset"] == 0xFFFF_FFFF_FFFF_FFFF and h["version"] == 3
    assert h["flags"] & (1 << 16) and h["flags"] & (1 << 17) and h["compress"] == 1
    assert walk.markers[-3:] == ["gd", "footer", "eos"]
    assert walk.eos_at + 512 == walk.size
    assert f["gd_offset"] == walk.gd_sector and f["capacity"] == h["capacity"]
    assert walk.markers.count("grain") == len(walk.grains) > 0
    # every GT marker follows the grains it maps; every entry names a grain marker of its LBA
    entries = grain_table_entries(out, walk)
    for grain, sector in enumerate(entries):
        if sector:
            assert walk.grains[sector] == grain * h["grain_size"]
    assert sum(1 for e in entries if e) == len(walk.grains)
    # one GT per 32 MiB span holding grains, each right after the last grain it maps
    spans = sorted({lba // (512 * 128) for lba in walk.grains.values()})
    assert len(walk.tables) == len(spans)
    for span, table in zip(spans, walk.tables, strict=True):
        last = max(p for p, lba in walk.grains.items() if lba // (512 * 128) == span)
        following = [p for p in walk.grains if p > last]
        assert last < table and all(p > table for p in following)


def test_stream_omits_zero_grains(tmp_path: Path) -> None:
    src = tmp_path / "z.raw"
    with open(src, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(bytes(256 << 10))  # allocated but zero: must not become a grain
        f.write(b"\x01" * (64 << 10))
    out = tmp_path / "z.vmdk"
    convert(src, out, "subformat=streamOptimized")
    assert len(walk_stream(out).grains) == 1
    assert qemu_compare(src, out, "vmdk") == 0


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_qemu_writes_strata_reads(tmp_path: Path, subformat: str) -> None:
    require("qemu-io")
    size = 3 * GiB
    src = write_sparse_raw(tmp_path / "src.raw", size, [(0, MiB), (2 * GiB - 4096, 1 << 16)])
    image = tmp_path / "q.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", src, image)
    if subformat != "streamOptimized":
        run(
            [
                require("qemu-io"),
                "-f",
                "vmdk",
                "-c",
                "write -P 0x5a 3M 65k",
                "-c",
                "write -P 0x33 2047M 2M",
                "-c",
                "write -z 0 64k",
                "-c",
                "write -P 7 1000001k 3k",
                str(image),
            ]
        )
    expected = tmp_path / "expected.raw"
    qemu_img("convert", "-f", "vmdk", "-O", "raw", image, expected)
    with registry.open_image(str(image)) as disk, RawFileDevice(str(expected)) as raw:
        assert disk.size == size
        assert first_difference(disk, raw) is None
    assert not [p for p in ops.check(ops.OpenSpec(str(image))) if p.severity == "error"]


def test_qemu_empty_stream_and_zeroed_grains(tmp_path: Path) -> None:
    image = tmp_path / "e.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=streamOptimized", image, "100M")
    with registry.open_image(str(image)) as disk:
        assert disk.read(0, 4096) == bytes(4096)
    zeroed = tmp_path / "zg.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "zeroed_grain=on", zeroed, "64M")
    run(
        [
            require("qemu-io"),
            "-f",
            "vmdk",
            "-c",
            "write -P 1 0 1M",
            "-c",
            "write -z 64k 128k",
            str(zeroed),
        ]
    )
    with registry.open_image(str(zeroed)) as disk:
        data = disk.read(0, MiB)
        states = {e.state.name for e in disk.extents(0, MiB)}
    assert data[:65536] == b"\x01" * 65536 and data[65536:196608] == bytes(131072)
    assert data[196608:] == b"\x01" * (MiB - 196608)
    assert "ZERO" in states


# -- chains ---------------------------------------------------------------------------------------
def _write_at(path: Path, size: int, writes: list[tuple[int, bytes]]) -> None:
    with open(path, "r+b") as f:
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def test_strata_chain_depth_three(tmp_path: Path) -> None:
    require("qemu-img")
    size = 256 * MiB
    raw = write_sparse_raw(tmp_path / "v0.raw", size, [(0, 2 * MiB), (100 * MiB, MiB)])
    convert(raw, tmp_path / "base.vmdk")
    previous = tmp_path / "base.vmdk"
    for level in (1, 2, 3):
        nxt = tmp_path / f"v{level}.raw"
        shutil.copyfile(raw, nxt)
        _write_at(
            nxt,
            size,
            [
                (level * MiB + 512, b"L%d" % level * 1000),
                (100 * MiB + 4096, bytes(8192)),
                (200 * MiB, bytes([level]) * 70000),
                (100 * MiB + 65536 * 2, bytes(65536)),  # a whole grain zeroed over parent data
            ],
        )
        child = tmp_path / f"c{level}.vmdk"
        convert(nxt, child, backing=previous)
        assert qemu_compare(nxt, child, "vmdk") == 0
        qemu_check_clean(child)
        assert "parentFileNameHint" in _head(child).decode("latin-1")
        raw, previous = nxt, child
    handle = pyvmdk_handle(previous)
    parents = [pyvmdk_handle(tmp_path / n) for n in ("c2.vmdk", "c1.vmdk", "base.vmdk")]
    handle.set_parent(parents[0])
    parents[0].set_parent(parents[1])
    parents[1].set_parent(parents[2])
    with open(raw, "rb") as f:
        for offset in (0, MiB, 3 * MiB, 100 * MiB, 100 * MiB + 131072, 200 * MiB):
            f.seek(offset)
            assert handle.read_buffer_at_offset(1 << 17, offset) == f.read(1 << 17)
    # the child is small: only the changed grains are stored
    assert (tmp_path / "c3.vmdk").stat().st_size < 2 * MiB


def test_qemu_chain_read_by_strata(tmp_path: Path) -> None:
    require("qemu-io")
    base = tmp_path / "b.vmdk"
    qemu_img("create", "-f", "vmdk", base, "64M")
    qemu_io = require("qemu-io")
    run([qemu_io, "-f", "vmdk", "-c", "write -P 1 0 4M", str(base)])
    layers = [base]
    for n in range(1, 4):
        child = tmp_path / f"c{n}.vmdk"
        qemu_img("create", "-f", "vmdk", "-b", layers[-1].name, "-F", "vmdk", child)
        run([qemu_io, "-f", "vmdk", "-c", f"write -P {n + 1} {n}M 70k", str(child)])
        layers.append(child)
    expected = tmp_path / "e.raw"
    qemu_img("convert", "-f", "vmdk", "-O", "raw", layers[-1], expected)
    with registry.open_image(str(layers[-1])) as disk, RawFileDevice(str(expected)) as raw:
        assert len(disk.layers) == 4
        assert first_difference(disk, raw) is None


def test_parent_cid_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    require("qemu-io")
    raw = write_sparse_raw(tmp_path / "r.raw", 16 * MiB, [(0, MiB)])
    convert(raw, tmp_path / "p.vmdk")
    child = tmp_path / "c.vmdk"
    proc = strata("disk", "create", "-f", "vmdk", "--parent", tmp_path / "p.vmdk", child)
    assert proc.returncode == 0, proc.stderr
    assert qemu_img("compare", raw, child, check=False).returncode == 0
    # a write into the parent gives it a new CID: the child no longer matches
    run([require("qemu-io"), "-f", "vmdk", "-c", "write -P 9 0 4k", str(tmp_path / "p.vmdk")])
    proc = strata("disk", "info", child)
    assert proc.returncode == 7, proc.stderr
    assert "parentCID" in proc.stderr and "does not match" in proc.stderr
    # qemu refuses to read through the stale link as well
    assert (
        run(
            [require("qemu-io"), "-f", "vmdk", "-c", "read 0 4k", str(child)], check=False
        ).returncode
        != 0
    )


def test_split_sparse_child(tmp_path: Path) -> None:
    require("qemu-img")
    size = 2 * GiB + 8 * MiB
    raw = write_sparse_raw(tmp_path / "b.raw", size, [(0, MiB), (2 * GiB - 65536, 4 * MiB)])
    base = tmp_path / "b.vmdk"
    convert(raw, base, "subformat=twoGbMaxExtentSparse")
    _write_at(raw, size, [(2 * GiB - 1000, b"q" * 3000), (700, bytes(300))])
    child = tmp_path / "c.vmdk"
    convert(raw, child, "subformat=twoGbMaxExtentSparse", backing=base)
    assert qemu_compare(raw, child, "vmdk") == 0
    with registry.open_image(str(child)) as disk:
        assert [len(layer.files) for layer in disk.layers] == [3, 3]


def test_zeroed_grain_child(tmp_path: Path) -> None:
    """zeroed_grain=on: a grain zeroed over parent data is a GTE of 1, not a stored grain."""
    require("qemu-img")
    raw = write_sparse_raw(tmp_path / "b.raw", 16 * MiB, [(0, 4 * MiB)])
    base = tmp_path / "b.vmdk"
    convert(raw, base)
    _write_at(raw, 16 * MiB, [(MiB, bytes(3 * 65536))])
    child = tmp_path / "c.vmdk"
    convert(raw, child, "zeroed_grain=on", backing=base)
    assert qemu_compare(raw, child, "vmdk") == 0
    qemu_check_clean(child)
    with registry.open_layer(str(child)) as layer:
        states = [(e.offset, e.length, e.state.name) for e in layer.extents()]
    assert (MiB, 3 * 65536, "ZERO") in states
    assert not any(state == "DATA" for *_, state in states)


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_size_not_a_whole_grain(tmp_path: Path, subformat: str) -> None:
    require("qemu-img")
    size = 10 * MiB + 4096
    raw = write_sparse_raw(tmp_path / "o.raw", size, [(0, 1000 * 512), (10 * MiB, 4096)])
    out = tmp_path / "o.vmdk"
    convert(raw, out, f"subformat={subformat}")
    assert qemu_compare(raw, out, "vmdk") == 0
    qemu_check_clean(out)
    assert_pyvmdk_equal(out, raw, size)
    assert not ops.check(ops.OpenSpec(str(out)))


def test_strata_writes_into_qemu_sparse(tmp_path: Path) -> None:
    require("qemu-img")
    image = tmp_path / "q.vmdk"
    qemu_img("create", "-f", "vmdk", image, "64M")
    run([require("qemu-io"), "-f", "vmdk", "-c", "write -P 3 1M 1M", str(image)])
    ref = write_sparse_raw(tmp_path / "r.raw", 64 * MiB, [])
    writes = [(MiB + 100, b"w" * 5000), (40 * MiB + 7, b"v" * 70000), (MiB - 10, b"u" * 20)]
    _write_at(ref, 64 * MiB, [(MiB, b"\x03" * MiB)])
    with registry.open_image(str(image), writable=True) as disk:
        for offset, data in writes:
            disk.write(offset, data)
    _write_at(ref, 64 * MiB, writes)
    assert qemu_compare(ref, image, "vmdk") == 0
    qemu_check_clean(image)
    assert not ops.check(ops.OpenSpec(str(image)))
