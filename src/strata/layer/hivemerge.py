"""Merge registry hives key by key: what one layer changed in a hive, applied to the hive as
earlier layers left it.

References: docs/architecture.md ("Layers at file level"); hivex(3) (libhivex: reading,
``hivex_node_add_child``, ``hivex_node_delete_child``, ``hivex_node_set_values``,
``hivex_commit``).

A layer's file delta carries a hive it changed whole.  When an earlier layer of the same
image changed that hive too, taking the later file whole would drop the earlier layer's keys
(an app's registration, its services).  Instead the later layer's changes are found by
walking its hive beside the OS layer's (the hive it was packaged on): keys added or removed,
values set (new, or another type or data) or removed; they are then made on the merged hive.
Key and value names compare case-insensitively, as Windows does.  A value two layers set to
different data is reported, and the later layer's stands.

Limits: a key made here takes its parent's security descriptor and a new last-write time
(hivex makes keys so); a key's class name is not carried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from strata.integrity.hive import Hive, Value


class Change(NamedTuple):
    name: str  # as the layer spells it
    value: Value | None  # None: removed
    base: Value | None  # in the hive the layer was packaged on


class Touched(NamedTuple):
    """A value ``apply`` set or removed; ``overridden``: an earlier layer had changed it
    otherwise (the hive held neither the packaged-on value nor this one)."""

    key: str
    name: str
    overridden: bool


@dataclass
class HiveChanges:
    """One layer's changes to a hive, in the order they apply."""

    deleted_keys: list[str] = field(default_factory=list)  # subtrees, topmost only
    added_keys: list[str] = field(default_factory=list)
    # key path -> value name folded -> (name as spelled, the value or None: removed, and the
    # value in the hive the layer was packaged on)
    values: dict[str, dict[str, Change]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        changed = [c.value for per_key in self.values.values() for c in per_key.values()]
        return {
            "keys_added": len(self.added_keys),
            "keys_deleted": len(self.deleted_keys),
            "values_set": sum(v is not None for v in changed),
            "values_deleted": sum(v is None for v in changed),
        }


def changes(base: Hive, mine: Hive) -> HiveChanges:
    """What turns ``base`` into ``mine``: the keys whose cells changed when ``mine`` grew from
    ``base`` in place (``changed_keys``), or every key when it did not."""
    keys = changed_keys(base.path, mine.path)
    return walked(base, mine) if keys is None else _targeted(base, mine, keys)


def walked(base: Hive, mine: Hive) -> HiveChanges:
    """What turns ``base`` into ``mine``, from a walk of both whole trees: the reference."""
    out = HiveChanges()
    _walk(base, base.root(), mine, mine.root(), "", out)
    return out


PAGE = 4096
BINS = 4096  # hive bins start after the base block
TARGETED_LIMIT = 0.25  # past this share of pages changed, walk the whole trees


def changed_keys(base_path: str, mine_path: str) -> list[int] | None:
    """The keys (nk cells, as hivex handles: file offsets) of ``mine`` in the pages where it
    differs from ``base``; None when that is more than a quarter of them.

    Windows and hivex change a hive in place: a key whose values or direct subkeys change
    has its nk cell rewritten (its value or subkey count or list, its last-write time), and
    a new key is a new nk cell.  So only keys with an nk cell in a changed page can differ
    from ``base``, and a deleted key shows as a change of its parent.  A reorganised hive
    (Windows compacts one at boot when fragmented) changes most pages: the whole trees are
    walked then.
    """
    with open(base_path, "rb") as f:
        old = f.read()
    with open(mine_path, "rb") as f:
        new = f.read()
    pages = -(-(len(new) - BINS) // PAGE)
    if pages <= 0:
        return []
    common = min(len(old), len(new)) - BINS
    a = np.frombuffer(old, np.uint8, common // PAGE * PAGE, BINS).reshape(-1, PAGE)
    b = np.frombuffer(new, np.uint8, common // PAGE * PAGE, BINS).reshape(-1, PAGE)
    dirty = np.ones(pages, bool)
    dirty[: len(a)] = (a != b).any(axis=1)
    if dirty.mean() > TARGETED_LIMIT:
        return None
    return list(_nk_cells(new, dirty))


def _nk_cells(data: bytes, dirty: np.ndarray) -> Iterator[int]:
    """Allocated nk cells of the hive bins that hold a dirty page."""
    at = BINS
    while at + 32 <= len(data) and data[at : at + 4] == b"hbin":
        size = int.from_bytes(data[at + 8 : at + 12], "little")
        if size < PAGE or size % PAGE or at + size > len(data):
            return  # hivex reads what follows as it does; nothing more to find here
        first, last = (at - BINS) // PAGE, (at + size - BINS - 1) // PAGE
        if dirty[first : last + 1].any():
            yield from _bin_nk(data, at + 32, at + size)
        at += size


def _bin_nk(data: bytes, at: int, end: int) -> Iterator[int]:
    while at + 6 <= end:
        size = int.from_bytes(data[at : at + 4], "little", signed=True)
        if size == 0 or abs(size) % 8:
            return  # a damaged bin: the cells past here cannot be told apart
        if size < 0 and data[at + 4 : at + 6] == b"nk":
            yield at
        at += abs(size)


def _targeted(base: Hive, mine: Hive, keys: list[int]) -> HiveChanges:
    out = HiveChanges()
    paths = sorted(({_path(mine, k): k for k in keys}).items(), key=lambda p: p[0].count("\\"))
    added: list[str] = []  # subtrees walked whole, so their keys are done
    for path, node in paths:
        folded = path.upper()
        if any(folded == a or folded.startswith(a + "\\") for a in added):
            continue
        other = base.key(path) if path else base.root()
        if other is None:
            out.added_keys.append(path)
            _walk(base, None, mine, node, path, out)
            added.append(folded)
            continue
        for child in _key_diff(base, other, mine, node, path, out):
            added.append(child.upper())
    return out


def _walk(base: Hive, b: int | None, mine: Hive, m: int, path: str, out: HiveChanges) -> None:
    for name, node, other in _children(base, b, mine, m, path, out):
        child = f"{path}\\{name}" if path else name
        _walk(base, other, mine, node, child, out)


def _key_diff(base: Hive, b: int, mine: Hive, m: int, path: str, out: HiveChanges) -> Iterator[str]:
    """One key's own changes (values, subkeys added or removed); yields each added subkey's
    path, walked whole."""
    for name, node, other in _children(base, b, mine, m, path, out):
        if other is None:
            child = f"{path}\\{name}" if path else name
            _walk(base, None, mine, node, child, out)
            yield child


def _children(
    base: Hive, b: int | None, mine: Hive, m: int, path: str, out: HiveChanges
) -> Iterator[tuple[str, int, int | None]]:
    """Record the values of key ``path`` that differ and its subkeys removed; yield each of
    its subkeys in ``mine`` (name, node, the same key in ``base`` or None: added)."""
    theirs = {v.name.upper(): v for v in base.values(b)} if b is not None else {}
    ours = {v.name.upper(): v for v in mine.values(m)}
    differ = {
        key: Change(v.name, v, theirs.get(key)) for key, v in ours.items() if theirs.get(key) != v
    }
    differ.update({k: Change(theirs[k].name, None, theirs[k]) for k in theirs.keys() - ours.keys()})
    if differ:
        out.values[path] = differ
    below = {name.upper(): (name, node) for name, node in base.children(b)} if b is not None else {}
    for name, node in mine.children(m):
        other = below.pop(name.upper(), None)
        if other is None:
            out.added_keys.append(f"{path}\\{name}" if path else name)
        yield name, node, other[1] if other else None
    for name, _ in below.values():
        out.deleted_keys.append(f"{path}\\{name}" if path else name)


def _path(hive: Hive, node: int) -> str:
    """The key path of ``node`` (backslash separated, the root's name left out)."""
    parts = []
    root = hive.root()
    while node != root:
        parts.append(hive.name_of(node))
        node = hive.parent(node)
    return "\\".join(reversed(parts))


def apply(hive: Hive, change: HiveChanges) -> Iterator[Touched]:
    """Make ``change`` on ``hive`` (opened with ``write``; the caller commits).  Yields each
    value it set or removed, for the conflict report."""
    for path in change.deleted_keys:
        node = hive.key(path)
        if node is not None:
            hive.delete_key(node)
    for path in change.added_keys:
        _ensure(hive, path)
    for path, per_key in change.values.items():
        node = _ensure(hive, path)
        current = {v.name.upper(): v for v in hive.values(node)}
        for key, (name, value, base) in per_key.items():
            prior = current.get(key)
            if value is None:
                current.pop(key, None)
            else:  # an existing value keeps its spelling, as when Windows sets it
                current[key] = value if prior is None else Value(prior.name, value.type, value.data)
            yield Touched(path, name, prior != base and prior != value)
        hive.set_values(node, list(current.values()))


def _ensure(hive: Hive, path: str) -> int:
    """The key at ``path``, made with its missing parents."""
    node = hive.root()
    for part in (p for p in path.split("\\") if p):
        found = hive.child(node, part, path)
        node = found if found is not None else hive.add_key(node, part)
    return node


TYPE_NAMES = {
    1: "REG_SZ", 2: "REG_EXPAND_SZ", 3: "REG_BINARY", 4: "REG_DWORD", 7: "REG_MULTI_SZ",
    11: "REG_QWORD",
}  # fmt: skip


def listing(change: HiveChanges) -> dict[str, Any]:
    """``change`` as ``layer diff --registry`` shows it: keys added and removed, and each
    value set (its type and data as hivexget shows them, and what it was) or removed."""
    values = [
        {
            "key": key,
            "name": c.name,
            "change": "deleted" if c.value is None else "set",
            "type": _type_name(c.value or c.base),
            "data": c.value.shown() if c.value is not None else None,
            "was": c.base.shown() if c.base is not None else None,
        }
        for key, per_key in sorted(change.values.items(), key=lambda kv: kv[0].upper())
        for c in sorted(per_key.values(), key=lambda c: c.name.upper())
    ]
    return {
        **change.counts,
        "added": sorted(change.added_keys, key=str.upper),
        "deleted": sorted(change.deleted_keys, key=str.upper),
        "values": values,
    }


def _type_name(value: Value | None) -> str | None:
    if value is None:
        return None
    return TYPE_NAMES.get(value.type, f"type {value.type}")


def spill(pieces: Iterable[bytes], out: Path) -> bytes:
    """Write ``pieces`` (a hive's bytes) to ``out``, for hivex, which opens files; their
    digest."""
    digest = hashlib.sha256()
    with open(out, "wb") as f:
        for piece in pieces:
            f.write(piece)
            digest.update(piece)
    return digest.digest()


def pieces_of(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(size):
            yield piece
