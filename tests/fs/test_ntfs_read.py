"""The NTFS reader against ntfs-3g (mount + os.walk + hashlib) and sleuthkit (fls, icat) on a
volume made by mkntfs and filled through ntfs-3g: ~5 000 files, hard links, ADS, sparse and
LZNT1-compressed files, symlinks (Interix and reparse-point), a junction, deep and non-ASCII
paths.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strata.blockdev import RawFileDevice
from strata.fs import detect
from strata.fs.ntfs import NtfsVolume, link_of
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.records import distinct

from support.ntfs_tools import fls, icat, make_volume, mounted, volume, walk_mount

FILES = 5000


@pytest.fixture(scope="module")
def image() -> Path:
    return volume(FILES)


@pytest.fixture(scope="module")
def vol(image: Path) -> NtfsVolume:
    return NtfsVolume(RawFileDevice(str(image)))


@pytest.fixture(scope="module")
def seen(image: Path) -> dict:
    with mounted(image) as mnt:
        return walk_mount(mnt)


def ours(vol: NtfsVolume) -> dict:
    out = {}
    for e in vol.walk():
        if e.is_system:
            continue
        link = link_of(vol, e)
        kind = "dir" if e.is_dir else "file"
        if link is not None:
            kind = "symlink"  # ntfs-3g shows junctions as symlinks too
        out[e.path] = (kind, e)
    return out


def test_detect(vol: NtfsVolume) -> None:
    assert detect(vol.dev) == "ntfs"
    assert vol.geometry.record_size == 1024
    assert not vol.scan().problems


def test_tree_matches_ntfs3g(vol: NtfsVolume, seen: dict) -> None:
    mine = ours(vol)
    assert set(mine) == set(seen)
    assert len(mine) > FILES
    for path, (kind, e) in mine.items():
        assert kind == seen[path].type, path
        if kind == "file":
            assert e.size == seen[path].size, path


def test_content_matches_ntfs3g(vol: NtfsVolume, seen: dict) -> None:
    mine = ours(vol)
    for path, (kind, e) in mine.items():
        if kind == "file":
            digest = hashlib.sha256(b"".join(vol.iter_file(e))).hexdigest()
            assert digest == seen[path].sha256, path


def test_links_match_ntfs3g(vol: NtfsVolume, seen: dict) -> None:
    assert link_of(vol, vol.stat("/link-to-readme")) == ("symlink", "docs/readme.txt")
    assert link_of(vol, vol.stat("/docs/windows-symlink")) == ("symlink", "readme.txt")
    assert seen["/docs/windows-symlink"].target == "readme.txt"
    assert seen["/link-to-readme"].target == "docs/readme.txt"
    assert seen["/dangling-abs"].target == link_of(vol, vol.stat("/dangling-abs"))[1]
    kind, target = link_of(vol, vol.stat("/junction"))
    assert kind == "junction" and vol.stat("/junction").reparse_tag == s.TAG_MOUNT_POINT
    assert seen["/junction"].target.endswith(target.replace("\\", "/"))


def test_names_match_fls(vol: NtfsVolume, image: Path) -> None:
    rows = fls(image)
    # fls names a file without an unnamed $DATA only by its streams ("$Secure:$SDS")
    base = {("/" + r.path.split(":")[0], r.record) for r in rows}
    mine = {(e.path, e.record) for e in vol.walk()}
    assert mine == base
    sizes = {f"/{r.path}": r.size for r in rows if r.attr_type == 128}
    assert len(sizes) > FILES
    for e in vol.walk():
        if not e.is_dir and e.path in sizes:
            assert e.size == sizes[e.path], e.path
        for name, size in e.streams:
            assert sizes[f"{e.path}:{name}"] == size


def test_streams_match_fls_and_icat(vol: NtfsVolume, image: Path) -> None:
    rows = [r for r in fls(image) if r.attr_type == 128 and ":" in r.path and r.record >= 16]
    assert {r.path.split(":")[1] for r in rows} == {"extra", "Zone.Identifier"}
    for r in rows:
        assert vol.read_file(f"/{r.path}") == icat(image, r.inode)
    with mounted(image) as mnt:
        extra = (mnt / "docs" / "with-ads.txt:extra").read_bytes()
    assert vol.read_file("/docs/with-ads.txt:extra") == extra


SPECIAL = (
    "/compressed/text.txt",
    "/compressed/mixed.bin",
    "/compressed/small.txt",
    "/docs/sparse.bin",
    "/docs/big.bin",
    "/docs/Ünïcödé dir/日本語 ファイル.txt",
    "/links/second name.txt",
)


@pytest.mark.parametrize("path", SPECIAL)
def test_special_files_match_icat(vol: NtfsVolume, image: Path, path: str) -> None:
    e = vol.stat(path)
    assert vol.read_file(path) == icat(image, str(e.record))


def test_compressed_files_are_lznt1(vol: NtfsVolume, seen: dict) -> None:
    for path in ("/compressed/text.txt", "/compressed/mixed.bin"):
        e = vol.stat(path)
        data = next(a for a in vol.attributes(e.record) if a.type == s.DATA and not a.name)
        assert data.compressed and data.compression_unit == 4 and data.non_resident
        assert e.attributes & 0x800
        content = vol.read_file(path)
        assert hashlib.sha256(content).hexdigest() == seen[path].sha256


def test_sparse_file(vol: NtfsVolume) -> None:
    e = vol.stat("/docs/sparse.bin")
    assert e.attributes & 0x200 and e.size == 40 << 20
    runs = vol._joined_runs(vol.stream(e.record)[0], 0)
    assert any(r.lcn is None for r in runs)


def test_hard_links(vol: NtfsVolume) -> None:
    names = ("/links/original.txt", "/links/second name.txt", "/docs/third name.txt")
    entries = [vol.stat(p) for p in names]
    assert len({e.record for e in entries}) == 1
    assert all(e.links == 3 for e in entries)


def test_deep_path_and_lookup(vol: NtfsVolume) -> None:
    deep = "/" + "/".join(f"level{d:02d}" for d in range(24)) + "/bottom.txt"
    assert vol.read_file(deep) == b"deep down\n"
    assert vol.stat("/DOCS/README.TXT").record == vol.stat("/docs/readme.txt").record
    assert {e.name for e in vol.listdir("/links")} == {"original.txt", "second name.txt"}


def test_security_descriptors_match_ntfs3g(vol: NtfsVolume, image: Path) -> None:
    with mounted(image) as mnt:
        for path in ("/docs/readme.txt", "/docs", "/compressed/text.txt"):
            acl = os.getxattr(f"{mnt}{path}", "system.ntfs_acl")
            assert vol.security(vol.stat(path).record) == acl
    assert vol.owner_sid(vol.stat("/docs/readme.txt").record).startswith("S-1-5-")
    ids = vol.security_ids()
    assert ids, "$Secure:$SDS holds the descriptors mkntfs wrote"
    for sid in ids:
        sd = vol.security_descriptor(sid)
        assert sd is not None and sd[0] == 1  # self-relative descriptor revision
    # system files carry security ids into $Secure
    mft_attrs = vol.attributes(0)
    info = next(a for a in mft_attrs if a.type == s.STANDARD_INFORMATION).value
    secid = int.from_bytes(info[52:56], "little")
    assert vol.security(0) == vol.security_descriptor(secid)


def test_sample_matches_icat(vol: NtfsVolume, image: Path) -> None:
    files = sorted(e.path for e in vol.walk() if not e.is_dir and not e.is_system)
    for path in random.Random(9).sample(files, 120):
        e = vol.stat(path)
        assert vol.read_file(e) == icat(image, str(e.record)), path


def _astral(root: Path) -> None:
    """Names outside the BMP (UTF-16 surrogate pairs) beside plain ones in one directory."""
    (root / "pkg").mkdir()
    for i in range(30):
        (root / "pkg" / f"plain{i:02d}.txt").write_bytes(b"x")
    (root / "pkg" / "box \U0001f4e6.txt").write_bytes(b"emoji")
    (root / "pkg" / "\U0001d49c\U0001d4b7 dir").mkdir()
    (root / "pkg" / "\U0001d49c\U0001d4b7 dir" / "inside é.txt").write_bytes(b"y")


def test_surrogate_pair_names_match_fls(tmp_path: Path) -> None:
    """A window of names holding surrogate pairs takes the name-by-name path; the listing
    still equals what fls prints."""
    image = make_volume(tmp_path / "astral.img", "16M", _astral)
    vol = NtfsVolume(RawFileDevice(str(image)))
    theirs = {"/" + r.path.split(":")[0] for r in fls(image)}
    mine = {e.path for e in vol.walk()}
    assert mine == theirs
    assert "/pkg/box \U0001f4e6.txt" in mine
    assert "/pkg/\U0001d49c\U0001d4b7 dir/inside é.txt" in mine
    entry = vol.stat("/pkg/box \U0001f4e6.txt")
    assert (
        entry.name == "box \U0001f4e6.txt" and b"".join(vol.iter_stream(entry.record)) == b"emoji"
    )


@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50), st.integers(0, 3))
def test_distinct_is_numpy_unique(values: list[int], repeats: int) -> None:
    array = np.array(values * (repeats + 1), np.int64)
    got = distinct(array)
    assert got.dtype == np.int64 and np.array_equal(got, np.unique(array))
