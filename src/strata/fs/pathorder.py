"""Listing rows in the order of their paths, without making the paths.

A row is a directory prefix (``/``, ``/a/``, ``/a/b/``: one per distinct directory path) and
a name, its path the two joined.  ``sorted`` of 200 000 such paths needs every path as a
Python string at once (15 MB of a 200 000-file NTFS listing, and 9 MB more while it sorts);
this orders the names within each directory instead, with numpy, and lays the directories
out in the order their paths take.

Paths sort by code point, which is the byte order of their UTF-8 (unpaired surrogates
written as Python's surrogatepass writes them keep it too).  All paths below ``/a/`` follow
each other in that order, and each sorts against a name ``x`` of ``/`` as the key ``a/``
would, since no name holds ``/``: so a directory's rows are its names and, for each
subdirectory, one block keyed by its name and ``/``, placed where the key sorts (``a-b``
sorts between ``a`` and the block ``a/``).  Equal paths keep their rows' order, as in a
stable sort.  A name holding ``/`` (NTFS refuses it, a damaged volume may not) breaks this;
callers check ``SLASH`` first.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

SLASH = b"/"
PADDING = 16  # zero bytes a names buffer ends with, so 8 bytes can be read at any name
_BYTES = 7  # of a name compared per round
_GOES_ON = _BYTES + 1  # how many bytes are left, for a name longer than the round's bytes
_KEY = np.dtype([("group", ">u4"), ("name", ">u8")])  # compared as 12 bytes ("S12")
_KEEP = np.array([((1 << 64) - 1) ^ ((1 << (64 - 8 * k)) - 1) for k in range(9)], np.uint64)
_SLICE = 1 << 14  # keys read at once: the reads' temporaries stay small (~1 MB)


class Prefixes(NamedTuple):
    """Directory prefixes as a tree: prefix 0 is ``/``, every other one is its parent's
    and its name and ``/`` (distinct prefixes, each one's parent before it)."""

    parent: np.ndarray  # int32; the root's is 0
    depth: np.ndarray  # int32; the root's is 0
    names: list[str]  # the root's is ""

    @classmethod
    def of(cls, prefixes: list[str]) -> Prefixes:
        """The tree of prefix strings (``/``, ``/a/``, ...)."""
        index = {p: i for i, p in enumerate(prefixes)}
        split = [p[:-1].rpartition("/") for p in prefixes[1:]]
        parent = [0] + [index[f"{head}/"] for head, _, _ in split]
        depth = [p.count("/") - 1 for p in prefixes]
        return cls(
            np.array(parent, np.int32), np.array(depth, np.int32), [""] + [n for *_, n in split]
        )


def path_order(
    prefixes: Prefixes,
    names: bytes | bytearray,
    slots: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """The indexes into ``rows`` of rows (prefix ``slots[r]``, ``names[starts[r]:starts[r] +
    lengths[r]]``) in path order.  ``names`` (UTF-8, no name holding ``/``) ends with
    ``PADDING`` zero bytes."""
    count = rows.size
    if count == 0:
        return np.zeros(0, np.int32)
    tree = _Tree(prefixes)
    blocks, block_starts, block_lengths = tree.keys()
    item_slot = _gathered(slots, rows, tree.parent[1:], np.int32)
    sizes = tree.sizes(item_slot[:count])
    keys = _Keys(
        (np.frombuffer(names, np.uint8), np.frombuffer(blocks, np.uint8)),
        count,
        _gathered(starts, rows, block_starts, np.int64 if len(names) >= 1 << 31 else np.int32),
        _gathered(lengths, rows, block_lengths, np.int32),
    )
    order = keys.sorted(item_slot)
    del keys
    sorted_slot = item_slot[order]
    del item_slot
    return tree.place(order, sorted_slot, sizes, count)


def _gathered(column: np.ndarray, rows: np.ndarray, then: np.ndarray, dtype: type) -> np.ndarray:
    """``column[rows]`` and ``then`` after it, gathered straight into one array."""
    out = np.empty(rows.size + then.size, dtype)
    if column.dtype == dtype:
        np.take(column, rows, out=out[: rows.size])
    else:
        out[: rows.size] = column[rows]
    out[rows.size :] = then
    return out


class _Tree:
    """The prefixes' blocks: each one's key (its name and ``/``), and where they go."""

    def __init__(self, prefixes: Prefixes) -> None:
        self.count = len(prefixes.names)
        self.parent, self.depth = prefixes.parent, prefixes.depth
        self._keys = [f"{name}/".encode("utf-8", "surrogatepass") for name in prefixes.names[1:]]

    def keys(self) -> tuple[bytes, np.ndarray, np.ndarray]:
        """The block keys of the prefixes after the root, one after another (padded), where
        each starts and its length."""
        lengths = np.array([len(k) for k in self._keys], np.int64)
        return b"".join(self._keys) + bytes(PADDING), np.cumsum(lengths) - lengths, lengths

    def levels(self) -> list[np.ndarray]:
        """The prefixes of each depth from 1 on, deepest last."""
        by_depth = np.argsort(self.depth, kind="stable")
        cuts = np.searchsorted(self.depth[by_depth], np.arange(1, int(self.depth.max()) + 2))
        return [by_depth[a:b] for a, b in itertools.pairwise(cuts.tolist())]

    def sizes(self, slots: np.ndarray) -> np.ndarray:
        """The rows at or below each prefix."""
        size = np.bincount(slots, minlength=self.count).astype(np.int32)
        for level in reversed(self.levels()):
            np.add.at(size, self.parent[level], size[level])
        return size

    def place(
        self, order: np.ndarray, sorted_slot: np.ndarray, sizes: np.ndarray, count: int
    ) -> np.ndarray:
        """The rows (the first ``count`` items) in path order, from the items sorted within
        their prefix (``order``, and each one's prefix): a block takes as many places as
        the rows below it."""
        block = order >= count
        block_of = order[block] - count + 1
        before = np.ones(order.size, np.int32)  # each item's places, then those before it
        before[block] = sizes[block_of]
        np.cumsum(before, out=before)
        before -= 1
        before[block] -= sizes[block_of] - 1
        first = np.concatenate(([True], sorted_slot[1:] != sorted_slot[:-1]))
        opened = np.where(first, before, 0)
        del first
        before -= np.maximum.accumulate(opened, out=opened)  # now within its prefix's places
        del opened
        block_start = np.zeros(self.count, np.int32)
        block_start[block_of] = before[block]
        start = np.zeros(self.count, np.int32)
        for level in self.levels():
            start[level] = start[self.parent[level]] + block_start[level]
        before += start[sorted_slot]
        before[block] = count  # the blocks' places: one past the rows'
        out = np.empty(count + 1, order.dtype)
        out[before] = order
        return out[:count]


class _Keys:
    """The sort keys of the items (the rows' names, then the blocks' keys), seven bytes a
    round: a round's key is 12 bytes compared as bytes, the item's group (its prefix, then
    its group of equal keys so far), seven bytes of its name (zeros past the end) and how
    many are left (8: more).  A stable argsort of them took 5-15 ms for 200 000 rows,
    ``lexsort`` of the group and a uint64 key 24-33 ms; one uint64 holding both left five
    bytes for the name, and every row of the 200 000-file volume (``f000501.txt``) took
    a second round."""

    def __init__(
        self,
        buffers: tuple[np.ndarray, np.ndarray],
        rows: int,
        starts: np.ndarray,
        lengths: np.ndarray,
    ) -> None:
        self.buffers = buffers
        self.rows = rows
        self.starts, self.lengths = starts, lengths

    def sorted(self, slot: np.ndarray) -> np.ndarray:
        """Item indexes by (slot, key), ties in index order."""
        keys = self.round(None, slot, 0)
        order = np.argsort(keys.view("S12"), kind="stable")
        tied, group = _ties(keys, order)
        del keys
        k = 1
        while tied.size:  # the items of each group of equal keys so far, by their next bytes
            at = order[tied]
            keys = self.round(at, group, k)
            sub = np.argsort(keys.view("S12"), kind="stable")
            order[tied] = at[sub]
            still, group = _ties(keys, sub)
            tied = tied[still]
            k += 1
        return order.astype(np.int32 if order.size < 1 << 31 else np.int64)

    def round(self, items: np.ndarray | None, group: np.ndarray, k: int) -> np.ndarray:
        """The keys of round ``k`` of ``items`` (None: every item) in groups ``group``."""
        count = self.starts.size if items is None else items.size
        out = np.empty(count, _KEY)
        for lo in range(0, count, _SLICE):
            hi = min(count, lo + _SLICE)
            part = np.arange(lo, hi) if items is None else items[lo:hi]
            out["group"][lo:hi] = group[lo:hi]
            out["name"][lo:hi] = self._read(part, k)
        return out

    def _read(self, items: np.ndarray, k: int) -> np.ndarray:
        """Bytes ``7k``..``7k + 7`` of each item's name (zeros past its end) in the top of a
        uint64, and in its low byte how many are left (8: more)."""
        rest = self.lengths[items] - _BYTES * k
        at = self.starts[items] + _BYTES * k
        out = np.empty(items.size, np.uint64)
        is_row = items < self.rows
        if is_row.all():
            out[:] = _read_be64(self.buffers[0], at)
        else:
            for buffer, mine in zip(self.buffers, (is_row, ~is_row), strict=True):
                out[mine] = _read_be64(buffer, at[mine])
        out &= _KEEP[np.clip(rest, 0, _BYTES)]
        out |= np.clip(rest, 0, _GOES_ON).astype(np.uint64)
        return out


def _read_be64(buffer: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The 8 bytes at each offset ``at`` of ``buffer`` (padded) as big-endian uint64: two
    aligned words shifted together."""
    words = buffer[: buffer.size // 8 * 8].view("<u8")
    word = at >> 3
    shift = ((at & 7) << 3).astype(np.uint64)
    high = words[word].byteswap()
    high <<= shift
    word += 1
    low = words[word].byteswap()
    low >>= np.uint64(1)
    low >>= np.uint64(63) - shift
    high |= low
    return high


def _ties(keys: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``order`` of keys equal to a neighbour's whose names go on, and a number
    per position shared by the equal ones (ascending from 0); compared a slice at a time."""
    same = np.empty(max(order.size - 1, 0), bool)
    for lo in range(0, same.size, _SLICE):
        hi = min(same.size, lo + _SLICE)
        run = keys[order[lo : hi + 1]]
        name = run["name"]
        same[lo:hi] = (run["group"][1:] == run["group"][:-1]) & (name[1:] == name[:-1])
        same[lo:hi] &= (name[1:] & 0xFF) == _GOES_ON
    at = np.flatnonzero(same)
    if at.size == 0:
        return at, at
    mark = np.zeros(order.size, bool)  # not numpy.union1d: its numpy.unique imports numpy.ma
    mark[at] = mark[at + 1] = True
    tied = np.flatnonzero(mark)
    opens = np.concatenate(([True], ~same))[tied]  # not equal to the key before it
    return tied, np.cumsum(opens) - 1
