"""Layers at block level: capture into the store, compose tables, read a composed image.

References: docs/architecture.md ("Layers"). A layer version's manifest holds a
``blocks`` table (``chunks-v1``: offset, length, chunk id) on the fixed 64 KiB grid and,
for a delta, a ``sectors`` table (which sectors of each block changed). An image manifest
holds the composed ``blocks`` table; its chunks are the layers' own, so publishing writes
no chunk data.
"""
