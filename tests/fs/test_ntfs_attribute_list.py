"""Files whose attributes overflow one MFT record ($ATTRIBUTE_LIST + extension records): many
hard links, many alternate data streams, a heavily fragmented file — listed and read as ntfs-3g
and sleuthkit see them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s

from support.ntfs_tools import fls, icat, make_volume, mounted, walk_mount

LINKS, STREAMS, PIECES = 40, 30, 1200


def populate(root: Path) -> None:
    (root / "many-names").mkdir()
    first = root / "many-names" / "name-00 with a fairly long file name to fill records.txt"
    first.write_bytes(b"one inode, many names\n")
    for i in range(1, LINKS):
        os.link(first, root / "many-names" / f"name-{i:02d} with a fairly long file name.txt")
    target = root / "streams.txt"
    target.write_bytes(b"main\n")
    for i in range(STREAMS):
        with open(f"{target}:stream number {i:02d} with a long name", "wb") as f:
            f.write(f"stream {i}\n".encode() * (i + 1) * 40)
    # fill the volume, then free every other file: the next big file can only fragment
    (root / "holes").mkdir()
    made = 0
    try:
        while made < 20000:
            (root / "holes" / f"h{made:05d}").write_bytes(bytes(4096))
            made += 1
    except OSError:
        pass
    for i in range(0, made, 2):
        (root / "holes" / f"h{i:05d}").unlink()
    pieces = min(PIECES, made // 2 - 64)
    (root / "fragmented.bin").write_bytes(b"".join(bytes([i % 251]) * 4096 for i in range(pieces)))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volume(tmp_path_factory.mktemp("attrlist") / "vol.img", "20M", populate)


@pytest.fixture(scope="module")
def vol(image: Path) -> NtfsVolume:
    return NtfsVolume(RawFileDevice(str(image)))


def test_extension_records_exist(vol: NtfsVolume) -> None:
    number = vol.stat("/streams.txt").record
    attrs = vol.attributes(number)
    assert any(a.type == s.ATTRIBUTE_LIST for a in attrs)
    assert {a.record for a in attrs} != {number}


def test_listing_matches_ntfs3g_and_fls(vol: NtfsVolume, image: Path) -> None:
    with mounted(image) as mnt:
        seen = walk_mount(mnt)
    mine = {e.path: e for e in vol.walk() if not e.is_system}
    assert set(mine) == set(seen)
    for path, e in mine.items():
        if not e.is_dir:
            assert e.size == seen[path].size, path
            assert hashlib.sha256(vol.read_file(e)).hexdigest() == seen[path].sha256, path
    names = [p for p in mine if p.startswith("/many-names/")]
    assert len(names) == LINKS and len({mine[p].record for p in names}) == 1
    assert all(mine[p].links == LINKS for p in names)
    rows = fls(image)
    assert {("/" + r.path.split(":")[0], r.record) for r in rows} == {
        (e.path, e.record) for e in vol.walk()
    }
    streams = {r.path.split(":", 1)[1]: r for r in rows if r.path.startswith("streams.txt:")}
    assert len(streams) == STREAMS
    assert dict(mine["/streams.txt"].streams) == {n: r.size for n, r in streams.items()}
    for name, row in streams.items():
        assert vol.read_file(f"/streams.txt:{name}") == icat(image, row.inode)


def test_fragmented_content(vol: NtfsVolume, image: Path) -> None:
    e = vol.stat("/fragmented.bin")
    extents, size = vol.stream(e.record)
    runs = vol._joined_runs(extents, 0)
    assert len(runs) > 100 and size == 4096 * sum(r.clusters for r in runs)
    assert vol.read_file("/fragmented.bin") == icat(image, str(e.record))


def test_lookups_through_the_index_match_the_listing(image: Path) -> None:
    """``stat`` and ``directory`` read extension records as the scan does: every entry (40
    names of one file, 30 streams, a 1 200-piece runlist) equals the listing's."""
    listed = list(NtfsVolume(RawFileDevice(str(image))).walk())
    vol = NtfsVolume(RawFileDevice(str(image)))
    for entry in listed:
        assert vol.stat(entry.path) == entry, entry.path
    for d in ("/", "/many-names"):
        parent = "" if d == "/" else d
        below = [e for e in listed if e.path.rpartition("/")[0] == parent]
        assert sorted(vol.listdir(d), key=lambda e: e.path) == sorted(below, key=lambda e: e.path)
    assert len(vol.stat("/streams.txt").streams) == STREAMS
    walked = vol.subtree("/")
    assert walked is not None
    assert sorted(walked[0], key=lambda e: e.path) == sorted(listed, key=lambda e: e.path)
    assert vol._listing is None
