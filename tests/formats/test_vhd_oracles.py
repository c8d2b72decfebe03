"""Issue 3 acceptance: strata's VHDs checked by qemu-img and libvhdi; qemu's VHDs read by strata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice, first_difference
from strata.formats import registry
from strata.formats.vhd import structs as s
from strata.ops import disk as ops

from support.images import GiB, MiB
from support.tools import qemu_compare, qemu_img, qemu_info, qemu_io_scribble, result_of, strata
from support.tools import strata_json as sj
from support.vhd_tools import (
    edge_runs,
    edge_source,
    patch,
    pyvhdi_chain,
    read_range,
    refresh_checksum,
)

SIZES = {
    "64M": 64 * MiB,
    "1G+3M": GiB + 3 * MiB,
    "127G": 127 * GiB,
    "2040G": 2040 * GiB,
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vhd-src")
    return {name: edge_source(root / f"{name}.raw", size) for name, size in SIZES.items()}


def _pyvhdi_matches(vhd: Path, raw: Path, size: int) -> None:
    (f,) = pyvhdi_chain([vhd])
    assert f.media_size == size
    for offset, length in edge_runs(size):
        lo, hi = max(0, offset - 4096), min(size, offset + length + 4096)
        assert f.read_buffer_at_offset(hi - lo, lo) == read_range(raw, lo, hi - lo), (vhd, lo)


@pytest.mark.parametrize("subformat", ["fixed", "dynamic"])
@pytest.mark.parametrize("name", list(SIZES))
def test_convert_is_sized_and_read_alike(
    sources: dict[str, Path], tmp_path: Path, name: str, subformat: str
) -> None:
    size, raw = SIZES[name], sources[name]
    out = tmp_path / f"{name}-{subformat}.vhd"
    result_of(sj("disk", "convert", "-O", "vhd", "-o", f"subformat={subformat}", raw, out))
    assert qemu_compare(raw, out, "vpc") == 0
    assert qemu_info(out, "vpc")["virtual-size"] == size
    info = ops.info(ops.OpenSpec(str(out)))
    assert info["virtual-size"] == size and info["subformat"] == subformat
    _pyvhdi_matches(out, raw, size)
    assert ops.check(ops.OpenSpec(str(out))) == []
    if subformat == "fixed":
        assert out.stat().st_size == size + 512
        assert out.stat().st_blocks * 512 < 64 * MiB  # stayed sparse


@pytest.mark.parametrize(
    "size",
    [
        512,
        64 * MiB + 512,
        100 * 1000 * 1000 // 512 * 512,
        127 * GiB + 7 * 512,
        267382800 * 512,
        267382800 * 512 + 512,
        2040 * GiB - 512,
        2040 * GiB,
    ],
)
@pytest.mark.parametrize("subformat", ["fixed", "dynamic"])
def test_create_any_size_reads_alike(tmp_path: Path, size: int, subformat: str) -> None:
    out = tmp_path / "new.vhd"
    ops.create(str(out), "vhd", size, [f"subformat={subformat}"])
    assert qemu_info(out, "vpc")["virtual-size"] == size
    (f,) = pyvhdi_chain([out])
    assert f.media_size == size
    c, h, spt = s.chs_geometry(size)
    with registry.open_image(str(out)) as disk:
        assert disk.size == size
        assert disk.info()["geometry"] == f"{c}/{h}/{spt}"


def test_geometry_follows_the_spec() -> None:
    # Values from the spec's algorithm worked by hand: 64 MiB is 131072 sectors,
    # 131072 / 17 = 7710 cyl*heads, heads = 8, cylinders = 963.
    assert s.chs_geometry(64 * MiB) == (963, 8, 17)
    assert s.chs_geometry(127 * GiB) == (65278, 16, 255)
    assert s.chs_geometry(2040 * GiB) == (65535, 16, 255)


def test_azure_fixed_is_whole_mib(tmp_path: Path) -> None:
    out = tmp_path / "azure.vhd"
    proc = strata("disk", "create", "-O", "vhd", "-o", "azure=on", out, "30G")
    assert proc.returncode == 0, proc.stderr
    info = qemu_info(out, "vpc")
    assert info["virtual-size"] == 30 * GiB and info["virtual-size"] % MiB == 0
    assert out.stat().st_size == 30 * GiB + 512
    assert result_of(sj("disk", "info", out))["subformat"] == "fixed"
    bad = strata("disk", "create", "-O", "vhd", "-o", "azure=on", tmp_path / "b.vhd", "1000001K")
    assert bad.returncode == 3 and "977M" in bad.stderr + bad.stdout
    assert not (tmp_path / "b.vhd").exists()


def _qemu_written(tmp_path: Path, subformat: str, seed: int) -> Path:
    image = tmp_path / f"q-{subformat}.vhd"
    qemu_img("create", "-q", "-f", "vpc", "-o", f"subformat={subformat}", image, "300M")
    size = qemu_info(image, "vpc")["virtual-size"]
    extra = [(size - 512, 512, 0x77), (2 * MiB - 512, 1024, 0x66)]
    qemu_io_scribble(image, "vpc", size, seed=seed, writes=40, extra=extra)
    return image


@pytest.mark.parametrize("subformat", ["fixed", "dynamic"])
def test_qemu_written_reads_identically(tmp_path: Path, subformat: str) -> None:
    image = _qemu_written(tmp_path, subformat, seed=11 if subformat == "fixed" else 12)
    flat = tmp_path / "flat.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", image, flat)
    with registry.open_image(str(image)) as disk, RawFileDevice(str(flat)) as ref:
        assert disk.size == ref.size == qemu_info(image, "vpc")["virtual-size"]
        assert first_difference(disk, ref) is None
        assert disk.read(0, disk.size) == flat.read_bytes()
    assert ops.check(ops.OpenSpec(str(image))) == []
    assert strata("disk", "compare", image, flat).returncode == 0


def test_qemu_map_agrees_on_dynamic_allocation(tmp_path: Path) -> None:
    image = _qemu_written(tmp_path, "dynamic", seed=5)
    theirs = json.loads(qemu_img("map", "--output=json", "-f", "vpc", image).stdout)
    ours = result_of(sj("disk", "map", image))["map"]

    def data_ranges(entries: list[dict]) -> list[tuple[int, int]]:
        merged: list[tuple[int, int]] = []
        for e in entries:
            if not e["data"]:
                continue
            if merged and merged[-1][1] == e["start"]:
                merged[-1] = (merged[-1][0], e["start"] + e["length"])
            else:
                merged.append((e["start"], e["start"] + e["length"]))
        return merged

    assert data_ranges(ours) == data_ranges(theirs)


def test_creator_qemu_sizes_by_chs_is_flagged(tmp_path: Path) -> None:
    """The sizing trap: a creator qemu does not trust makes qemu read the CHS size."""
    out = tmp_path / "elm.vhd"
    assert (
        strata("disk", "create", "-O", "vhd", "-o", "subformat=fixed", out, "64M").returncode == 0
    )
    footer = out.stat().st_size - 512
    patch(out, footer + 28, b"elm ")
    refresh_checksum(out, footer, 512, 64)
    c, h, spt = s.chs_geometry(64 * MiB)
    assert qemu_info(out, "vpc")["virtual-size"] == c * h * spt * 512 < 64 * MiB
    assert result_of(sj("disk", "info", out))["virtual-size"] == 64 * MiB
    proc = strata("disk", "check", out)
    assert proc.returncode == 0 and "creator_app" in proc.stdout and "warning" in proc.stdout
