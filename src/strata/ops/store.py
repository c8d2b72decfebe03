"""Store and layer-catalog verbs: init, stats, verify, gc; list, show and history of layers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from strata.blockdev.copy import Progress
from strata.store import Store, store_path
from strata.store.chunkstore import no_store

PathLike = str | os.PathLike[str] | None


@contextmanager
def open_store(path: PathLike, create: bool = False, readonly: bool = False) -> Iterator[Store]:
    """The store at ``path``; NotFound unless it exists or ``create`` is set. ``readonly``:
    for verbs that only read (they then work on a store the user cannot write)."""
    root = store_path(path)
    if not (root / "store.json").exists():
        if not create:
            raise no_store(root)
        Store.init(root).close()
    with Store(root, readonly=readonly) as store:
        yield store


def register_layer_schemas() -> None:
    """Make the layer manifests' table schemas known, so their layouts are checked.

    Imported here, not at module top: the file-delta code pulls in every file system
    reader, which costs the commands that only open a store most of their start-up.
    """
    from strata.layer import blocks, filedelta  # noqa: F401


def init_store(path: PathLike = None) -> dict[str, Any]:
    """Create the store (idempotent); its location and settings."""
    existed = (store_path(path) / "store.json").exists()
    with Store.init(path) as store:
        return {"store": str(store.root), "created": not existed, **store.config}


def store_stats(path: PathLike = None) -> dict[str, Any]:
    with Store(path, readonly=True) as store:
        return store.stats()


def verify_store(path: PathLike = None, progress: Progress | None = None) -> dict[str, Any]:
    """Read back every chunk and live manifest; ``clean`` is False when anything is wrong."""
    from strata.store.verify import verify  # start-up: opening a store does not need it

    register_layer_schemas()
    with Store(path, readonly=True) as store:
        return verify(store, progress)


def gc_store(
    path: PathLike = None,
    threshold: float = 0.0,
    lock_timeout: float = 60.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    from strata.store.gc import gc  # start-up: opening a store does not need it

    register_layer_schemas()
    return gc(path, threshold=threshold, lock_timeout=lock_timeout, progress=progress)


def list_layers(path: PathLike = None) -> list[dict[str, Any]]:
    with Store(path, readonly=True) as store:
        return store.catalog.layers()


def show_layer(name: str, path: PathLike = None) -> dict[str, Any]:
    with Store(path, readonly=True) as store:
        return store.catalog.layer(name)


def layer_history(
    name: str | None = None, path: PathLike = None, limit: int | None = None
) -> list[dict[str, Any]]:
    with Store(path, readonly=True) as store:
        return store.catalog.history(name, limit)


__all__ = [
    "gc_store",
    "init_store",
    "layer_history",
    "list_layers",
    "open_store",
    "register_layer_schemas",
    "show_layer",
    "store_path",
    "store_stats",
    "verify_store",
]
