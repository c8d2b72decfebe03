"""Ingest and commit one layer version, printing each phase: run as a process tests kill.

usage: store_ingest.py STORE LAYER VERSION SEEDS SIZE
Creates the OS layer LAYER and VERSION if missing (a rerun resumes a version left in
packaging or finalizing), streams the mixed pieces of SEEDS (comma-separated, SIZE bytes
each) in 64 KiB chunks, writes the manifest and commits the version.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from strata.errors import InvalidInput
from strata.store import Manifest, Store

from support.store_tools import blocks


def phase(name: str) -> None:
    print(name, flush=True)


def prepare(store: Store, layer: str, version: str) -> str:
    # Made by an earlier run or a concurrent writer when it already exists.
    with contextlib.suppress(InvalidInput):
        store.catalog.create_layer(layer, "os", comment="crash test")
    with contextlib.suppress(InvalidInput):
        store.catalog.create_version(layer, version, comment="ingest")
    state = store.catalog.version(layer, version)["state"]
    if state == "packaging":
        store.catalog.transition(layer, version, "finalizing")
        state = "finalizing"
    return state


def main(argv: list[str]) -> int:
    root, layer, version, seeds_text, size_text = argv
    seeds = [int(s) for s in seeds_text.split(",")]
    with Store(root) as store:
        phase("open")
        if prepare(store, layer, version) != "finalizing":
            phase("already-done")
            return 0
        phase("ingest")
        table = store.put_blocks(blocks(seeds, int(size_text)), level=1)
        phase("manifest")
        manifest = Manifest("os-layer", {"seeds": seeds})
        manifest.add_table("chunks", "chunks-v1", table)
        mid = store.put_manifest(manifest)
        phase("commit")
        store.commit_version(layer, version, mid, comment="ingested")
        phase("committed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
