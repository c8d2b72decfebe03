"""``fs.pathorder.path_order`` against ``sorted`` of the paths it does not make: directory
trees of names that sort on either side of ``/`` (``-``, ``.``, space, NUL, controls), names
longer than a round's seven bytes that share them, equal paths (kept in row order), and
non-ASCII names (astral characters, unpaired surrogates) whose UTF-8 must sort as their code
points do."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from strata.fs.pathorder import PADDING, Prefixes, path_order

PIECES = ["a", "b", "-", ".", " ", "\0", "\x01", "~", "é", "\ud800", "\U0001f600", "abcdefgh"]
NAMES = st.lists(st.sampled_from(PIECES), min_size=0, max_size=5).map("".join)


@st.composite
def trees(draw: st.DrawFn) -> tuple[list[str], list[tuple[int, str]]]:
    """Distinct directory prefixes (each one's parent listed before it) and rows (prefix
    index, name): the directories themselves, and files, many named as a sibling directory
    and a bit more (``a-b`` sorts before ``a/x``, ``a~`` after it)."""
    prefixes = ["/"]
    for _ in range(draw(st.integers(0, 12))):
        parent = draw(st.sampled_from(prefixes))
        name = draw(NAMES.filter(bool)) * draw(st.integers(1, 3))
        if f"{parent}{name}/" not in prefixes:
            prefixes.append(f"{parent}{name}/")
    dirs = [_split(prefixes, p) for p in prefixes[1:]]
    near = st.tuples(st.sampled_from(dirs), NAMES).map(lambda d: (d[0][0], d[0][1] + d[1]))
    anywhere = st.tuples(st.integers(0, len(prefixes) - 1), NAMES)
    files = draw(st.lists(near | anywhere if dirs else anywhere, max_size=60))
    rows = draw(st.permutations(dirs + files))
    return prefixes, rows + draw(st.lists(st.sampled_from(rows), max_size=5)) if rows else rows


def _split(prefixes: list[str], prefix: str) -> tuple[int, str]:
    """(parent prefix index, name) of the directory ``prefix``."""
    head, _, name = prefix[:-1].rpartition("/")
    return prefixes.index(f"{head}/"), name


def _order(prefixes: list[str], rows: list[tuple[int, str]], chosen: list[int]) -> list[int]:
    encoded = [name.encode("utf-8", "surrogatepass") for _slot, name in rows]
    lengths = np.array([len(e) for e in encoded], np.uint16)
    starts = np.cumsum(lengths + 1, dtype=np.int64) - lengths - 1
    names = b"".join(e + b"\0" for e in encoded) + bytes(PADDING)
    slots = np.array([slot for slot, _name in rows], np.int32)
    picked = np.array(chosen, np.int64)
    return picked[
        path_order(Prefixes.of(prefixes), names, slots, starts.astype(np.int32), lengths, picked)
    ].tolist()


@given(trees(), st.data())
def test_path_order_is_sorted_paths(
    tree: tuple[list[str], list[tuple[int, str]]], data: st.DataObject
) -> None:
    prefixes, rows = tree
    chosen = sorted(
        data.draw(st.sets(st.integers(0, max(len(rows) - 1, 0)))) & set(range(len(rows)))
    )
    paths = [prefixes[slot] + name for slot, name in rows]
    assert _order(prefixes, rows, chosen) == sorted(chosen, key=paths.__getitem__)


def test_a_long_shared_start_takes_rounds() -> None:
    """Names alike for 60 bytes (nine rounds), one of them the start of another."""
    base = "x" * 60
    rows = [(0, base + tail) for tail in ("b", "a", "", "a\0", "-", "a")]
    paths = ["/" + name for _slot, name in rows]
    assert _order(["/"], rows, list(range(6))) == sorted(range(6), key=paths.__getitem__)
