"""File content chunking (FastCDC 16/64/256 KiB) beside casync on the same two file versions.

A second version of a file with 1% of its bytes edited in scattered places (overwrites,
insertions, deletions) must add at most 10% new chunk bytes.  casync (same chunk-size bounds)
chunks the same two files into one casync store; its new bytes come from its .caibx indexes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from strata.layer.filedelta import READ_WINDOW, cdc_chunks
from strata.store import Store

from conftest import record_cli_publish, scaled
from support.tools import require, run

CAIBX_HEADER = 48 + 16  # CaFormatIndex + CaFormatTable header (casync caformat.h)
CAIBX_ITEM = struct.Struct("<Q32s")  # chunk end offset, chunk id


def _versions(root: Path, size: int, edits: int, seed: int = 8) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 256, size, dtype=np.uint8)
    per_edit = max(1, size // 100 // edits)
    cuts = np.sort(rng.choice(size - per_edit, edits, replace=False))
    pieces, at = [], 0
    for n, cut in enumerate(cuts.tolist()):
        pieces.append(first[at:cut])
        kind = n % 4
        fresh = rng.integers(0, 256, per_edit, dtype=np.uint8)
        if kind in (0, 1):  # overwrite
            pieces.append(fresh)
            at = cut + per_edit
        elif kind == 2:  # insert
            pieces.append(fresh)
            at = cut
        else:  # delete
            at = cut + per_edit
    pieces.append(first[at:])
    a, b = root / "v1.bin", root / "v2.bin"
    a.write_bytes(first.tobytes())
    b.write_bytes(np.concatenate(pieces).tobytes())
    return a, b


def _pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(READ_WINDOW):
            yield piece


def _strata_chunks(path: Path) -> list[tuple[int, bytes]]:
    from strata.store import chunk_id

    return [(len(c), chunk_id(c)) for _, c in cdc_chunks(_pieces(path))]


def _caibx_chunks(index: Path) -> list[tuple[int, bytes]]:
    raw = index.read_bytes()
    out, prev = [], 0
    for at in range(CAIBX_HEADER, len(raw) - CAIBX_ITEM.size + 1, CAIBX_ITEM.size):
        end, cid = CAIBX_ITEM.unpack_from(raw, at)
        if end == 0:  # the table tail starts with zero fill
            break
        out.append((end - prev, cid))
        prev = end
    return out


def _new_bytes(first: list[tuple[int, bytes]], second: list[tuple[int, bytes]]) -> int:
    known = {cid for _, cid in first}
    fresh: dict[bytes, int] = {}
    for length, cid in second:
        if cid not in known:
            fresh[cid] = length
    return sum(fresh.values())


def test_fastcdc_second_version_new_bytes(
    tmp_path: Path, versus: Callable[..., float], record_ratio: Callable[..., None]
) -> None:
    casync = require("casync")
    size = scaled(200 << 20, 24 << 20)
    v1, v2 = _versions(tmp_path, size, edits=scaled(100, 12))
    s1, s2 = _strata_chunks(v1), _strata_chunks(v2)
    ours = _new_bytes(s1, s2)
    run([casync, "make", f"--store={tmp_path / 'cstore'}", tmp_path / "c1.caibx", v1])
    run([casync, "make", f"--store={tmp_path / 'cstore'}", tmp_path / "c2.caibx", v2])
    c1, c2 = _caibx_chunks(tmp_path / "c1.caibx"), _caibx_chunks(tmp_path / "c2.caibx")
    assert sum(n for n, _ in c2) == v2.stat().st_size  # the index parse is right
    theirs = _new_bytes(c1, c2)
    record_ratio(
        metric="new chunk bytes of v2 (1% scattered edits)",
        size=size,
        strata_new=ours,
        casync_new=theirs,
        strata_fraction=round(ours / size, 4),
        casync_fraction=round(theirs / size, 4),
        ratio=round(ours / theirs, 3) if theirs else None,
        strata_mean_chunk=size // len(s1),
        casync_mean_chunk=size // len(c1),
        target=0.10,
        target_of="strata_fraction",
    )
    assert ours <= 0.10 * v2.stat().st_size

    def strata_store() -> None:
        root = tmp_path / "sstore"
        with Store.init(root) as st:
            for path in (v1, v2):
                st.put_many((c for _, c in cdc_chunks(_pieces(path))), level=1)
        _rmtree(root)

    def casync_store() -> None:
        store = tmp_path / "cstore2"
        for n, path in enumerate((v1, v2)):
            run([casync, "make", f"--store={store}", tmp_path / f"t{n}.caibx", path])
        _rmtree(store)

    versus(strata_store, casync_store, peer="casync make", per_byte=2 * size)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def test_file_level_publish(
    tmp_path: Path, versus: Callable[..., float], record_ratio: Callable[..., None]
) -> None:
    """Publish merging two independently packaged app layers (each ``files`` small files in
    folders of 50) beside mtools copying the same two trees onto a copy of the OS disk."""
    from strata.ops import layers

    from support.filelevel_tools import (
        app_tree,
        back_to_child,
        fat_spec,
        finalize,
        mtool,
        package,
        publish,
        to_raw,
    )
    from support.layers import make_os_disk

    files = scaled(1000, 150)
    os_raw = make_os_disk(tmp_path / "os.raw", 256)
    store = tmp_path / "store"
    layers.import_os("win", "1", str(os_raw), store=store)
    trees = []
    for seed, app in enumerate(("appA", "appB")):
        trees.append(app_tree(tmp_path, app, files, seed))
        pkg = package(store, app, tmp_path / f"out-{app}")
        raw = to_raw(pkg, tmp_path / f"{app}.raw")
        mtool("mcopy", "-s", "-i", fat_spec(raw), trees[-1], "::/")
        back_to_child(pkg, raw)
        finalize(store, pkg)
    count = [0]

    def ours() -> None:
        count[0] += 1
        assert publish(store, f"img{count[0]}", "appA", "appB")["merge"] == "file"

    def theirs() -> None:
        target = tmp_path / "mtools.raw"
        run(["cp", "--sparse=always", os_raw, target])
        mtool("mcopy", "-s", "-i", fat_spec(target), *trees, "::/")

    versus(ours, theirs, peer="mtools mcopy -s (both trees)")
    record_cli_publish(record_ratio, store, 2 * files, "file-level publish")
