"""Manifests describe their own table layouts: readable without the code that defined them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from strata.errors import CorruptImage, InvalidInput
from strata.store import manifest as mf

ROW = np.dtype([("offset", "<u8"), ("count", "<u2"), ("id", "V16")])


@pytest.fixture
def schema(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(mf.SCHEMAS, "test-row-v1", ROW)
    return "test-row-v1"


def _manifest(schema: str) -> bytes:
    rows = np.zeros(3, ROW)
    rows["offset"] = [0, 65536, 131072]
    rows["count"] = [1, 2, 3]
    rows["id"] = np.frombuffer(bytes(range(16)) * 3, "V16")
    m = mf.Manifest("layer-version", {"layer": "x"})
    m.add_table("rows", schema, rows)
    return m.to_bytes()


def _with_head(raw: bytes, change: object) -> bytes:
    _, _, _, json_len = mf.MANIFEST_HEADER.unpack_from(raw, 0)
    start = mf.MANIFEST_HEADER.size
    head = json.loads(raw[start : start + json_len])
    change(head)  # type: ignore[operator]
    text = mf.canonical_json(head)
    header = mf.MANIFEST_HEADER.pack(mf.MANIFEST_MAGIC_BYTES, mf.MANIFEST_SCHEMA, 0, len(text))
    return header + text + raw[start + json_len :]


def test_a_schema_this_process_never_registered_still_parses(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _manifest(schema)
    monkeypatch.delitem(mf.SCHEMAS, schema)
    parsed = mf.parse(raw)
    rows = parsed.table("rows")
    assert rows.dtype == ROW and rows["count"].tolist() == [1, 2, 3]
    assert len(parsed.chunk_ids()) == 1  # gc and verify still see the chunk ids


def test_a_layout_that_contradicts_its_schema_is_refused(schema: str) -> None:
    def widen(head: dict) -> None:
        head["tables"][0]["dtype"][1][1] = "<u4"

    with pytest.raises(CorruptImage, match="layout of schema"):
        mf.parse(_with_head(_manifest(schema), widen))


@pytest.mark.parametrize(
    "fields",
    [[["offset", "|O"]], [["offset", "<u8"], ["id", "|V9999"]], [["Bad Name", "<u8"]], [], "x"],
)
def test_hostile_layouts_are_refused(
    schema: str, monkeypatch: pytest.MonkeyPatch, fields: object
) -> None:
    raw = _manifest(schema)
    monkeypatch.delitem(mf.SCHEMAS, schema)

    def replace(head: dict) -> None:
        head["tables"][0]["dtype"] = fields

    with pytest.raises(CorruptImage):
        mf.parse(_with_head(raw, replace))


def test_register_schema_refuses_types_a_manifest_cannot_declare() -> None:
    with pytest.raises(InvalidInput):
        mf.register_schema("bad-v1", np.dtype([("when", "<M8[s]")]))


def test_live_set_merges_in_batches_and_equals_the_distinct_union() -> None:
    rng = np.random.default_rng(5)
    pool = rng.integers(0, 256, (3000, 16), np.uint8).view("V16").ravel()
    manifests = [np.unique(rng.choice(pool, 700)) for _ in range(12)]  # much shared
    live = mf.LiveSet(batch_ids=1000)
    for ids in manifests:
        live.add(ids)
        assert live._pending_ids < 1000  # memory: the merged set plus under one batch
    expected = np.unique(np.concatenate(manifests))
    assert np.array_equal(live.ids(), expected)
    assert len(expected) < sum(map(len, manifests)) / 2  # the case it is for: overlap
    assert len(mf.LiveSet().ids()) == 0
