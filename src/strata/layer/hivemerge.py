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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

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
    """What turns ``base`` into ``mine``."""
    out = HiveChanges()
    _walk(base, base.root(), mine, mine.root(), "", out)
    return out


def _walk(base: Hive, b: int | None, mine: Hive, m: int, path: str, out: HiveChanges) -> None:
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
        child = f"{path}\\{name}" if path else name
        other = below.pop(name.upper(), None)
        if other is None:
            out.added_keys.append(child)
        _walk(base, other[1] if other else None, mine, node, child, out)
    for name, _ in below.values():
        out.deleted_keys.append(f"{path}\\{name}" if path else name)


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
