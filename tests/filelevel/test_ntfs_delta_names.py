"""NTFS names a packaging machine's volume may hold, through the NTFS file delta: names that
differ only in case (ntfs-3g makes them in the POSIX namespace) are two files, both carried;
a name no path can hold (``..``, ``.``, one holding ``/`` or NUL, written into the record by
a hostile tool), two records named by one path, a parent-reference cycle and a file whose
parent directory is gone refuse the volume (CorruptImage, which finalize records as the
volume skipped), instead of a path naming another file or files silently left out."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from strata.blockdev import RawFileDevice
from strata.errors import CorruptImage, StrataError
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s
from strata.layer import filedelta as fd
from strata.layer import ntfsdelta
from strata.store import Store

from support.integrity_tools import can_mount
from support.ntfs_delta_tools import changed_blocks
from support.ntfs_tools import (
    attr_offsets,
    make_volume,
    mounted,
    rename_record,
    set_parent,
    write_record,
)

pytestmark = pytest.mark.skipif(not can_mount(), reason="ntfs-3g FUSE mounts need root")
CYCLE_FILES = 300


def _fill(root: Path) -> None:
    (root / "Data").mkdir()
    (root / "A" / "B").mkdir(parents=True)


def _change(root: Path) -> None:
    data = root / "Data"
    (data / "Case.txt").write_bytes(b"upper\n")
    (data / "case.txt").write_bytes(b"lower\n")
    for name in ("dotdot", "dot", "slash", "nul", "twin"):
        (data / f"{name}-victim").write_bytes(name.encode())
    (data / "twin-victin").write_bytes(b"the other twin")
    for i in range(CYCLE_FILES):
        (root / "A" / "B" / f"f{i:03d}").write_bytes(b"%d" % i)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ntfsnames")
    base = make_volume(root / "base.img", "16M", _fill)
    child = root / "child.img"
    shutil.copyfile(base, child)
    with mounted(child, rw=True) as mnt:
        _change(mnt)
    return {"root": root, "base": base, "child": child, "store": Store.init(root / "store")}


def _capture(world: dict[str, Any], child: Path) -> fd.FileDelta:
    with RawFileDevice(str(world["base"])) as old, RawFileDevice(str(child)) as new:
        changed = changed_blocks(world["base"], child)
        return fd.capture_volume(world["store"], NtfsVolume(old), NtfsVolume(new), changed)


def _copy(world: dict[str, Any], name: str) -> Path:
    dest = world["root"] / f"{name}.img"
    shutil.copyfile(world["child"], dest)
    return dest


def test_names_that_differ_only_in_case_are_both_carried(world: dict[str, Any]) -> None:
    with mounted(world["child"]) as mnt:
        assert sorted(p.name for p in (mnt / "Data").iterdir() if "case" in p.name.lower()) == [
            "Case.txt",
            "case.txt",
        ]
    delta = _capture(world, world["child"])
    rows = {delta.path(i): i for i in range(len(delta.entries))}
    for path, data in (("/Data/Case.txt", b"upper\n"), ("/Data/case.txt", b"lower\n")):
        assert delta.entries[rows[path]]["change"] == fd.ADDED
        assert b"".join(fd.read_content(world["store"], delta.chunk_rows(rows[path]))) == data
    assert len([p for p in rows if p.startswith("/A/B/")]) == CYCLE_FILES


@pytest.mark.parametrize(
    "victim, name",
    [("dotdot", ".."), ("dot", "."), ("slash", "x/y"), ("nul", "a\0b")],
)
def test_a_name_no_path_can_hold_refuses_the_volume(
    world: dict[str, Any], victim: str, name: str
) -> None:
    child = _copy(world, victim)
    number = rename_record(child, f"/Data/{victim}-victim", name)
    with pytest.raises(CorruptImage, match="cannot be a path component") as err:
        _capture(world, child)
    assert err.value.structure == f"MFT record {number}"
    assert err.value.field == "$FILE_NAME.name"


def test_two_records_named_by_one_path_refuse_the_volume(world: dict[str, Any]) -> None:
    """Two in-use records with one name in one directory: either kept alone would drop the
    other file silently."""
    child = _copy(world, "twins")
    number = rename_record(child, "/Data/twin-victin", "twin-victim")
    with pytest.raises(CorruptImage, match="both are named '/Data/twin-victim'") as err:
        _capture(world, child)
    assert str(number) in err.value.structure and err.value.field == "$FILE_NAME.name"


def test_a_parent_cycle_refuses_the_volume_quickly(world: dict[str, Any]) -> None:
    """/A's parent made /A/B: the files below are in no path; they were left out silently."""
    child = _copy(world, "cycle")
    with RawFileDevice(str(child)) as dev:
        vol = NtfsVolume(dev)
        a, b = vol.stat("/A"), vol.stat("/A/B")
        rec = bytearray(vol.record(a.record))
        seq_b = int.from_bytes(vol.record(b.record)[16:18], "little")
        at = vol.record_offset(a.record)
    value = attr_offsets(rec)[s.FILE_NAME][0]
    value += int.from_bytes(rec[value + 20 : value + 22], "little")
    rec[value : value + 8] = (b.record | seq_b << 48).to_bytes(8, "little")
    write_record(child, at, bytes(rec))
    started = time.perf_counter()
    with pytest.raises(CorruptImage, match="parent reference cycle") as err:
        _capture(world, child)
    assert time.perf_counter() - started < 10
    assert err.value.field == "$FILE_NAME.parent"
    assert err.value.structure in (f"MFT record {a.record}", f"MFT record {b.record}")


