"""strata's FAT editor, checked by fsck.fat -n and read back with mtools."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from strata.blockdev import ChainDevice, RawFileDevice
from strata.errors import InvalidInput, NotFound, StateError
from strata.fs.fat import FatEditor, FatVolume, open_fat
from strata.fs.fat import structs as s
from strata.partition import Partition, open_partition, read_table, write_gpt

from support.fat_tools import (
    MiB,
    extract,
    fsck,
    make_volume,
    mtools_attributes,
    mtools_mtimes,
    mtools_tree,
    pattern,
    populate,
    strata_tree,
)
from support.partition_devices import MemoryDevice, OverlayDevice
from support.partition_tools import sgdisk_verify
from support.tools import require

VOLUMES = {
    12: (8 * MiB, ("-s", "4")),
    16: (40 * MiB, ()),
    32: (40 * MiB, ("-s", "1")),
}
BASIC = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
STAMP = dt.datetime(2004, 5, 6, 7, 8, 10)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, dict, int]]:
    require("mkfs.fat")
    require("mcopy")
    require("fsck.fat")
    made = {}
    for fat, (size, extra) in VOLUMES.items():
        work = tmp_path_factory.mktemp(f"pristine{fat}")
        image = make_volume(work / "vol.img", fat, size, *extra)
        with RawFileDevice(str(image)) as dev:
            cluster = FatVolume(dev).geometry.cluster_size
        made[fat] = (image, populate(image, work, cluster).tree, cluster)
    return made


def fresh(pristine, fat: int, tmp_path: Path) -> tuple[Path, dict, int]:  # type: ignore[no-untyped-def]
    image, tree, cluster = pristine[fat]
    copy = tmp_path / f"edit{fat}.img"
    shutil.copyfile(image, copy)
    return copy, dict(tree), cluster


def edit_scenario(ed: FatEditor, tree: dict, cluster: int) -> None:  # type: ignore[type-arg]
    """The same edits on the volume and on the expected tree."""

    def write(path: str, data: bytes) -> None:
        ed.write_file(path, data)
        tree[path] = data

    def delete(path: str, recursive: bool = False) -> None:
        ed.delete(path, recursive=recursive)
        for key in [k for k in tree if k == path or k.startswith(path + "/")]:
            del tree[key]

    ed.mkdir("/New dir/nested/deeper", parents=True)
    tree.update(dict.fromkeys(["/New dir", "/New dir/nested", "/New dir/nested/deeper"]))
    write("/New dir/nested/deeper/zero.bin", b"")
    write("/New dir/one.bin", pattern(cluster, 9))
    delete("/frag/hole01.bin")
    delete("/frag/hole05.bin")
    write("/New dir/many clusters ünï.bin", pattern(37 * cluster + 5, 10))
    write("/README.TXT", b"replaced with longer content " * 200)
    write("/one cluster.bin", b"tiny")
    delete("/Dir/Sub/Deep/A long file name with spaces.dat")
    delete("/Dir/Sub", recursive=True)
    delete("/Dir")
    ed.set_attributes("/Ünïcödé dir/Ærøskøbing.bin", s.ATTR_READ_ONLY | s.ATTR_HIDDEN)
    ed.set_times("/Ünïcödé dir/日本語 ファイル.txt", modified=STAMP, created=STAMP)
    for i in range(60):  # grows the directory past its first cluster(s)
        write(f"/many/Added entry {i:02d} — ünïcode name.txt", f"added {i}".encode())
    write("/lower.txt", b"a short lower-case name stored with NT case bits")
    write("/MiXeD.Txt", b"mixed case needs a long name")


def check_fats_and_fsinfo(image: Path) -> None:
    with RawFileDevice(str(image)) as dev:
        vol = FatVolume(dev)
        g = vol.geometry
        copies = {dev.read(g.fat_offset + k * g.fat_bytes, g.fat_bytes) for k in range(g.num_fats)}
        assert len(copies) == 1
        if g.fat_type == 32:
            free = int((vol.fat[2:] == 0).sum())
            for sector in (g.fsinfo_sector, g.backup_boot_sector + g.fsinfo_sector):
                raw = dev.read(sector * g.sector_size, 512)
                assert int.from_bytes(raw[488:492], "little") == free
            backup = dev.read(g.backup_boot_sector * g.sector_size, 512)
            assert backup == dev.read(0, 512)


@pytest.mark.parametrize("fat", sorted(VOLUMES))
def test_edits_pass_fsck_and_mtools_sees_them(pristine, fat: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image, tree, cluster = fresh(pristine, fat, tmp_path)
    with RawFileDevice(str(image), writable=True) as dev:
        ed = open_fat(dev, writable=True)
        edit_scenario(ed, tree, cluster)
        assert strata_tree(ed) == tree
    assert fsck(image) == "clean"
    assert mtools_tree(image, tmp_path) == tree
    attrs = mtools_attributes(image)
    assert attrs["/Ünïcödé dir/Ærøskøbing.bin"] == "HR"  # set exactly: archive cleared
    assert attrs["/New dir/one.bin"] == "A"
    assert mtools_mtimes(image, tmp_path)["/Ünïcödé dir/日本語 ファイル.txt"] == STAMP
    check_fats_and_fsinfo(image)
    with RawFileDevice(str(image)) as dev:
        vol = FatVolume(dev)
        assert vol.stat("/lower.txt").lfn_slots == 0
        assert vol.stat("/MiXeD.Txt").lfn_slots == 1
        assert len(vol.directory(vol.stat("/many")).spans) >= 1
        assert vol.directory(vol.stat("/many")).size > 100 * 32 * 3


@pytest.mark.parametrize("fat", sorted(VOLUMES))
def test_a_batch_commits_once_and_passes_fsck(pristine, fat: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Inside ``batch`` the FAT on disk is left alone (commit is deferred); after it the
    volume is what the same edits made one by one give: fsck clean, mtools reads the tree,
    every FAT copy and FSInfo agree."""
    image, tree, cluster = fresh(pristine, fat, tmp_path)
    with RawFileDevice(str(image), writable=True) as dev:
        ed = open_fat(dev, writable=True)
        assert isinstance(ed, FatEditor)
        g = ed.geometry
        before = dev.read(g.fat_offset, g.fat_bytes)
        with ed.batch():
            edit_scenario(ed, tree, cluster)
            assert dev.read(g.fat_offset, g.fat_bytes) == before
            assert strata_tree(ed) == tree
        assert dev.read(g.fat_offset, g.fat_bytes) != before
    assert fsck(image) == "clean"
    assert mtools_tree(image, tmp_path) == tree
    check_fats_and_fsinfo(image)


