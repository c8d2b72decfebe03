"""The chunk store and layer catalog.

References: docs/architecture.md ("Store"). Public surface::

    Store.init(path) / Store(path)        open (shared lock) or create a store
    store.put_many(chunks) -> ids         dedup, skip zeros, compress and hash on all cores
    store.put_blocks((offset, chunk)...)  -> a ``chunks-v1`` table
    store.get_many(ids, lengths)          verified bytes, in order
    store.put_manifest(Manifest) -> id    durable manifest
    store.catalog                         layers, versions, states, images, audit history
    store.commit_version(layer, version, manifest_id)
    strata.store.gc.gc(path), strata.store.verify.verify(store)   (their own modules: start-up)
"""

from strata.store.catalog import KINDS, STATES, TRANSITIONS, Catalog
from strata.store.chunkstore import PutStats, Store
from strata.store.ids import ZERO_ID, chunk_id, from_hex, to_hex
from strata.store.locate import default_store, store_path
from strata.store.manifest import Manifest, chunk_table, register_schema
from strata.store.structs import CHUNK_ROW

__all__ = [
    "CHUNK_ROW",
    "KINDS",
    "STATES",
    "TRANSITIONS",
    "ZERO_ID",
    "Catalog",
    "Manifest",
    "PutStats",
    "Store",
    "chunk_id",
    "chunk_table",
    "default_store",
    "from_hex",
    "register_schema",
    "store_path",
    "to_hex",
]
