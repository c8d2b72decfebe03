"""NTFS file delta (only the changed MFT records parsed) beside the full listing of the same
volume (NtfsVolume.scan, the bulk MFT scan), for 1 000 files written through ntfs-3g.

References: issue 9 (the delta must cost ≤ 10% of a full scan).  The base is the cached
fixtures/ntfs_volume.py volume of bench_ntfs (200 000 files full size, 3 000 in smoke runs);
the child is a sparse copy that ntfs-3g edited; the block delta (64 KiB blocks that differ,
with each one's bitmap of differing 512-byte sectors, ``SECTOR_MASK_ROW``) is computed before
timing, as finalize has it already; so is the store: finalize's is open and has just taken
the block delta's chunks (its pack file exists), so each timed store is opened and given one
chunk before.  Both images are opened as finalize opens them (``registry.open_image``: a
ChainDevice over the raw file), the listing too.  Writing the files' content and flushing
it durable are timed: one pack fsync
and one SQLite commit, the flush finalize does once for the whole capture (the block delta
shares it), charged here to the file delta alone.

Beside the ratio it records the entries alone (classification, no content read or stored) and
the store alone (``store_only``: the delta's chunks and blobs, already cut, put into a fresh
store and flushed), so the part of the budget each one takes is visible, and, for scale, the
delta beside the walk of the whole volume that sleuthkit makes (``fls -r -p`` of the child,
informative: the target is judged against strata's own listing).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from strata.blockdev.chain import ChainDevice
from strata.formats import registry
from strata.fs.ntfs import NtfsVolume
from strata.layer import filedelta as fd
from strata.layer import ntfsdelta
from strata.layer.blocks import SECTOR_MASK_ROW
from strata.store import Store

from conftest import ours_calls, scaled, timed
from support.ntfs_tools import volume
from support.tools import require

FILES = scaled(200_000, 3_000)
SIZE = "2G" if FILES > 50_000 else "512M"
CHANGED = scaled(1_000, 100)
BLOCK = 64 << 10


def _scattered(root: Path) -> None:
    """Rewrite CHANGED of the many small files, spread evenly over the volume (the worst
    case: every changed record in a 64 KiB block of its own)."""
    step = FILES // CHANGED
    for i in range(0, step * CHANGED, step):
        f = root / "many" / f"d{i // 500:04d}" / f"f{i:06d}.txt"
        f.write_bytes(b"changed by the packaging machine %d\n" % i * 3)


def _install(root: Path) -> None:
    """What an installer does: CHANGED new files (1 to 20 KiB) in ten new directories."""
    app = root / "Program Files" / "App"
    for i in range(CHANGED):
        d = app / f"module{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"part{i:05d}.dll").write_bytes(b"MZ%06d" % i * (128 * (1 + i % 20)))


EDITS = {"scattered": _scattered, "install": _install}


def _edit(child: Path, edit: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ntfs-bench-") as mnt:
        subprocess.run([require("ntfs-3g"), str(child), mnt], check=True)
        try:
            EDITS[edit](Path(mnt))
        finally:
            subprocess.run(["umount", mnt], check=True)


def _changed_blocks(a: Path, b: Path) -> np.ndarray:
    out = []
    window = 1024 * BLOCK
    with open(a, "rb") as fa, open(b, "rb") as fb:
        at = 0
        while True:
            x, y = fa.read(window), fb.read(window)
            if not x:
                break
            xa = np.frombuffer(x, np.uint8).reshape(-1, BLOCK)
            ya = np.frombuffer(y, np.uint8).reshape(-1, BLOCK)
            out.append(np.flatnonzero((xa != ya).any(axis=1)) + at)
            at += xa.shape[0]
    return np.concatenate(out).astype(np.uint64) * BLOCK


def _sector_masks(a: Path, b: Path, offsets: np.ndarray, sector: int = 512) -> np.ndarray:
    """What ``capture_delta`` records for each changed block: which sectors differ."""
    rows = np.zeros(len(offsets), SECTOR_MASK_ROW)
    rows["offset"] = offsets
    masks = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for at in np.asarray(offsets, np.int64).tolist():
            x = np.frombuffer(os.pread(fa.fileno(), BLOCK, at), np.uint8).reshape(-1, sector)
            y = np.frombuffer(os.pread(fb.fileno(), BLOCK, at), np.uint8).reshape(-1, sector)
            bits = np.packbits((x != y).any(axis=1), bitorder="little").tobytes()
            masks.append(bits.ljust(16, b"\0"))
    rows["mask"] = np.frombuffer(b"".join(masks), "V16")
    return rows


@pytest.fixture(scope="module", params=sorted(EDITS))
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path, np.ndarray, np.ndarray, str]]:
    base = volume(FILES, SIZE)
    child = tmp_path_factory.mktemp("ntfsdelta") / "child.img"
    subprocess.run(["cp", "--sparse=always", str(base), str(child)], check=True)
    _edit(child, request.param)
    offsets = _changed_blocks(base, child)
    yield base, child, offsets, _sector_masks(base, child, offsets), request.param
    child.unlink()


def _open(image: Path) -> ChainDevice:
    """An image opened as finalize opens the packaging disk and its base: through the
    format registry, as a ChainDevice (every read asks the top layer for its extents)."""
    return registry.open_image(str(image), "raw")


def _delta(
    base: Path, child: Path, offsets: np.ndarray, masks: np.ndarray | None, store: Store
) -> fd.FileDelta:
    with _open(base) as o, _open(child) as n:
        delta = fd.capture_volume(
            store, NtfsVolume(o), NtfsVolume(n), offsets, masks=masks, level=1
        )
        store.flush()
    return delta


def _stores(work: Path) -> Iterator[Store]:
    """Fresh stores (the content is new to each), opened and holding one chunk, as finalize's
    holds the block delta when the file delta starts."""
    for i in itertools.count():
        shutil.rmtree(work / str(i), ignore_errors=True)
        store = Store.init(work / str(i))
        store.put(b"the block delta's chunks come first %d" % i)
        yield store


def _classify(base: Path, child: Path, offsets: np.ndarray, masks: np.ndarray) -> int:
    """The delta's entries without reading or storing content."""
    with _open(base) as o, _open(child) as n:
        new = NtfsVolume(n)
        bitmap = fd._block_bitmap(offsets, new.dev.size)
        changes = ntfsdelta.diff(NtfsVolume(o), new, 0, bitmap, (masks, 512))
        return len(ntfsdelta.settle(changes))


