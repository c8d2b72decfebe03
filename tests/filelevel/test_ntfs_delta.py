"""Issue 9, NTFS: the file delta of a GPT disk's NTFS volume that ntfs-3g edited (the packaging
machine) is exactly the set of files added, modified and deleted; the content of added and
modified files read back from the store equals what was written (and what an ntfs-3g mount of
the child reads); only the MFT records in changed blocks are parsed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

from strata.blockdev.rawfile import RawFileDevice
from strata.fs.ntfs import NtfsVolume
from strata.layer import filedelta as fd
from strata.layer import ntfsdelta
from strata.ops import layers
from strata.partition import open_partition
from strata.store import Store

from support.filelevel_tools import back_to_child, package
from support.integrity_tools import (
    PART_START,
    can_mount,
    package_machine,
    read_from_disk,
)
from support.ntfs_delta_tools import base_and_child, changed_blocks, sector_masks
from support.ntfs_tools import set_parent
from support.tools import require, result_of, strata, strata_json

pytestmark = pytest.mark.skipif(not can_mount(), reason="ntfs-3g FUSE mounts need root")
BLOCK = 64 << 10
BIG = hashlib.sha256(b"seed").digest() * 10_000  # 320 000 bytes: several FastCDC chunks


def _base_files(root: Path) -> None:
    data = root / "Data"
    (data / "olddir" / "inner").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "inner/c.txt"):
        (data / "olddir" / name).write_bytes(name.encode() * 100)
    (data / "del.txt").write_bytes(b"to be deleted\n")
    (data / "mod.txt").write_bytes(b"version one\n" * 50)
    (data / "grow.bin").write_bytes(os.urandom(70_000))
    (data / "ren.txt").write_bytes(b"renamed later\n")
    (data / "same.txt").write_bytes(b"never touched\n")
    for i in range(200):  # enough records that the changed ones are a minority
        (data / f"filler{i:03d}.txt").write_bytes(b"filler %d\n" % i)


WRITTEN = {
    "/App/new1.txt": b"a new file\n",
    "/App/sub/big.bin": BIG,
    "/Windows/added.dll": b"MZ" + b"\x90" * 5000,
    "/Data/mod.txt": b"version two\n" * 50,
    "/App/empty.txt": b"",
    "/App/zeros.bin": bytes(3000),  # a zero chunk: its id is not its digest
}


def _change(root: Path) -> None:
    (root / "App" / "sub").mkdir(parents=True)
    for path, data in WRITTEN.items():
        (root / path.lstrip("/")).write_bytes(data)
    with open(root / "Data" / "grow.bin", "ab") as f:
        f.write(b"appended tail" * 1000)
    (root / "Data" / "del.txt").unlink()
    shutil.rmtree(root / "Data" / "olddir")
    (root / "Data" / "ren.txt").rename(root / "Data" / "renamed.txt")


EXPECTED = {
    "/App": "added",
    "/App/new1.txt": "added",
    "/App/empty.txt": "added",
    "/App/zeros.bin": "added",
    "/App/sub": "added",
    "/App/sub/big.bin": "added",
    "/Windows/added.dll": "added",
    "/Data/renamed.txt": "added",
    "/Data/mod.txt": "modified",
    "/Data/grow.bin": "modified",
    "/Data/del.txt": "deleted",
    "/Data/olddir": "deleted",
    "/Data/ren.txt": "deleted",
}
CARRIED = {p for p, c in EXPECTED.items() if c != "deleted" and p not in ("/App", "/App/sub")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ntfsdelta")
    base, child = base_and_child(root, _base_files, _change)
    return {"root": root, "base": base, "child": child}


def _contents(store: Store, delta: fd.FileDelta) -> dict[str, bytes]:
    out = {}
    for i in range(len(delta.entries)):
        if delta.entries[i]["flags"] & fd.HAS_CONTENT:
            out[delta.path(i)] = b"".join(fd.read_content(store, delta.chunk_rows(i)))
    return out


@pytest.mark.parametrize("with_masks", [False, True], ids=["blocks", "sector-masks"])
def test_delta_is_exactly_what_ntfs3g_did(world: dict[str, Any], with_masks: bool) -> None:
    root = world["root"]
    store = Store.init(root / f"store-{with_masks}")
    offsets = changed_blocks(world["base"], world["child"])
    masks = sector_masks(world["base"], world["child"], offsets) if with_masks else None
    with RawFileDevice(str(world["child"])) as new, RawFileDevice(str(world["base"])) as old:
        delta = fd.capture(store, new, old, offsets, masks=masks)
    assert delta is not None and not delta.skipped
    store.flush()
    assert [(v.partition, v.fs) for v in delta.volumes] == [(1, "ntfs")]
    got = {
        delta.path(i): fd.CHANGE_NAMES[int(delta.entries[i]["change"])]
        for i in range(len(delta.entries))
    }
    assert got == EXPECTED
    with store:
        contents = _contents(store, delta)
    assert set(contents) == CARRIED
    for path, data in WRITTEN.items():
        assert contents[path] == data
    for i in range(len(delta.entries)):  # the digest is of the content read back
        if delta.entries[i]["flags"] & fd.HAS_CONTENT:
            want = xxhash.xxh3_128_digest(contents[delta.path(i)])
            assert bytes(delta.entries[i]["digest"]) == want, delta.path(i)
    oracle = read_from_disk(world["child"], "Data/grow.bin", root / "grow.oracle", root)
    assert contents["/Data/grow.bin"] == oracle.read_bytes()
    big = next(i for i in range(len(delta.entries)) if delta.path(i) == "/App/sub/big.bin")
    assert len(delta.chunk_rows(big)) >= 2 and delta.entries[big]["size"] == len(BIG)
    facts = delta.ntfs_row(big)
    assert facts is not None and facts["attributes"] & 0x20  # archive, as ntfs-3g sets it


def test_only_changed_records_are_parsed(world: dict[str, Any]) -> None:
    offsets = changed_blocks(world["base"], world["child"])
    with RawFileDevice(str(world["child"])) as dev:
        vol = NtfsVolume(open_partition(dev, 1))
        bitmap = fd._block_bitmap(offsets, dev.size)
        nums = ntfsdelta.changed_records(vol, PART_START, bitmap)
        recs = ntfsdelta.Records(vol)
        recs.load(nums)
        listing = vol.scan()
    assert nums.size < vol.record_count  # the unchanged fillers lie in unchanged blocks
    filler = listing.owner[[i for i, p in enumerate(listing.paths) if p == "/Data/filler000.txt"]]
    new = listing.owner[[i for i, p in enumerate(listing.paths) if p == "/App/sub/big.bin"]]
    assert int(new[0]) in set(nums.tolist())
    changed_disk = set((offsets // BLOCK).tolist())
    rec_block = (PART_START + vol.record_offset(int(filler[0]))) // BLOCK
    assert (int(filler[0]) in set(nums.tolist())) == (rec_block in changed_disk)


def test_masks_name_exactly_the_records_that_differ(world: dict[str, Any]) -> None:
    """The sector masks give the records whose bytes differ, found here by comparing every
    record of base and child (the records in unchanged sectors are not among them)."""
    offsets = changed_blocks(world["base"], world["child"])
    masks = sector_masks(world["base"], world["child"], offsets)
    with RawFileDevice(str(world["child"])) as new, RawFileDevice(str(world["base"])) as old:
        a, b = NtfsVolume(open_partition(old, 1)), NtfsVolume(open_partition(new, 1))
        got = np.union1d(
            ntfsdelta.masked_records(b, PART_START, masks, 512),
            ntfsdelta.masked_records(a, PART_START, masks, 512),
        )
        every = np.arange(min(a.record_count, b.record_count))
        x, _ = a.read_records(every)
        y, _ = b.read_records(every)
    differ = np.flatnonzero((x != y).any(axis=1))
    grown = np.arange(a.record_count, b.record_count)
    assert got.tolist() == np.union1d(differ, grown).tolist()
    assert 0 < got.size < every.size // 4


def test_unnamed_data_in_bulk_equals_record_by_record(world: dict[str, Any]) -> None:
    """The numpy reading of each record's unnamed $DATA (resident value, single-run runlist)
    gives what the record-by-record reader gives, on every record of the child volume."""
    with RawFileDevice(str(world["child"])) as dev:
        vol = NtfsVolume(open_partition(dev, 1))
        recs = ntfsdelta.Records(vol)
        every = np.arange(vol.record_count)
        recs.load(every)
        fixed = [vol.record(int(r)) for r in every]
    expected = {r: ntfsdelta.record_data(vol, rec) for r, rec in enumerate(fixed)}
    resident = {r: v for r, v in expected.items() if isinstance(v, bytes)}
    runs = {r: v for r, v in expected.items() if isinstance(v, ntfsdelta.Plain)}
    in_use = {r for r in every.tolist() if recs.in_use(r)}  # base records in use
    assert {r: v for r, v in recs.resident.items() if r in in_use} == {
        r: v for r, v in resident.items() if r in in_use
    }
    assert {r: v for r, v in recs.runs.items() if r in in_use} == {
        r: v for r, v in runs.items() if r in in_use
    }
    assert len(resident) > 100 and any(len(v.runs) == 1 for v in runs.values())


def test_finalize_and_layer_diff_show_ntfs_entries(world: dict[str, Any]) -> None:
    root = world["root"] / "e2e"
    root.mkdir()
    store = root / "store"
    layers.import_os("win", "1", str(world["base"]), store=store)
    pkg = package(store, "app-ntfs", root / "out")
    package_machine(pkg, root, _change)
    done = layers.finalize(
        pkg["disk_path"], pkg["layer"], pkg["version"], store=store, target="pvs"
    )
    assert done["file_delta"]["volumes"] == [1]
    added = sum(1 for change in EXPECTED.values() if change == "added")
    assert done["file_delta"]["added"] == added and done["file_delta"]["deleted"] == 3
    ref = f"{pkg['layer']}:{pkg['version']}"
    shown = result_of(strata_json("layer", "diff", ref, "--store", store))
    (volume,) = shown["volumes"]
    assert volume["partition"] == 1 and volume["filesystem"] == "ntfs"
    assert {e["path"]: e["change"] for e in volume["entries"]} == EXPECTED


def test_a_torn_changed_record_skips_the_volume(world: dict[str, Any]) -> None:
    """A changed record that fails its update sequence check is not taken for a deletion."""
    root = world["root"]
    torn = root / "torn.raw"
    shutil.copyfile(world["child"], torn)
    with RawFileDevice(str(torn)) as dev:
        vol = NtfsVolume(open_partition(dev, 1))
        record = vol.stat("/App/sub/big.bin").record
        at = PART_START + vol.record_offset(record)
    with open(torn, "r+b") as f:
        f.seek(at + 510)  # the first sector's check value: the update sequence disagrees
        f.write(b"\xde\xad")
    store = Store.init(root / "torn-store")
    offsets = changed_blocks(world["base"], torn)
    with store, RawFileDevice(str(torn)) as new, RawFileDevice(str(world["base"])) as old:
        delta = fd.capture(store, new, old, offsets)
    assert delta is not None and delta.volumes == [] and len(delta.entries) == 0
    (skipped,) = delta.skipped
    assert skipped["partition"] == 1 and f"MFT record {record}" in skipped["reason"]


def _project(root: Path) -> None:
    proj = root / "Data" / "proj"
    (proj / "sub" / "deeper").mkdir(parents=True)
    for i in range(150):  # enough names that the index spills into INDX blocks
        (proj / f"file{i:03d}.txt").write_bytes(b"project file %d\n" % i * (1 + i % 40))
    (proj / "sub" / "big.bin").write_bytes(BIG)
    (proj / "sub" / "deeper" / "leaf.txt").write_bytes(b"leaf\n")
    (root / "Data" / "stays.txt").write_bytes(b"untouched\n")
    (root / "Data" / "keep" / "inner").mkdir(parents=True)
    for name in ("one.txt", "two.txt", "inner/three.txt"):
        (root / "Data" / "keep" / name).write_bytes(name.encode() * 30)


def _move(root: Path) -> None:
    (root / "Apps").mkdir()
    (root / "Data" / "proj").rename(root / "Apps" / "proj2")  # mv of a directory holding files
    (root / "Data" / "keep").rename(root / "Data" / "kept")  # renamed where it is


def _fls_paths(image: Path) -> set[str]:
    """``fls -r -p`` of partition 1: every allocated name's path."""
    out = subprocess.run(
        [require("fls"), "-r", "-p", "-o", str(PART_START // 512), str(image)],
        check=True,
        capture_output=True,
    ).stdout.decode("utf-8", "surrogateescape")
    paths = set()
    for line in out.splitlines():
        head, _, path = line.partition("\t")
        if "*" not in head and ":" not in path:
            paths.add("/" + path)
    return paths


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ntfsrename")
    return (root, *base_and_child(root, _project, _move))


def test_renamed_directory_is_deleted_and_added_with_its_subtree(
    moved: tuple[Path, Path, Path],
) -> None:
    """``mv`` of a directory through ntfs-3g: the old path is deleted, the new one added with
    every name below it (what fls lists under it in the child), each file with its content."""
    root, base, child = moved
    offsets = changed_blocks(base, child)
    masks = sector_masks(base, child, offsets)
    store = Store.init(root / "store")
    with RawFileDevice(str(child)) as new, RawFileDevice(str(base)) as old:
        delta = fd.capture(store, new, old, offsets, masks=masks)
    assert delta is not None and not delta.skipped, delta and delta.skipped
    store.flush()
    got = {
        delta.path(i): fd.CHANGE_NAMES[int(delta.entries[i]["change"])]
        for i in range(len(delta.entries))
    }
    listed = _fls_paths(child)
    below = {p for p in listed if p.startswith("/Apps/")}
    kept = {p for p in listed if p.startswith("/Data/kept/")}
    assert len(below) == 150 + 5 and len(kept) == 4
    expected = {
        "/Data/proj": "deleted",
        "/Apps": "added",
        **dict.fromkeys(below, "added"),
        "/Data/keep": "deleted",
        "/Data/kept": "added",
        **dict.fromkeys(kept, "added"),
    }
    assert got == expected
    with store:
        contents = _contents(store, delta)
    assert contents["/Apps/proj2/sub/big.bin"] == BIG
    assert contents["/Apps/proj2/file007.txt"] == b"project file 7\n" * 8
    oracle = read_from_disk(child, "Apps/proj2/sub/deeper/leaf.txt", root / "leaf.oracle", root)
    assert contents["/Apps/proj2/sub/deeper/leaf.txt"] == oracle.read_bytes()
    dirs = {
        delta.path(i) for i in range(len(delta.entries)) if delta.entries[i]["kind"] == fd.DIRECTORY
    }
    assert set(contents) == (below | kept) - dirs
    assert contents["/Data/kept/inner/three.txt"] == b"inner/three.txt" * 30


def test_base_paths_shared_with_the_child_are_the_base_paths(
    moved: tuple[Path, Path, Path],
) -> None:
    """The base side takes a directory's path from the child's records when the directory
    and its ancestors did not change (``Records.same_chain``): every base path it gives,
    below the moved directory and elsewhere, equals the base's own resolution."""
    _, base, child = moved
    offsets = changed_blocks(base, child)
    masks = sector_masks(base, child, offsets)
    with RawFileDevice(str(base)) as b, RawFileDevice(str(child)) as c:
        old, new = NtfsVolume(open_partition(b, 1)), NtfsVolume(open_partition(c, 1))
        listing = old.scan()
        every = ntfsdelta.masked_records(new, PART_START, masks, 512)
        every = every[every >= 16]
        before, after, alone = (
            ntfsdelta.Records(old),
            ntfsdelta.Records(new),
            ntfsdelta.Records(old),
        )
        after.load(every)
        after.load_parents(every)
        before.twin, before.changed = after, every
        users = np.unique(listing.owner[listing.owner >= 16])
        before.load(users)
        alone.load(users)
        before.load_parents(users)
        alone.load_parents(users)
        shared = [r for r in users.tolist() if before.names.get(r)]
        paths = {r: [before.path_of(p, n, r) for p, n in before.names[r]] for r in shared}
        own = {r: [alone.path_of(p, n, r) for p, n in alone.names[r]] for r in shared}
        renamed = next(r for r in users.tolist() if own.get(r) == ["/Data/keep"])
    assert paths == own
    assert any(p.startswith("/Data/keep/inner/") for ps in own.values() for p in ps)
    assert renamed in set(every.tolist()) and not before.same_chain(renamed)
    taken = [ref for ref, path in before.prefixes.items() if path is after.prefixes.get(ref)]
    assert taken and all(before.same_chain(ref & 0xFFFF_FFFF_FFFF) for ref in taken)


def test_directory_index_lists_what_the_scan_finds(world: dict[str, Any]) -> None:
    """Children read from each directory's $I30 index (no scan) equal the full listing's."""
    with RawFileDevice(str(world["child"])) as dev:
        vol = NtfsVolume(open_partition(dev, 1))
        listing = vol.scan()
        dirs = sorted(set(listing.owner[listing.is_dir[listing.owner]].tolist()))
        for d in dirs:
            got = {ref & ((1 << 48) - 1) for ref in vol.directory_children(d)}
            assert got == set(listing.owner[listing.parent == d].tolist()), d
    assert len(dirs) > 5


def test_finalize_names_a_volume_it_has_no_file_delta_for(world: dict[str, Any]) -> None:
    """A changed file whose parent directory is gone (an orphan): finalize still makes the
    version deployable from its blocks, and says, on stderr and in ``layer diff``, which
    volume has no file delta and why; it used to leave that file out of the delta silently."""
    root = world["root"] / "orphan"
    root.mkdir()
    store = root / "store"
    layers.import_os("win", "1", str(world["base"]), store=store)
    pkg = package(store, "app-orphan", root / "out")
    raw = package_machine(pkg, root, _change)
    number = set_parent(raw, "/App/sub/big.bin", 1 << 48 | 12345, PART_START)
    back_to_child(pkg, raw)
    ref = f"{pkg['layer']}:{pkg['version']}"
    done = strata("finalize", "--disk", pkg["disk_path"], "--layer", pkg["layer"],
                  "--version", pkg["version"], "--store", store)  # fmt: skip
    assert done.returncode == 0, done.stderr
    why = f"MFT record {number}: its parent directory, record 12345"
    (line,) = [ln for ln in done.stderr.splitlines() if "no file delta" in ln]
    assert line.startswith("strata: warning: partition 1: no file delta: ") and why in line
    assert f"{ref} is deployable" in done.stdout
    shown = result_of(strata_json("layer", "diff", ref, "--store", store))
    assert shown["volumes"] == [] and why in shown["skipped"][0]["reason"]
    assert any(
        why in ln for ln in strata("layer", "diff", ref, "--store", store).stdout.splitlines()
    )
