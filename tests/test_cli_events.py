"""The JSON reporter's streamed ``result`` line: the same bytes ``emit`` writes for the whole
list, and, when the items fail part-way, a cut line that ends so the error event gets a line
of its own.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from strata.cli.events import Reporter, json_runs
from strata.errors import CorruptImage


@pytest.mark.parametrize(
    ("fields", "runs"),
    [
        ({"a": 1, "entries": None, "warnings": ["w"]}, [[{"x": 1}, {"x": 2}], [], [{"x": "é"}]]),
        ({"a": None, "entries": None}, [[3]]),
        ({"entries": None, "b": {"c": [1]}}, []),
    ],
)
def test_result_streamed_is_emit(fields: dict[str, Any], runs: list[list[Any]]) -> None:
    streamed, emitted = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(streamed):
        texts = (json.dumps(run)[1:-1] for run in runs)
        Reporter(json_mode=True).result_streamed(fields, "entries", texts)
    with contextlib.redirect_stdout(emitted):
        whole = [item for run in runs for item in run]
        Reporter(json_mode=True).emit("result", **{**fields, "entries": whole})
    assert streamed.getvalue() == emitted.getvalue()


@pytest.mark.parametrize("size", [1, 2, 4096])
def test_json_runs_stream_to_the_emitted_line(size: int) -> None:
    items = [{"start": i, "length": 1 << i, "data": i % 2 == 0} for i in range(5)]
    streamed, emitted = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(streamed):
        Reporter(json_mode=True).result_streamed({"map": None}, "map", json_runs(items, size))
    with contextlib.redirect_stdout(emitted):
        Reporter(json_mode=True).emit("result", map=items)
    assert streamed.getvalue() == emitted.getvalue()


def test_a_failure_part_way_ends_the_cut_line() -> None:
    def items() -> Iterator[dict[str, int]]:
        yield {"start": 0}
        raise CorruptImage(path="x", structure="BAT", problem="entry past EOF", offset=512)

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(CorruptImage):
        Reporter(json_mode=True).result_streamed({"map": None}, "map", json_runs(items(), 1))
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1