@pytest.mark.parametrize("parent", ["a file", "a free record", "an older sequence"])
def test_a_file_whose_parent_is_gone_refuses_the_volume(world: dict[str, Any], parent: str) -> None:
    """An in-use record whose parent directory is gone (chkdsk's orphan) has no path: it was
    left out of the delta silently, so publish lost the file without a word."""
    child = _copy(world, "orphan")
    with RawFileDevice(str(child)) as dev:
        vol = NtfsVolume(dev)
        case, b = vol.stat("/Data/Case.txt").record, vol.stat("/A/B").record
        seq_case = int.from_bytes(vol.record(case)[16:18], "little")
        seq_b = int.from_bytes(vol.record(b)[16:18], "little")
        free = next(
            r
            for r in range(s.FIRST_USER_RECORD, vol.record_count)
            if not int.from_bytes(vol.record(r)[22:24], "little") & s.RECORD_IN_USE
        )
    ref = {
        "a file": case | seq_case << 48,
        "a free record": free | 1 << 48,
        "an older sequence": b | (seq_b - 1) << 48,
    }[parent]
    number = set_parent(child, "/A/B/f007", ref)
    with pytest.raises(CorruptImage, match="is gone") as err:
        _capture(world, child)
    assert err.value.structure == f"MFT record {number}"
    assert err.value.field == "$FILE_NAME.parent"
    assert str(ref & s.REF_RECORD_MASK) in err.value.problem


def test_deep_directories_resolve_whatever_the_order(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk up more directories than MAX_DEPTH, none of them resolved yet, gave no path:
    the files below were left out of the delta, or not, by the order the walks ran in."""
    monkeypatch.setattr(ntfsdelta, "MAX_DEPTH", 0)
    with RawFileDevice(str(world["child"])) as dev:
        vol = NtfsVolume(dev)
        b = vol.stat("/A/B").record
        seq = int.from_bytes(vol.record(b)[16:18], "little")
        assert ntfsdelta.Records(vol).dir_path(b, seq) == "/A/B"


def test_finalize_skips_such_a_volume_with_the_reason(world: dict[str, Any]) -> None:
    child = _copy(world, "skipped")
    rename_record(child, "/Data/slash-victim", "x/y")
    with RawFileDevice(str(world["base"])) as old, RawFileDevice(str(child)) as new:
        delta = fd.capture(world["store"], new, old, changed_blocks(world["base"], child))
    assert delta is not None and delta.volumes == []
    (skipped,) = delta.skipped
    assert skipped["partition"] == 0 and "'x/y' cannot be a path component" in skipped["reason"]
    assert np.count_nonzero(delta.entries) == 0


def test_fuzzed_names_and_parent_references(world: dict[str, Any]) -> None:
    """Random bytes in the $FILE_NAME values (parent reference, name length, namespace,
    name) of directories and files in the delta: the capture raises only StrataError, or
    gives paths that each name one entry of the tree."""
    child = _copy(world, "fuzz")
    with RawFileDevice(str(child)) as dev:
        vol = NtfsVolume(dev)
        targets = []
        for path in ("/A", "/A/B", "/A/B/f000", "/Data/Case.txt", "/Data/dot-victim"):
            number = vol.stat(path).record
            rec = vol.record(number)
            value = attr_offsets(rec)[s.FILE_NAME][0]
            value += int.from_bytes(rec[value + 20 : value + 22], "little")
            targets.append((number, vol.record_offset(number), rec, value))
    rng = np.random.default_rng(17)
    outcomes = {"refused": 0, "captured": 0}
    started = time.perf_counter()
    for _ in range(120):
        _, at, rec, value = targets[int(rng.integers(len(targets)))]
        buf = bytearray(rec)
        for _ in range(int(rng.integers(1, 4))):
            pick = rng.random()
            if pick < 0.3:  # another target's record as the parent: cycles, files as parents
                other = targets[int(rng.integers(len(targets)))][0]
                buf[value : value + 6] = other.to_bytes(6, "little")
            elif pick < 0.6:  # a short name of dots, slashes, NULs or case changes
                buf[value + 64] = int(rng.integers(0, 4))
                for k in range(buf[value + 64]):
                    unit = rng.choice([0x2E, 0x2F, 0x00, 0x46, 0x66])
                    buf[value + 66 + 2 * k : value + 68 + 2 * k] = int(unit).to_bytes(2, "little")
            else:
                pos = value + int(rng.choice([0, 1, 6, 7, 64, 65, 66, 67, 68, 69]))
                buf[pos] = int(rng.integers(0, 256))
        write_record(child, at, bytes(buf))
        try:
            delta = _capture(world, child)
        except StrataError:
            outcomes["refused"] += 1
        else:
            paths = [delta.path(i) for i in range(len(delta.entries))]
            assert all(fd.path_problem(p, fat=False) is None for p in paths), paths
            assert len(set(paths)) == len(paths), paths
            outcomes["captured"] += 1
        finally:
            write_record(child, at, rec)
    assert time.perf_counter() - started < 20
    assert outcomes["refused"] > 5 and outcomes["captured"] > 5, outcomes
