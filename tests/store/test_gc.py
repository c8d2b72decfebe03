"""gc: reference counting over live manifests, pack rewrite, and the store-wide lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import Conflict
from strata.store import Manifest, Store
from strata.store.gc import gc

from support.store_tools import blocks, physical_copies, piece


def version(store: Store, name: str, seeds: list[int], commit: bool = True) -> bytes:
    store.catalog.create_version("os", name)
    store.catalog.transition("os", name, "finalizing")
    manifest = Manifest("os-layer")
    manifest.add_table("chunks", "chunks-v1", store.put_blocks(blocks(seeds, 1 << 20)))
    mid = store.put_manifest(manifest)
    if commit:
        store.commit_version("os", name, mid)
    else:
        store.flush()
        store.catalog.transition("os", name, "failed", comment="finalize gate refused")
    return mid


def test_gc_keeps_live_chunks_and_drops_dead(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.init(root) as store:
        store.catalog.create_layer("os", "os")
        live = version(store, "v1", [1, 2])
        dead = version(store, "v2", [2, 3], commit=False)  # shares piece 2 with v1
        dead_path = store.manifest_path(dead)
        live_rows = store.get_manifest(live).table("chunks")
        dead_only = set(store.get_manifest(dead).chunk_ids().tolist()) - set(
            store.get_manifest(live).chunk_ids().tolist()
        )
    assert dead_only and dead_path.exists()
    report = gc(root)
    assert report["chunks_removed"] == len(dead_only)
    assert report["packs_rewritten"] == 1 and report["manifests_removed"] == 1
    assert not dead_path.exists()
    copies = physical_copies(root)
    assert not dead_only & set(copies) and max(copies.values()) == 1
    with Store(root) as store:
        got = b"".join(store.get_many(live_rows["id"].tolist(), live_rows["length"].tolist()))
    assert got == piece(1, 1 << 20) + piece(2, 1 << 20)
    again = gc(root)
    assert again["chunks_removed"] == again["packs_rewritten"] == again["packs_deleted"] == 0


def test_gc_waits_for_writers(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.init(root) as store:
        store.put(piece(4, 65536))  # written, not committed: protected while the store is open
        with pytest.raises(Conflict, match="store lock"):
            gc(root, lock_timeout=0.2)
    assert gc(root)["chunks_removed"] == 1


def test_gc_threshold_leaves_mostly_live_packs(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.init(root) as store:
        store.catalog.create_layer("os", "os")
        version(store, "v1", [5, 6, 7, 8])
        store.put(piece(9, 65536))
    report = gc(root, threshold=0.5)
    assert report["chunks_removed"] == 1 and report["packs_rewritten"] == 0
    assert gc(root)["packs_rewritten"] == 1


def test_images_keep_their_chunks_live(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.init(root) as store:
        manifest = Manifest("image", {"template": "t1"})
        manifest.add_table("chunks", "chunks-v1", store.put_blocks(blocks([21], 1 << 20)))
        mid = store.put_manifest(manifest)
        store.commit_image("img1", mid, {"os": "win:1"}, comment="published")
        (image,) = store.catalog.images()
        assert image["manifest"] == mid.hex() and image["logical_size"] == 1 << 20
        assert store.catalog.history()[-1]["operation"] == "add-image"
        live = len(manifest.chunk_ids())
    report = gc(root)
    assert report["chunks_removed"] == 0 and report["live_chunks"] == live


def test_gc_live_set_merged_in_small_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many versions sharing chunks, merged into the live set one manifest at a time: gc
    keeps exactly the union and drops the dead version's own chunks."""
    monkeypatch.setattr("strata.store.manifest.LIVE_BATCH_IDS", 1)
    root = tmp_path / "s"
    with Store.init(root) as store:
        store.catalog.create_layer("os", "os")
        live = [version(store, f"v{n}", [n, n + 1, 100]) for n in range(1, 6)]
        dead = version(store, "dead", [200, 201, 100], commit=False)
        each = [set(store.get_manifest(mid).chunk_ids().tolist()) for mid in live]
        expected = set().union(*each)
        dead_only = set(store.get_manifest(dead).chunk_ids().tolist()) - expected
    assert dead_only and len(expected) > max(map(len, each))
    report = gc(root)
    assert report["live_chunks"] == len(expected)
    assert report["chunks_removed"] == len(dead_only)
    assert set(physical_copies(root)) == expected
