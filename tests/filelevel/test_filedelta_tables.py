"""File-delta tables: streaming FastCDC gives the one-shot cuts; manifests round-trip through
their canonical bytes; entries pointing past their tables are refused with InvalidInput."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strata.errors import InvalidInput
from strata.layer import filedelta as fd
from strata.native import fastcdc_cuts
from strata.store import CHUNK_ROW, Manifest
from strata.store.manifest import parse


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2_000_000), st.integers(1, 300_000), st.integers(0, 2**32 - 1))
def test_streamed_cuts_equal_one_call(size: int, window: int, seed: int) -> None:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    pieces = iter([data[i : i + window] for i in range(0, len(data), window)])
    streamed = [(at, bytes(c)) for at, c in fd.cdc_chunks(pieces)]
    ends = fastcdc_cuts(data, fd.CDC_MIN, fd.CDC_AVG, fd.CDC_MAX, final=True) if data else []
    starts = [0, *ends[:-1]] if ends else []
    assert [at for at, _ in streamed] == starts
    assert b"".join(c for _, c in streamed) == data


def _delta() -> fd.FileDelta:
    entries = np.zeros(2, fd.FILE_ENTRY_ROW)
    names = "/Apps/ä.txt/Apps".encode()
    entries["partition"] = 1
    entries["change"] = [fd.ADDED, fd.DELETED]
    entries["kind"] = [fd.FILE, fd.DIRECTORY]
    entries["name_offset"], entries["name_length"] = [0, 12], [12, 5]
    entries["size"] = [10, 0]
    entries["chunk_count"] = [1, 0]
    entries["flags"] = [fd.HAS_CONTENT, 0]
    chunks = np.zeros(1, CHUNK_ROW)
    chunks["length"] = 10
    return fd.FileDelta([fd.Volume(1, 1 << 20, 64 << 20)], entries, chunks, names)


def test_manifest_round_trip() -> None:
    manifest = Manifest("layer-version", {})
    _delta().add_to(manifest)
    back = fd.load(parse(manifest.to_bytes()))
    assert back is not None
    assert [back.path(i) for i in range(2)] == ["/Apps/ä.txt", "/Apps"]
    assert back.listing() == [
        {
            "partition": 1,
            "entries": [
                {"path": "/Apps/ä.txt", "change": "added", "type": "file", "size": 10},
                {"path": "/Apps", "change": "deleted", "type": "dir", "size": 0},
            ],
        }
    ]
    assert back.summary()["added"] == 1 and back.summary()["deleted"] == 1


@pytest.mark.parametrize("field, value", [("name_length", 99), ("chunk_count", 5)])
def test_entries_pointing_past_their_tables_are_refused(field: str, value: int) -> None:
    delta = _delta()
    delta.entries[field][0] = value
    manifest = Manifest("layer-version", {})
    delta.add_to(manifest)
    with pytest.raises(InvalidInput, match="points past"):
        fd.load(parse(manifest.to_bytes()))


def test_a_manifest_without_a_file_delta_has_none() -> None:
    assert fd.load(Manifest("layer-version", {})) is None
