"""A file delta taken between two FAT32 volumes that mtools edited, applied back onto the base
by strata's editor, gives the volume mtools made: same tree, contents, attributes and times
(read by mtools), and fsck.fat finds nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev.rawfile import RawFileDevice
from strata.layer import filedelta as fd
from strata.layer.filemerge import _Merger
from strata.partition import open_partition
from strata.store import Store

from support.fat_tools import (
    extract,
    fsck,
    mtools,
    mtools_attributes,
    mtools_mtimes,
    mtools_tree,
    pattern,
    populate,
)
from support.layers import make_os_disk

MiB = 1 << 20
FAT = MiB  # partition 1 of fixtures/os_disk.sh
BLOCK = 64 << 10


def _changed_blocks(a: Path, b: Path) -> np.ndarray:
    x = np.fromfile(a, np.uint8).reshape(-1, BLOCK)
    y = np.fromfile(b, np.uint8).reshape(-1, BLOCK)
    return np.flatnonzero((x != y).any(axis=1)).astype(np.uint64) * BLOCK


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("roundtrip")
    base = make_os_disk(root / "base.raw", 96)
    populate(base, root, 512, FAT)
    child = root / "child.raw"
    shutil.copyfile(base, child)
    img = f"{child}@@{FAT}"
    local = root / "local"
    local.mkdir()

    def put(path: str, data: bytes, *flags: str) -> None:
        src = local / path.rsplit("/", 1)[-1]
        src.write_bytes(data)
        mtools("mcopy", *flags, "-i", img, src, f"::{path}")

    mtools("mdeltree", "-i", img, "::/Dir")  # nested whiteout: only /Dir is recorded
    mtools("mdel", "-i", img, "::/frag/hole01.bin")
    put("/README.TXT", b"rewritten by the app\n", "-o")
    mtools("mattrib", "-i", img, "+r", "+h", "::/one cluster.bin")  # metadata only
    mtools("mdeltree", "-i", img, "::/many")
    mtools("mmd", "-i", img, "::/many")
    put("/many/only one.txt", b"re-created directory\n")
    mtools("mmd", "-i", img, "::/New", "::/New/Deeper")
    put("/New/Deeper/payload.bin", pattern(300_000, 9))
    mtools("mdel", "-i", img, "::/empty.txt")
    mtools("mmd", "-i", img, "::/empty.txt")  # a file became a directory
    return root, base, child


def _capture(root: Path, base: Path, child: Path) -> tuple[Store, fd.FileDelta]:
    store = Store.init(root / "store")
    with RawFileDevice(str(child)) as new, RawFileDevice(str(base)) as old:
        delta = fd.capture(store, new, old, _changed_blocks(base, child))
    assert delta is not None
    store.flush()
    return store, delta


def test_delta_records_each_kind_of_change(pair: tuple[Path, Path, Path]) -> None:
    root, base, child = pair
    store, delta = _capture(root, base, child)
    with store:
        rows = {delta.path(i): delta.entries[i] for i in range(len(delta.entries))}
    change = {p: fd.CHANGE_NAMES[int(r["change"])] for p, r in rows.items()}
    assert change["/Dir"] == "deleted" and not any(p.startswith("/Dir/") for p in rows)
    assert change["/frag/hole01.bin"] == "deleted"
    assert change["/README.TXT"] == "modified" and rows["/README.TXT"]["flags"] & fd.HAS_CONTENT
    assert change["/one cluster.bin"] == "modified"
    assert not rows["/one cluster.bin"]["flags"] & fd.HAS_CONTENT
    assert change["/many"] in ("opaque", "modified")  # mtools may reuse the freed cluster
    assert change["/New"] == "added" and change["/New/Deeper/payload.bin"] == "added"
    assert change["/empty.txt"] == "opaque" and rows["/empty.txt"]["kind"] == fd.DIRECTORY
    assert "/Ünïcödé dir/Ærøskøbing.bin" not in rows  # untouched files are not in the delta
    payload = delta.chunk_rows(
        next(i for i in range(len(delta.entries)) if delta.path(i) == "/New/Deeper/payload.bin")
    )
    assert payload["length"].sum() == 300_000 and len(payload) >= 2  # FastCDC cut it


def test_applying_the_delta_to_the_base_gives_the_child(pair: tuple[Path, Path, Path]) -> None:
    root, base, child = pair
    store, delta = _capture(root, base, child)
    target = root / "target.raw"
    shutil.copyfile(base, target)
    with store, RawFileDevice(str(target), writable=True) as dev:
        merger = _Merger(store, dev, delta.volumes)  # type: ignore[arg-type]
        merger.apply("app:1", delta)
        assert fsck(extract(open_partition(dev, 1), root / "target-fat.img")) == "clean"
    work = root / "extracts"
    work.mkdir(exist_ok=True)
    assert mtools_tree(target, work, FAT) == mtools_tree(child, work, FAT)
    assert mtools_attributes(target, FAT) == mtools_attributes(child, FAT)
    assert mtools_mtimes(target, work, FAT) == mtools_mtimes(child, work, FAT)