def _store_only(pieces: list[bytes], store: Store) -> None:
    """What the delta's store work costs alone: its chunks (file content and blobs, already
    cut) put into a fresh store and flushed durable, as the delta does."""
    store.put_many(pieces, level=1)
    store.flush()


def _pieces(store: Store, delta: fd.FileDelta) -> list[bytes]:
    rows = np.concatenate([delta.chunks, delta.blobs])
    return list(store.get_many([bytes(c) for c in rows["id"]], rows["length"].tolist()))


def _full_listing(child: Path) -> int:
    with _open(child) as dev:
        return len(NtfsVolume(dev).scan().paths)


def _fls(child: Path) -> None:
    subprocess.run([require("fls"), "-r", "-p", str(child)], check=True, stdout=subprocess.DEVNULL)


def test_ntfs_delta_vs_full_scan(versus, record_ratio, pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, child, offsets, masks, edit = pair
    with Store.init(tmp_path / "blocks-only") as store:  # without masks: every record compared
        blocks_only = _delta(base, child, offsets, None, store)
    stores = _stores(tmp_path / "stores")
    first = next(stores)
    delta = _delta(base, child, offsets, masks, first)
    pieces = _pieces(first, delta)
    for table in ("entries", "chunks", "ntfs", "streams", "blobs"):
        assert np.array_equal(getattr(delta, table), getattr(blocks_only, table))
    assert delta.names == blocks_only.names
    files = delta.entries[delta.entries["kind"] == fd.FILE]
    changes = {fd.CHANGE_NAMES[int(c)] for c in files["change"]}
    assert len(files) == CHANGED
    assert changes == ({"modified"} if edit == "scattered" else {"added"})
    assert int(np.count_nonzero(files["flags"] & fd.HAS_CONTENT)) == CHANGED
    assert not delta.warnings and len(delta.blobs) >= 1  # every file's descriptor carried
    assert not (delta.ntfs["security_blob"] == fd.NO_BLOB).any()
    assert _full_listing(child) > FILES
    ready = [next(stores) for _ in range(ours_calls())]  # opened untimed, as finalize's is
    ratio = versus(
        lambda: _delta(base, child, offsets, masks, ready.pop()),
        lambda: _full_listing(child),
        peer="NtfsVolume full listing (bulk MFT scan) of the same volume",
        target=0.10,
    )
    rounds = 1 if FILES < 50_000 else 3
    classify = timed(lambda: _classify(base, child, offsets, masks), rounds)
    spare = [next(stores) for _ in range(rounds)]
    store_only = timed(lambda: _store_only(pieces, spare.pop()), rounds)
    full = timed(lambda: _full_listing(child), rounds)
    fls = timed(lambda: _fls(child), rounds)
    again = [next(stores) for _ in range(rounds)]
    delta_s = timed(lambda: _delta(base, child, offsets, masks, again.pop()), rounds)
    record_ratio(
        metric=f"NTFS file delta vs full listing ({edit})",
        entries_only_s=round(classify, 4),
        full_listing_s=round(full, 4),
        entries_only_ratio=round(classify / full, 3),
        store_only_s=round(store_only, 4),
        store_only_ratio=round(store_only / full, 3),
        content_bytes=int(delta.chunks["length"].sum()),
        files=FILES,
        changed_files=CHANGED,
        changed_blocks=len(offsets),
        fls_s=round(fls, 4),
        vs_fls_ratio=round(delta_s / fls, 3),
        ratio=round(ratio, 3),
    )
    assert _classify(base, child, offsets, masks) == len(delta.entries)
