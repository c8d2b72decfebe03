"""``gc``: drop chunks no committed version or image uses, and reclaim their pack space.

References: strata store format 1; borg's compact (rewrite packs holding dead objects).

gc takes the store lock exclusively, so no ingest runs while it decides what is live: a
chunk put by a writer that has not committed yet is protected by that writer's shared lock.
Chunk references are counted over every live manifest; a manifest that cannot be read
stops gc before anything is deleted. A pack is rewritten by copying its live frames (each
verified) into a new pack, committing the new locations, then unlinking the old pack; a
crash at any point leaves either the old or the new copy indexed and the other unindexed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strata.errors import StrataError
from strata.store.chunkstore import LOCK_TIMEOUT_S, Store
from strata.store.db import transaction
from strata.store.frames import Where, decode
from strata.store.ids import from_hex, to_hex
from strata.store.index import load_id_set
from strata.store.manifest import LiveSet
from strata.store.packs import PackWriter, fsync_dir
from strata.store.structs import CHUNK_MAGIC, PACK_HEADER

Progress = Callable[[int, int], None]


def gc(
    root: str | os.PathLike[str] | None = None,
    *,
    threshold: float = 0.0,
    lock_timeout: float = LOCK_TIMEOUT_S,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Collect garbage; packs whose dead share is above ``threshold`` (0..1) are rewritten."""
    with Store(root, exclusive=True, lock_timeout=lock_timeout) as store:
        return collect(store, threshold, progress)


def collect(store: Store, threshold: float, progress: Progress | None = None) -> dict[str, Any]:
    started = time.monotonic()
    manifests = store.catalog.live_manifests()
    gathered = LiveSet()
    for mid, _ in manifests:
        gathered.add(store.get_manifest(mid).chunk_ids())
    live = gathered.ids()
    report: dict[str, Any] = {
        "store": str(store.root),
        "live_manifests": len(manifests),
        "live_chunks": len(live),
        "tmp_files_removed": _clean_tmp(store.root / "tmp"),
        "manifests_removed": _drop_manifests(store, {mid for mid, _ in manifests}),
    }
    with transaction(store.db):
        load_id_set(store.db, "live", live)
        report["chunks_removed"], report["chunk_bytes_removed"] = store.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length), 0) FROM chunks"
            " WHERE id NOT IN (SELECT id FROM live)"
        ).fetchone()
        store.db.execute("DELETE FROM chunks WHERE id NOT IN (SELECT id FROM live)")
    report.update(_compact(store, threshold, progress))
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _clean_tmp(tmp: Path) -> int:
    removed = 0
    for path in tmp.glob("*.tmp"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _drop_manifests(store: Store, live: set[bytes]) -> int:
    removed = 0
    for path in (store.root / "manifests").glob("*/*.manifest"):
        try:
            mid = from_hex(path.name.removesuffix(".manifest"))
        except StrataError:
            continue
        if mid not in live:
            path.unlink()
            removed += 1
    return removed


def _compact(store: Store, threshold: float, progress: Progress | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "packs_deleted": 0,
        "packs_rewritten": 0,
        "pack_bytes_freed": 0,
        "problems": [],
    }
    packs = store.pack_files()
    for number, path in enumerate(packs, 1):
        size = path.stat().st_size
        rows = store.db.execute(
            "SELECT id, offset, length FROM chunks WHERE pack = ? ORDER BY offset", (path.name,)
        ).fetchall()
        dead = size - PACK_HEADER.size - sum(r[2] for r in rows)
        if not rows:
            _unlink_pack(store, path)
            out["packs_deleted"] += 1
            out["pack_bytes_freed"] += size
        elif dead > 0 and dead > threshold * size:
            try:
                freed = _rewrite(store, path, rows)
            except StrataError as e:
                out["problems"].append(f"{path.name} kept: {e.message}")
            else:
                out["packs_rewritten"] += 1
                out["pack_bytes_freed"] += freed
        if progress:
            progress(number, len(packs))
    return out


def _unlink_pack(store: Store, path: Path) -> None:
    store.packs.forget(path.name)
    path.unlink()
    fsync_dir(path.parent)


def _rewrite(store: Store, path: Path, rows: list[tuple[bytes, int, int]]) -> int:
    old_size = path.stat().st_size
    writer = PackWriter(path.parent, store.root / "tmp")
    moved: list[tuple[str, int, bytes]] = []
    try:
        for cid, offset, length in rows:
            frame = store.packs.read(path.name, offset, length)
            decode(frame, Where(str(path), offset), CHUNK_MAGIC, store.max_chunk, bytes(cid))
            moved.append((writer.name, writer.append(frame), bytes(cid)))
        writer.sync()
    except BaseException:
        writer.close()
        writer.path.unlink(missing_ok=True)
        raise
    writer.close()
    with transaction(store.db):
        store.db.executemany("UPDATE chunks SET pack = ?, offset = ? WHERE id = ?", moved)
    _unlink_pack(store, path)
    return old_size - writer.size


__all__ = ["collect", "gc", "to_hex"]
