"""``NtfsVolume.stat`` and ``directory`` walk the directory indexes instead of scanning the
MFT: on volumes that mkntfs made and ntfs-3g filled, every path of the full listing (which
tests/fs/test_ntfs_read.py checks against ntfs-3g and fls) resolves to the same entry, field
for field, and every directory lists exactly its entries of the full listing, without a scan;
a name its record no longer carries under that directory is not found and not listed, as the
listing leaves it out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice
from strata.errors import NotFound
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s
from strata.ops import fs as ops

from support.ntfs_tools import attr_offsets, small_volume, volume, write_record


def fresh(image: Path) -> NtfsVolume:
    return NtfsVolume(RawFileDevice(str(image)))


@pytest.mark.parametrize("files", [40, 5000])
def test_every_listed_path_resolves_to_its_entry(files: int) -> None:
    image = volume(files, "16M" if files == 40 else "512M")
    listed = list(fresh(image).walk())
    vol = fresh(image)
    scan = fresh(image).scan()
    r = s.ROOT_RECORD
    si = [*scan.times[r].tolist(), int(scan.attributes[r]), int(scan.security[r])]
    links = int(scan.links[r])
    root = (s.ROOT_RECORD, s.ROOT_RECORD, True, 0, *si[:4], si[4], si[5], links, 0, ())
    assert dataclasses.astuple(vol.root())[2:] == root
    for entry in listed:
        assert vol.stat(entry.path) == entry, entry.path
    assert vol._listing is None, "stat scanned the volume"
    assert len(listed) > files


@pytest.mark.parametrize("files", [40, 5000])
def test_every_directory_lists_its_entries_of_the_full_listing(files: int) -> None:
    image = volume(files, "16M" if files == 40 else "512M")
    listed = list(fresh(image).walk())
    below: dict[str, list] = {}
    for e in listed:
        below.setdefault(e.path.rpartition("/")[0], []).append(e)
    vol = fresh(image)
    dirs = ["", *(e.path for e in listed if e.is_dir)]
    for d in dirs:
        entries, problems = vol.directory(d or "/")
        assert sorted(entries, key=lambda e: e.path) == sorted(
            below.get(d, []), key=lambda e: e.path
        ), d
        assert problems == []
    whole, problems = vol.subtree("/")  # every directory, walked: the whole listing
    assert sorted(whole, key=lambda e: e.path) == sorted(listed, key=lambda e: e.path)
    assert vol._listing is None, "directory scanned the volume"
    assert len(dirs) > 10 and problems == []


def test_ls_of_one_directory_is_the_recursive_rows_below_it() -> None:
    """The CLI-facing rows (links, streams, times as text) of ``ls DIR`` built from the
    index walk, against the same rows of ``ls -r`` built from the full scan."""
    image = str(volume(40, "16M"))
    for system in (False, True):
        whole = ops.ls(image, "/", True, system)["entries"]
        dirs = ["/", *(r["path"] for r in whole if r["type"] in ("dir", "junction"))]
        for d in dirs:
            parent = "" if d == "/" else d
            expected = [r for r in whole if r["path"].rpartition("/")[0] == parent]
            assert ops.ls(image, d, False, system)["entries"] == expected, d


def test_case_insensitive_and_missing() -> None:
    image = volume(40, "16M")
    listed = list(fresh(image).walk())
    folded: dict[str, list[int]] = {}
    for e in listed:
        folded.setdefault(e.path.casefold(), []).append(e.record)
    vol = fresh(image)
    checked = 0
    for e in listed:
        if len(folded[e.path.casefold()]) == 1 and e.path.swapcase() != e.path:
            assert vol.stat(e.path.swapcase()).record == e.record, e.path
            checked += 1
    assert checked > 20
    for missing in ("/no/such/file", "/docs/readme.txt/below-a-file", "/docs/readme.tx"):
        with pytest.raises(NotFound):
            vol.stat(missing)
    assert vol.stat("\\docs\\readme.txt") == vol.stat("/docs/./readme.txt")


def test_a_name_its_record_no_longer_carries(tmp_path: Path) -> None:
    """The index still lists the file, but its $FILE_NAME names another parent sequence (a
    stale entry): the listing drops the path with a problem, and stat does not find it."""
    image = small_volume(tmp_path)
    vol = fresh(image)
    number = vol.stat("/docs/readme.txt").record
    rec = bytearray(vol.record(number))
    for at in attr_offsets(bytes(rec))[s.FILE_NAME]:
        value = at + int.from_bytes(rec[at + 20 : at + 22], "little")
        rec[value + 6] ^= 0x5A  # the parent reference's sequence number
    write_record(image, vol.record_offset(number), bytes(rec))
    damaged = fresh(image)
    with pytest.raises(NotFound):
        damaged.stat("/docs/readme.txt")
    assert "/docs/readme.txt" not in {e.path for e in damaged.listdir("/docs")}
    assert "/docs/with-ads.txt" in {e.path for e in damaged.listdir("/docs")}
    assert "/docs/readme.txt" not in damaged.scan().paths
    assert any(p.record == number for p in damaged.scan().problems)


@pytest.mark.parametrize("files", [40, 5000])
def test_ls_r_of_a_subtree_walks_the_indexes_to_the_scans_rows(files: int) -> None:
    """``ls -r DIR`` through the subtree walk (let run to the end) gives the rows the full
    scan gives, for every directory, with and without --system, and scans nothing."""
    image = volume(files, "16M" if files == 40 else "512M")
    dirs = [e.path for e in fresh(image).walk() if e.is_dir]
    assert len(dirs) > 10
    for system in (False, True):
        for d in dirs:
            walking = fresh(image)
            walked, met = ops._ntfs_ls(walking, d, True, system, walk_limit=1 << 40)
            assert walking._listing is None, d
            scanned, problems = ops._ntfs_ls(fresh(image), d, True, system, walk_limit=0)
            assert walked.rows() == scanned.rows(), d
            assert met == problems == []


def test_ls_r_walks_a_small_subtree_and_scans_for_a_big_one() -> None:
    """By default the walk stops at 1/64 of the MFT's records (5 118 here: 79 entries)."""
    image = str(volume(5000))
    small, big = fresh(Path(image)), fresh(Path(image))
    ops._ntfs_ls(small, "/docs", True, False)
    assert small._listing is None
    rows, _ = ops._ntfs_ls(big, "/many", True, False)
    assert big._listing is not None and len(rows) > 5000
