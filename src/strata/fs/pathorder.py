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

import numpy as np

SLASH = b"/"
PADDING = 16  # zero bytes a names buffer ends with, so 8 bytes can be read at any name
_BYTES = 7  # of a key compared per round: the top 7 bytes of a uint64, then the rest class
_GOES_ON = _BYTES + 1  # the rest class of a key longer than the round's bytes
_KEEP = np.array([((1 << 64) - 1) ^ ((1 << (64 - 8 * k)) - 1) for k in range(8)], np.uint64)
_SLICE = 1 << 14  # keys read at once: the reads' temporaries stay small (~1 MB)


def path_order(
    prefixes: list[str],
    names: bytes | bytearray,
    slots: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """The indexes into ``rows`` of rows ``(prefixes[slots[r]], names[starts[r]:starts[r] +
    lengths[r]])`` in path order.  ``prefixes`` are distinct, ``prefixes[0]`` is ``/`` and
    every other one's parent is among them; ``names`` (UTF-8, no name holding ``/``) ends
    with ``PADDING`` zero bytes."""
    count = rows.size
    if count == 0:
        return np.zeros(0, np.int32)
    tree = _Tree(prefixes)
    blocks, block_starts, block_lengths = tree.keys()
    item_slot = _gathered(slots, rows, tree.parent[1:], np.int32)
    keys = _Keys(
        (np.frombuffer(names, np.uint8), np.frombuffer(blocks, np.uint8)),
        count,
        _gathered(starts, rows, block_starts, np.int64 if len(names) >= 1 << 31 else np.int32),
        _gathered(lengths, rows, block_lengths, np.int32),
    )
    order = keys.sorted(item_slot)
    del keys
    weight = np.ones(item_slot.size, np.int32)
    weight[count:] = tree.sizes(item_slot[:count])[1:]
    return tree.place(order, item_slot, weight, count)


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
    """The directory prefixes: each one's parent, depth and key (its name and ``/``)."""

    def __init__(self, prefixes: list[str]) -> None:
        index = {p: i for i, p in enumerate(prefixes)}
        split = [p[:-1].rpartition("/") for p in prefixes[1:]]
        self.count = len(prefixes)
        self.parent = np.array([0] + [index[f"{head}/"] for head, _, _ in split], np.int32)
        self.depth = np.array([p.count("/") - 1 for p in prefixes], np.int32)
        self._keys = [f"{name}/".encode("utf-8", "surrogatepass") for _, _, name in split]

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
        self, order: np.ndarray, item_slot: np.ndarray, weight: np.ndarray, count: int
    ) -> np.ndarray:
        """The rows (the first ``count`` items) in path order, from the items sorted within
        their prefix: a block takes as many places as the rows below it."""
        sorted_slot = item_slot[order]
        first = np.flatnonzero(np.concatenate(([True], sorted_slot[1:] != sorted_slot[:-1])))
        del sorted_slot
        w = weight[order]
        before = np.cumsum(w, dtype=np.int32)
        before -= w
        del w
        before -= np.repeat(before[first], np.diff(np.append(first, order.size)))
        offset = np.empty(order.size, np.int32)  # of each item within its prefix's places
        offset[order] = before
        del before
        start = np.zeros(self.count, np.int32)
        for level in self.levels():
            start[level] = start[self.parent[level]] + offset[count + level - 1]
        at = start[item_slot[:count]]
        at += offset[:count]
        out = np.empty(count, np.int32 if count < 1 << 31 else np.int64)
        out[at] = np.arange(count, dtype=out.dtype)
        return out


class _Keys:
    """The sort keys of the items (the rows' names, then the blocks' keys), read seven bytes
    a round: each round's key is a uint64 of those bytes (big-endian, zeros past the end)
    and, in its low byte, how many bytes are left (``_GOES_ON`` for more than seven)."""

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
        key = self.round(None, 0)
        order = np.lexsort((key, slot))
        tied, group = _ties(slot[order], key[order])
        del key
        k = 1
        while tied.size:  # the items of each group of equal keys, by their next bytes
            at = order[tied]
            key = self.round(at, k)
            sub = np.lexsort((key, group))
            order[tied] = at[sub]
            still, group = _ties(group[sub], key[sub])
            tied = tied[still]
            k += 1
        return order

    def round(self, items: np.ndarray | None, k: int) -> np.ndarray:
        """The keys of round ``k`` of ``items`` (None: every item)."""
        count = self.starts.size if items is None else items.size
        out = np.empty(count, np.uint64)
        for lo in range(0, count, _SLICE):
            hi = min(count, lo + _SLICE)
            part = np.arange(lo, hi) if items is None else items[lo:hi]
            out[lo:hi] = self._read(part, k)
        return out

    def _read(self, items: np.ndarray, k: int) -> np.ndarray:
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


def _ties(group: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of sorted items whose key equals a neighbour's so far and goes on, and a
    number per position shared by the equal ones (ascending)."""
    same = (group[1:] == group[:-1]) & (key[1:] == key[:-1])
    same &= (key[1:] & np.uint64(0xFF)) == _GOES_ON
    at = np.flatnonzero(same)
    if at.size == 0:
        return at, at
    tied = np.union1d(at, at + 1)
    opens = np.concatenate(([True], ~same))[tied]  # not equal to the item before it
    return tied, np.cumsum(opens)
