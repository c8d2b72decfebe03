"""FAT12/16/32 made by mkfs.fat and filled by mtools, read by strata: same tree, bytes, times."""

from __future__ import annotations

import pytest

from strata.blockdev import RawFileDevice
from strata.fs import detect
from strata.fs.fat import FatVolume

from support.fat_tools import (
    MiB,
    make_volume,
    mtools_attributes,
    mtools_mtimes,
    mtools_tree,
    populate,
    strata_attributes,
    strata_tree,
)
from support.tools import require

# (FAT type, volume size, mkfs.fat options): small sparse volumes, 512-byte clusters on FAT32
# so directories and files span many clusters.
VOLUMES = {
    12: (8 * MiB, ("-s", "4")),
    16: (40 * MiB, ()),
    32: (40 * MiB, ("-s", "1")),
}


@pytest.fixture(scope="module", params=sorted(VOLUMES))
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    require("mkfs.fat")
    require("mcopy")
    fat = request.param
    work = tmp_path_factory.mktemp(f"fat{fat}")
    size, extra = VOLUMES[fat]
    image = make_volume(work / f"fat{fat}.img", fat, size, *extra)
    with RawFileDevice(str(image)) as dev:
        cluster = FatVolume(dev).geometry.cluster_size
    return fat, work, populate(image, work, cluster)


def test_type_and_geometry(filled) -> None:  # type: ignore[no-untyped-def]
    fat, _, pop = filled
    with RawFileDevice(str(pop.image)) as dev:
        vol = FatVolume(dev)
        assert detect(dev) == "fat"
    g = vol.geometry
    assert g.fat_type == fat
    assert g.label == f"FAT{fat}VOL"
    assert (g.root_cluster != 0) == (fat == 32)


def test_tree_and_contents_match_mtools(filled) -> None:  # type: ignore[no-untyped-def]
    _, work, pop = filled
    with RawFileDevice(str(pop.image)) as dev:
        ours = strata_tree(FatVolume(dev))
    theirs = mtools_tree(pop.image, work)
    assert ours == theirs
    assert ours == pop.tree  # and both are what we put there


def test_fragmented_file_has_many_runs(filled) -> None:  # type: ignore[no-untyped-def]
    _, _, pop = filled
    with RawFileDevice(str(pop.image)) as dev:
        vol = FatVolume(dev)
        entry = vol.stat("/frag/fragmented file.bin")
        runs = vol.file_runs(entry)
        assert len(runs) >= 10
        assert sum(n for _, n in runs) == entry.size == len(pop.tree["/frag/fragmented file.bin"])
        one = vol.stat("/ONE CLUSTER.BIN")  # lookups are case-insensitive, like FAT
        assert len(vol.file_runs(one)) == 1 and one.size == pop.cluster_size
        assert vol.stat("/empty.txt").first_cluster == 0


def test_times_and_attributes_match_mtools(filled) -> None:  # type: ignore[no-untyped-def]
    _, work, pop = filled
    with RawFileDevice(str(pop.image)) as dev:
        vol = FatVolume(dev)
        ours = {p: e.modified for p, e in vol.walk() if not e.is_dir}
        attrs = strata_attributes(vol)
    theirs = mtools_mtimes(pop.image, work)
    assert ours == theirs
    assert attrs == mtools_attributes(pop.image)


def test_short_and_long_names(filled) -> None:  # type: ignore[no-untyped-def]
    _, _, pop = filled
    with RawFileDevice(str(pop.image)) as dev:
        vol = FatVolume(dev)
        names = {e.name: e for e in vol.listdir("/Ünïcödé dir")}
        readme = vol.stat("/readme.txt")
    assert set(names) == {"日本語 ファイル.txt", "Ærøskøbing.bin"}
    assert all("~" in e.short_name for e in names.values())
    assert readme.name == readme.short_name == "README.TXT" and readme.lfn_slots == 0
