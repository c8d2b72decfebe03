"""Hostile FAT volumes: loops, cross-links, entries past the volume, short FATs, fuzzing.

Every case must end in a specific StrataError quickly; fsck.fat confirms the damage is real.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev import RangeDevice, RawFileDevice
from strata.errors import CorruptImage, StrataError, TruncatedImage
from strata.fs.fat import FatEditor, FatVolume
from strata.fs.fat import structs as s

from support.fat_tools import ENV, MiB, fsck, make_volume, mtools, pattern, rewrite_long_name
from support.partition_devices import MemoryDevice
from support.tools import require


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    require("mcopy")
    work = tmp_path_factory.mktemp("hostile")
    image = make_volume(work / "h.img", 16, 20 * MiB)
    src = work / "big.bin"
    src.write_bytes(pattern(10 * 2048 + 5, 1))
    (work / "small.txt").write_bytes(b"small file\n")
    mtools("mmd", "-i", image, "::/Dir", "::/Dir/Sub")
    mtools("mcopy", "-i", image, src, "::/Dir/big.bin")
    mtools("mcopy", "-i", image, work / "small.txt", "::/README.TXT")
    mtools("mcopy", "-i", image, src, "::/Dir/Sub/second.bin")
    return image.read_bytes()


class Volume:
    """A mutable copy of the base image with helpers to damage it."""

    def __init__(self, data: bytes) -> None:
        self.dev = MemoryDevice(data)
        self.vol = FatVolume(self.dev)
        self.g = self.vol.geometry

    def set_fat(self, cluster: int, value: int) -> None:
        for copy in range(self.g.num_fats):
            at = self.g.fat_offset + copy * self.g.fat_bytes + 2 * cluster
            self.dev.data[at : at + 2] = value.to_bytes(2, "little")

    def chain_end(self, path: str) -> int:
        runs = self.vol.runs(self.vol.stat(path).first_cluster)
        return runs[-1][0] + runs[-1][1] - 1

    def entry_offset(self, parent: str, name: str) -> int:
        d = self.vol.directory(self.vol.stat(parent))
        return d.slot_offset(self.vol.lookup(d, name).slot)

    def reopen(self) -> FatVolume:
        return FatVolume(self.dev)

    def save(self, path: Path) -> Path:
        path.write_bytes(self.dev.data)
        return path


def bounded(func) -> CorruptImage:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    with pytest.raises(CorruptImage) as err:
        func()
    assert time.perf_counter() - started < 2
    return err.value


def test_chain_loop(base_image: bytes, tmp_path: Path) -> None:
    v = Volume(base_image)
    first = v.vol.stat("/Dir/big.bin").first_cluster
    v.set_fat(v.chain_end("/Dir/big.bin"), first + 3)  # back into the middle of the chain
    vol = v.reopen()
    err = bounded(lambda: vol.read_file("/Dir/big.bin"))
    assert "loops back" in err.problem and err.field == "next_cluster"
    assert err.offset is not None and err.offset < vol.geometry.root_offset
    bounded(lambda: list(vol.walk()))
    assert fsck(v.save(tmp_path / "loop.img")) != "clean"


def test_cross_linked_chains(base_image: bytes, tmp_path: Path) -> None:
    v = Volume(base_image)
    v.set_fat(v.chain_end("/Dir/big.bin"), v.vol.stat("/Dir/Sub/second.bin").first_cluster)
    vol = v.reopen()
    assert len(vol.read_file("/Dir/big.bin")) == 10 * 2048 + 5  # the size still bounds a read
    err = bounded(lambda: list(vol.walk()))
    assert "cross-linked" in err.problem
    with pytest.raises(CorruptImage):
        FatEditor(v.dev)  # never edit a volume whose clusters have two owners
    assert fsck(v.save(tmp_path / "cross.img")) != "clean"


def test_directory_cycle_is_a_cross_link(base_image: bytes) -> None:
    v = Volume(base_image)
    at = v.entry_offset("/Dir", "Sub")
    dir_cluster = v.vol.stat("/Dir").first_cluster
    v.dev.data[at + 26 : at + 28] = dir_cluster.to_bytes(2, "little")
    vol = v.reopen()
    err = bounded(lambda: list(vol.walk()))
    assert "cross-linked" in err.problem


def test_entry_pointing_past_the_volume(base_image: bytes, tmp_path: Path) -> None:
    v = Volume(base_image)
    at = v.entry_offset("/", "README.TXT")
    v.dev.data[at + 26 : at + 28] = (0xFFF0).to_bytes(2, "little")
    vol = v.reopen()
    err = bounded(lambda: vol.read_file("/README.TXT"))
    assert "outside the volume" in err.problem and err.field == "first_cluster"
    assert err.offset == at + 26  # the entry's DIR_FstClusLO field
    bounded(lambda: list(vol.walk()))
    assert fsck(v.save(tmp_path / "past.img")) != "clean"


def test_chain_into_a_free_cluster(base_image: bytes) -> None:
    v = Volume(base_image)
    v.set_fat(v.vol.stat("/Dir/big.bin").first_cluster, 0)
    err = bounded(lambda: v.reopen().read_file("/Dir/big.bin"))
    assert "free cluster" in err.problem


def test_size_longer_than_chain(base_image: bytes) -> None:
    v = Volume(base_image)
    at = v.entry_offset("/", "README.TXT")
    v.dev.data[at + 28 : at + 32] = (10 * MiB).to_bytes(4, "little")
    err = bounded(lambda: v.reopen().read_file("/README.TXT"))
    assert err.field == "size"


def test_fat_shorter_than_cluster_count(base_image: bytes) -> None:
    v = Volume(base_image)
    v.dev.data[22:24] = (1).to_bytes(2, "little")  # fat_size_16: one sector per FAT
    err = bounded(v.reopen)
    assert err.structure == "FAT" and err.field == "fat_size" and err.offset == 22


def test_truncated_volume(base_image: bytes) -> None:
    dev = MemoryDevice(base_image)
    with pytest.raises(TruncatedImage):
        FatVolume(RangeDevice(dev, 0, 4 * MiB))


def test_bad_boot_sectors(base_image: bytes) -> None:
    for offset, value, field in [(11, 100, "bytes_per_sector"), (13, 3, "sectors_per_cluster")]:
        v = Volume(base_image)
        v.dev.data[offset] = value
        err = bounded(v.reopen)
        assert err.field == field and err.offset == offset


def test_fuzzed_volume_raises_only_strata_errors(tmp_path: Path) -> None:
    require("mcopy")
    image = make_volume(tmp_path / "fuzz.img", 12, MiB, "-r", "32", "-s", "1")
    (tmp_path / "a.bin").write_bytes(pattern(3000, 5))
    mtools("mmd", "-i", image, "::/D", "::/D/E")
    mtools("mcopy", "-i", image, tmp_path / "a.bin", "::/D/E/a long name.bin")
    mtools("mcopy", "-i", image, tmp_path / "a.bin", "::/B.BIN")
    data = image.read_bytes()
    g = FatVolume(MemoryDevice(data)).geometry
    hot = np.concatenate(
        [
            np.arange(0, 90),
            np.arange(g.fat_offset, g.fat_offset + 64),
            np.arange(g.root_offset, g.root_offset + 8 * 32),
            np.arange(g.data_offset, g.data_offset + 6 * g.cluster_size),
        ]
    )
    dev = MemoryDevice(data)
    rng = np.random.default_rng(3)
    seen = {"ok": 0, "error": 0}
    started = time.perf_counter()
    for _ in range(2500):
        spots = [int(p) for p in rng.choice(hot, size=int(rng.integers(1, 6)))]
        for pos in spots:
            dev.data[pos] = int(rng.integers(0, 256))
        try:
            vol = FatVolume(dev)
            for _, entry in vol.walk():
                if not entry.is_dir:
                    vol.read_file(entry)
            seen["ok"] += 1
        except StrataError:
            seen["error"] += 1
        for pos in spots:
            dev.data[pos] = data[pos]
    assert time.perf_counter() - started < 60
    assert seen["ok"] > 100 and seen["error"] > 100, seen


def test_read_only_image_file_is_refused_for_editing(base_image: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ro.img"
    path.write_bytes(base_image)
    with RawFileDevice(str(path)) as dev, pytest.raises(StrataError):
        FatEditor(dev)


def test_fuzzed_volume_editing_raises_only_strata_errors(tmp_path: Path) -> None:
    require("mcopy")
    image = make_volume(tmp_path / "fuzz.img", 12, MiB, "-r", "32", "-s", "1")
    (tmp_path / "a.bin").write_bytes(pattern(3000, 5))
    mtools("mmd", "-i", image, "::/D", "::/D/E")
    mtools("mcopy", "-i", image, tmp_path / "a.bin", "::/D/E/a long name.bin")
    data = image.read_bytes()
    g = FatVolume(MemoryDevice(data)).geometry
    hot = np.concatenate(
        [
            np.arange(0, 64),
            np.arange(g.fat_offset, g.fat_offset + 32),
            np.arange(g.root_offset, g.root_offset + 4 * 32),
            np.arange(g.data_offset, g.data_offset + 4 * g.cluster_size),
        ]
    )
    dev = MemoryDevice(data)
    rng = np.random.default_rng(5)
    seen = {"edited": 0, "error": 0}
    started = time.perf_counter()
    for _ in range(600):  # the read-side fuzz above carries the 2000-mutation bar
        dev.data[:] = data
        for pos in rng.choice(hot, size=int(rng.integers(1, 4))):
            dev.data[int(pos)] = int(rng.integers(0, 256))
        try:
            ed = FatEditor(dev)
            ed.write_file("/D/E/new file.txt", b"n" * 700)
            ed.mkdir("/D/New")
            ed.delete("/D", recursive=True)
            seen["edited"] += 1
        except StrataError:
            seen["error"] += 1
    assert time.perf_counter() - started < 60
    assert seen["edited"] > 50 and seen["error"] > 50, seen


# Long names that are well formed (ordinals, checksum) but that no path can hold: each
# original is created by mtools with as many long-name slots as its replacement needs.
UNHOLDABLE = {
    "Sub/evil.txt": "Sub_evil.txt",  # would read as a file in /Dir/Sub
    "..": "Qq",
    ".": "+",
    "a\\b": "aQb",
    "x:y*?.txt": "xQyQQ.txt",
    "trail.": "tRail+",
    "tab\there": "tAb+here",
}


@pytest.fixture
def unholdable(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """/Dir/Sub and one file per entry of UNHOLDABLE whose long name was rewritten; the
    long name each file had when mtools made it → its short name."""
    require("mcopy")
    image = make_volume(tmp_path / "names.img", 16, 20 * MiB)
    (tmp_path / "f").write_bytes(b"payload\n")
    mtools("mmd", "-i", image, "::/Dir", "::/Dir/Sub")
    for original in UNHOLDABLE.values():
        mtools("mcopy", "-i", image, tmp_path / "f", f"::/Dir/{original}")
    vol = FatVolume(MemoryDevice(image.read_bytes()))
    shorts = {o: vol.stat(f"/Dir/{o}").short_name for o in UNHOLDABLE.values()}
    data = bytearray(image.read_bytes())
    for new, original in UNHOLDABLE.items():
        rewrite_long_name(data, "/Dir", original, new)
    image.write_bytes(data)
    return image, shorts


def test_long_names_no_path_can_hold_read_as_the_short_name(
    unholdable: tuple[Path, dict[str, str]],
) -> None:
    image, shorts = unholdable
    assert fsck(image) == "clean"  # well-formed entries: fsck.fat has nothing to say
    assert "Sub/evil.txt" in mtools("mdir", "-i", image, "::/Dir")  # what mtools shows
    vol = FatVolume(MemoryDevice(image.read_bytes()))
    paths = sorted(p for p, _ in vol.walk())
    assert paths == sorted(["/Dir", "/Dir/Sub", *(f"/Dir/{s}" for s in shorts.values())])
    assert vol.listdir("/Dir/Sub") == []
    for short in shorts.values():
        assert vol.read_file(f"/Dir/{short}") == b"payload\n"
    with RawFileDevice(str(image), writable=True) as dev, FatEditor(dev) as ed:
        for short in shorts.values():
            ed.delete(f"/Dir/{short}")  # the long-name slots go with the entry
    assert fsck(image) == "clean"
    assert mtools("mdir", "-b", "-i", image, "::/Dir").split() == ["::/Dir/Sub/"]


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"A/B     TXT", "'/'"),
        (b"A\\B     TXT", "'\\\\'"),
        (b"AB\x01     TXT", "'\\x01'"),
        (b"           ", "empty"),
    ],
    ids=["slash", "backslash", "control", "blank"],
)
def test_a_short_name_no_path_can_hold_is_corrupt(
    base_image: bytes, raw: bytes, problem: str
) -> None:
    v = Volume(base_image)
    at = v.entry_offset("/Dir/Sub", "second.bin")  # an 8.3 name: no long-name slots
    v.dev.data[at : at + 11] = raw
    vol = v.reopen()
    err = bounded(lambda: list(vol.walk()))
    assert err.field == "name" and err.offset == at and problem in err.problem
    assert vol.read_file("/Dir/big.bin")  # other directories still read
    with pytest.raises(CorruptImage):
        vol.listdir("/Dir/Sub")
    with pytest.raises(CorruptImage):
        FatEditor(v.dev)


def test_two_entries_with_one_name_are_corrupt(base_image: bytes, tmp_path: Path) -> None:
    v = Volume(base_image)
    at = v.entry_offset("/Dir", "big.bin")
    v.dev.data[at : at + 11] = b"SUB        "  # big.bin's short entry now reads as "Sub"
    vol = v.reopen()
    err = bounded(lambda: list(vol.walk()))
    assert "one name" in err.problem and err.offset == at and err.field == "name"
    with pytest.raises(CorruptImage, match="one name"):
        vol.stat("/Dir/Sub/second.bin")
    assert "Duplicate" in fsck(v.save(tmp_path / "dup.img"))


def test_fsinfo_outside_the_reserved_region_is_never_written(tmp_path: Path) -> None:
    """A BPB whose backup boot sector points into the data region, at a file that holds the
    FSInfo signatures: the editor must not write the free count into that file."""
    require("mcopy")
    image = make_volume(tmp_path / "f32.img", 32, 64 * MiB)
    victim = bytearray(pattern(4096, 7))
    for k in range(0, 4096, 512):
        victim[k : k + 4] = s.FSINFO_LEAD_SIG.to_bytes(4, "little")
        victim[k + 484 : k + 488] = s.FSINFO_STRUC_SIG.to_bytes(4, "little")
    (tmp_path / "victim.bin").write_bytes(victim)
    mtools("mcopy", "-i", image, tmp_path / "victim.bin", "::/victim.bin")
    vol = FatVolume(MemoryDevice(image.read_bytes()))
    g = vol.geometry
    sector = vol.file_runs(vol.stat("/victim.bin"))[0][0] // g.sector_size
    with open(image, "r+b") as f:
        f.seek(50)  # BPB_BkBootSec
        f.write((sector - g.fsinfo_sector).to_bytes(2, "little"))
    with RawFileDevice(str(image), writable=True) as dev, FatEditor(dev) as ed:
        ed.write_file("/new.txt", b"n" * 100)
    got = subprocess.run(
        [require("mtype"), "-i", str(image), "::/victim.bin"], capture_output=True, env=ENV
    )
    assert got.returncode == 0 and got.stdout == bytes(victim)
    assert mtools("mtype", "-i", image, "::/new.txt") == "n" * 100
