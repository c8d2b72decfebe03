"""The text listings read like tables: a header line naming the columns, then one line per
row whose cells start where their header does, holding what ``--json`` reports."""

from __future__ import annotations

from pathlib import Path

from support.tools import result_of, strata, strata_json

TARGET_COLUMNS = ("name", "format", "options", "platform", "description")


def _cells(line: str, starts: list[int]) -> list[str]:
    """The cells of ``line`` cut at the header's column starts, stripped."""
    ends = [*starts[1:], len(line)]
    return [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]


def test_image_targets_has_a_header_and_the_json_rows_in_its_columns() -> None:
    targets = result_of(strata_json("image", "targets"))["targets"]
    proc = strata("image", "targets")
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert tuple(header.split()) == TARGET_COLUMNS
    starts = [header.index(column) for column in TARGET_COLUMNS]
    assert len(lines) == len(targets)
    for line, target in zip(lines, targets, strict=True):
        # Each cell ends before the next column starts (a space before it), so no cell spills.
        assert all(line[start - 1] == " " for start in starts[1:]), line
        assert _cells(line, starts) == [
            target["name"],
            target["format"],
            ",".join(target["options"]) or "-",
            target["platform"] or "-",
            target["description"],
        ]


def test_store_stats_of_an_empty_store_shows_no_python_none(tmp_path: Path) -> None:
    """A ratio of nothing is null in --json and ``-`` in the text, not Python's ``None``."""
    store = tmp_path / "store"
    assert strata("store", "init", "--store", store).returncode == 0
    facts = result_of(strata_json("store", "stats", "--store", store))
    assert facts["dedup_ratio"] is None and facts["compression_ratio"] is None
    proc = strata("store", "stats", "--store", store)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert lines["dedup ratio"] == lines["compression ratio"] == "-"
    assert "None" not in proc.stdout