@pytest.mark.parametrize("fat", sorted(VOLUMES))
def test_cached_listings_match_the_disk(pristine, fat: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The editor updates its cached listings in place when an entry's metadata changes: what
    it then serves equals what a fresh reader parses from the disk, for every path."""
    image, tree, cluster = fresh(pristine, fat, tmp_path)
    with RawFileDevice(str(image), writable=True) as dev:
        ed = open_fat(dev, writable=True)
        edit_scenario(ed, tree, cluster)
        files = sorted(p for p, data in tree.items() if data is not None)
        for n, path in enumerate(files):
            if n % 2:
                ed.set_times(path, modified=STAMP + dt.timedelta(seconds=2 * n))
            if n % 3 == 0:
                ed.set_attributes(path, s.ATTR_ARCHIVE | s.ATTR_HIDDEN)
        ed.write_file(files[0], b"rewritten after its metadata changed")
        served = {path: ed.stat(path) for path in tree}
        ed.flush()
    with RawFileDevice(str(image)) as dev:
        vol = FatVolume(dev)
        assert {path: vol.stat(path) for path in tree} == served
    assert fsck(image) == "clean"


def test_refusals_leave_the_volume_clean(pristine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image, tree, _ = fresh(pristine, 16, tmp_path)
    with RawFileDevice(str(image), writable=True) as dev:
        ed = FatEditor(dev)
        cases = [
            lambda: ed.delete("/Dir"),  # not empty
            lambda: ed.write_file("/Dir", b"x"),  # a directory
            lambda: ed.mkdir("/Dir/Sub"),  # exists
            lambda: ed.write_file("/bad:name", b"x"),
            lambda: ed.write_file("/trailing.", b"x"),
            lambda: ed.write_file("/x" * 1, bytes(64 * MiB)),  # larger than the volume
            lambda: ed.set_attributes("/README.TXT", s.ATTR_DIRECTORY),
        ]
        for case in cases:
            with pytest.raises(InvalidInput):
                case()
        with pytest.raises(NotFound):
            ed.delete("/no such file")
        with pytest.raises(NotFound):
            ed.write_file("/no dir/file", b"x")
    assert fsck(image) == "clean"
    assert mtools_tree(image, tmp_path) == tree
    with RawFileDevice(str(image)) as dev, pytest.raises(StateError):
        FatEditor(dev)


def test_full_fixed_root_directory(tmp_path: Path) -> None:
    image = make_volume(tmp_path / "small.img", 12, 2 * MiB, "-r", "16")
    with RawFileDevice(str(image), writable=True) as dev:
        ed = FatEditor(dev)
        for i in range(15):  # 16 slots, one holds the volume label mkfs.fat wrote
            ed.write_file(f"/F{i}.TXT", b"%d" % i)
        with pytest.raises(InvalidInput, match="root directory"):
            ed.write_file("/ONEMORE.TXT", b"x")
    assert fsck(image) == "clean"
    assert len(mtools_tree(image, tmp_path)) == 15


def test_edit_through_a_differencing_chain(pristine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image, tree, cluster = fresh(pristine, 16, tmp_path)
    base = MemoryDevice(image.read_bytes(), writable=False)
    top = OverlayDevice(base)
    chain = ChainDevice(top)
    edit_scenario(FatEditor(chain), tree, cluster)
    assert base.data == image.read_bytes()  # the parent layer is untouched
    assert 0 < len(top.sectors) * 512 < 2 * MiB  # only changed sectors went to the child
    merged = extract(chain, tmp_path / "merged.img")
    assert fsck(merged) == "clean"
    assert mtools_tree(merged, tmp_path) == tree


def test_fat32_in_a_gpt_disk_through_open_partition(tmp_path: Path) -> None:
    require("mkfs.fat")
    disk = tmp_path / "disk.img"
    with RawFileDevice.create(str(disk), 80 * MiB) as dev:
        write_gpt(dev, [Partition(1, MiB, 64 * MiB, BASIC, "data")])
    import subprocess

    subprocess.run(
        [require("mkfs.fat"), "-F", "32", "-s", "1", "--offset", "2048", str(disk), "65536"],
        check=True,
        capture_output=True,
    )
    pop = populate(disk, tmp_path, 512, offset=MiB)
    tree = dict(pop.tree)
    with RawFileDevice(str(disk), writable=True) as dev:
        part = open_partition(dev, 1, read_table(dev))
        assert strata_tree(FatVolume(part)) == mtools_tree(disk, tmp_path, MiB) == tree
        edit_scenario(FatEditor(part), tree, 512)
    assert "No problems found" in sgdisk_verify(disk)
    assert mtools_tree(disk, tmp_path, MiB) == tree
    with RawFileDevice(str(disk)) as dev:
        volume = extract(open_partition(dev, 1), tmp_path / "part.img")
    assert fsck(volume) == "clean"


def test_write_from_a_stream_in_windows(pristine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image, tree, _ = fresh(pristine, 16, tmp_path)
    big = pattern(9 * MiB + 123, 21)  # more than two 4 MiB windows
    (tmp_path / "big.src").write_bytes(big)
    with RawFileDevice(str(image), writable=True) as dev, open(tmp_path / "big.src", "rb") as f:
        ed = FatEditor(dev)
        ed.write_file("/Dir/streamed.bin", f, size=len(big))
        tree["/Dir/streamed.bin"] = big
        f.seek(0)
        with pytest.raises(InvalidInput, match="stream ended"):
            ed.write_file("/README.TXT", f, size=len(big) + 1)  # old content must survive
        with pytest.raises(InvalidInput):
            ed.write_file("/x.bin", f)  # a stream without a size
    assert fsck(image) == "clean"
    assert mtools_tree(image, tmp_path) == tree


def test_long_name_edges(tmp_path: Path) -> None:
    image = make_volume(tmp_path / "names.img", 16, 40 * MiB)
    names = [
        "a" * 13,  # exactly one long-name entry, no terminator
        "B" * 26,
        "x" * 255,
        "Z" * 12 + ".t",
        ".hidden",
        "two..dots.tar.gz",
        "UPPER.TXT",
        "lower.txt",
        "a b.c",
        "e" * 9,
    ]
    with RawFileDevice(str(image), writable=True) as dev, FatEditor(dev) as ed:
        for name in [*names, "emoji 😀 name.txt"]:
            ed.write_file(f"/{name}", name.encode())
        with pytest.raises(InvalidInput):
            ed.write_file("/" + "y" * 256, b"")
        assert ed.read_file("/emoji 😀 name.txt") == "emoji 😀 name.txt".encode()
    assert fsck(image) == "clean"
    theirs = mtools_tree(image, tmp_path)
    del theirs["/emoji __ name.txt"]  # mtools 4.0.32 prints non-BMP characters as '_'
    assert theirs == {f"/{n}": n.encode() for n in names}


def test_fat32_with_4k_sectors(tmp_path: Path) -> None:
    image = make_volume(tmp_path / "4k.img", 32, 300 * MiB, "-S", "4096", "-s", "1")
    tree = dict(populate(image, tmp_path, 4096).tree)
    with RawFileDevice(str(image), writable=True) as dev, FatEditor(dev) as ed:
        assert (ed.geometry.sector_size, ed.geometry.fat_type) == (4096, 32)
        assert strata_tree(ed) == tree
        edit_scenario(ed, tree, 4096)
    assert fsck(image) == "clean"
    assert mtools_tree(image, tmp_path) == tree
    check_fats_and_fsinfo(image)
