"""Deleting layer versions, whole layers and images.

References: docs/architecture.md ("Deleting"); Citrix App Layering deletes a layer version
only when nothing is built on it.

Only the catalog changes, in one transaction with a history row per deletion; the chunks no
other version or image uses are left to ``store gc``. A version is refused (``StateError``,
nothing changed) while another version depends on it: as the base version it is being made
from (a deployable one folded its base's content in at finalize, so it is only detached: its
base becomes none), or as a layer of the stack it was (or is being) packaged on (a
deployable version's manifest ``stack``; a packaging one's packaging record and the stack
its ``create-version`` row recorded, which exists before the record does). An OS layer is
refused whole while layers belong to it. A version being written by an import or a finalize
is claimed by it (``Store.claim_version``), so the delete gets ``Conflict``; one left
``finalizing`` by an interrupted finalize is refused until a rerun completes it. Images are
untouched: an image's manifest names its chunks itself, not the layer versions it was
published from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from typing import Any

from strata.errors import CorruptImage, StateError
from strata.ops.packaging import read_record, record_path, remove_file, unused_bases
from strata.ops.store import PathLike, open_store
from strata.store import Store
from strata.store.catalog import check_name
from strata.store.db import transaction

GC_HINT = "run `strata store gc` to reclaim the chunks no other version or image uses"


def delete_version(
    layer: str,
    version: str,
    *,
    store: PathLike = None,
    comment: str = "",
    remove_disk: bool = False,
) -> dict[str, Any]:
    """Delete version ``version`` of ``layer``; the layer stays, even when it has no other
    version. A packaging version is how a packaging disk is abandoned: its disk and job ISO
    stay where they are (the result names them) unless ``remove_disk``."""
    check_name(layer, "layer")
    check_name(version, "version")
    return _delete(layer, version, store, comment, remove_disk)


def delete_layer(
    name: str, *, store: PathLike = None, comment: str = "", remove_disk: bool = False
) -> dict[str, Any]:
    """Delete layer ``name`` with all its versions, refused when any one of them would be
    (or, for an OS layer, when layers belong to it)."""
    check_name(name, "layer")
    return _delete(name, None, store, comment, remove_disk)


def _delete(
    layer: str, version: str | None, store: PathLike, comment: str, remove_disk: bool
) -> dict[str, Any]:
    with open_store(store) as st, ExitStack() as claims:
        with transaction(st.db):
            row = st.catalog.layer(layer)
            doomed = _doomed(st, layer, row["versions"], version)
            for v in doomed:  # Conflict at once while an import or a finalize writes it
                claims.enter_context(st.claim_version(layer, v["name"]))
            _refuse_finalizing(layer, doomed)
            names = [v["name"] for v in doomed]
            _refuse_dependents(st, row, names, whole=version is None)
            records = {name: read_record(st, layer, name) for name in names}
            details = {v["name"]: _details(v, records[v["name"]]) for v in doomed}
            st.catalog.delete_versions(
                layer, names, drop_layer=version is None, comment=comment, details=details
            )
        disks = [_packaging_files(records[name]) for name in names]
        removed, warnings = _after_commit(st, layer, names, records, disks, remove_disk)
        unused = unused_bases(st, records.values()) if remove_disk else []
    versions = [
        {**details[name], "version": name, "packaging_disk": disk, "job_iso": iso}
        for name, (disk, iso) in zip(names, disks, strict=True)
    ]
    return {
        "layer": layer,
        "kind": row["kind"],
        "layer_deleted": version is None,
        "versions": versions,
        "removed": removed,
        "left": [p for pair in disks for p in pair if p is not None and p not in removed],
        "unused_bases": unused,
        # Each version's stored size counts the chunks it shares: gc frees no more.
        "reclaim_at_most": sum(v["stored_size"] or 0 for v in doomed),
        "reclaim": GC_HINT,
        "warnings": warnings,
    }


def _doomed(
    st: Store, layer: str, versions: list[dict[str, Any]], version: str | None
) -> list[dict[str, Any]]:
    if version is None:
        return versions
    found = [v for v in versions if v["name"] == version]
    if not found:
        st.catalog.version(layer, version)  # NotFound, naming it
    return found


def _refuse_finalizing(layer: str, doomed: Iterable[dict[str, Any]]) -> None:
    for v in doomed:
        if v["state"] == "finalizing":
            raise StateError(
                what=f"cannot delete {layer}:{v['name']}: it is finalizing (a finalize or OS "
                "import of it was interrupted): run it again to complete the version, then "
                "delete it; nothing was deleted"
            )


def _refuse_dependents(st: Store, row: dict[str, Any], names: Sequence[str], whole: bool) -> None:
    """StateError naming every version (and, for an OS layer deleted whole, every layer)
    that still depends on versions ``names`` of layer ``row``."""
    layer = row["name"]
    # A deployable version holds its base version's content (finalize folds it in), so its
    # base may go: ``delete_versions`` detaches it. One still being made needs its base.
    found = [
        f"{layer}:{v} ({state}) is being made from it as its base version ({layer}:{base})"
        for v, base, state in st.catalog.based_on(layer, names)
        if state in ("packaging", "finalizing")
    ]
    found += _stacked_on(st, {(layer, name) for name in names})
    if whole and row["kind"] == "os":
        found += [f"layer {name} belongs to it" for name in st.catalog.tied_to(layer)]
    if found:
        what = f"layer {layer}" if whole else f"{layer}:{names[0]}"
        raise StateError(
            what=f"cannot delete {what}: {'; '.join(found)}; delete those first "
            "(nothing was deleted)",
            dependents=found,
        )


def _stacked_on(st: Store, doomed: set[tuple[str, str]]) -> list[str]:
    """A line for each version outside ``doomed`` whose stack holds one of them. OS layer
    versions are imported on nothing, so only the others are read."""
    recorded = st.catalog.recorded_stacks()
    found = []
    for layer in st.catalog.layers():
        if layer["kind"] == "os":
            continue
        for v in st.catalog.versions(layer["name"]):
            if (layer["name"], v["name"]) in doomed:
                continue
            for ref in _stack_of(st, layer["name"], v, recorded):
                if ref in doomed:
                    on = ":".join(ref)
                    found.append(
                        f"{layer['name']}:{v['name']} was packaged on {on}"
                        if v["state"] == "deployable"
                        else f"{layer['name']}:{v['name']} ({v['state']}) is packaged on {on}"
                    )
    return found


def _stack_of(
    st: Store, layer: str, v: dict[str, Any], recorded: dict[tuple[str, str], Any]
) -> set[tuple[str, str]]:
    """The layer versions ``layer:v`` was packaged on: its manifest's stack once it is
    deployable (a stack it does not hold as pairs is a CorruptImage: what depends on what
    cannot be told), else what its packaging record and its creation recorded."""
    if v["state"] == "deployable":
        meta = st.get_manifest(bytes.fromhex(v["manifest"])).meta
        stack = _pairs(meta.get("stack", []))
        if stack is None:
            raise CorruptImage(
                path=f"layer {layer}:{v['name']}",
                structure="layer manifest",
                problem="its stack is not a list of [layer, version] pairs",
                field="meta.stack",
            )
        return stack
    record = read_record(st, layer, v["name"]) or {}
    return (_pairs(record.get("stack")) or set()) | (
        _pairs(recorded.get((layer, v["name"]))) or set()
    )


def _pairs(stack: Any) -> set[tuple[str, str]] | None:
    if not isinstance(stack, list):
        return None
    pairs = [tuple(ref) for ref in stack if isinstance(ref, list) and len(ref) == 2]
    if len(pairs) != len(stack) or not all(isinstance(x, str) for ref in pairs for x in ref):
        return None
    return set(pairs)  # type: ignore[arg-type]


def _details(v: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """What the history keeps of a deleted version (and the result says of it)."""
    return {
        "state": v["state"],
        "base": v["base"],
        "manifest": v["manifest"],
        "stored_size": v["stored_size"],
        "stack": record.get("stack") if record else None,
        "disk": record.get("disk_path") if record else None,
    }


def _packaging_files(record: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """The packaging disk and job ISO a record names, each None unless it is still there."""
    disk, iso = (record.get(key) if record else None for key in ("disk_path", "iso"))
    return _there(disk), _there(iso)


def _there(path: Any) -> str | None:
    return path if isinstance(path, str) and os.path.lexists(path) else None


def _after_commit(
    st: Store,
    layer: str,
    names: Sequence[str],
    records: dict[str, dict[str, Any] | None],
    disks: Sequence[tuple[str | None, str | None]],
    remove_disk: bool,
) -> tuple[list[str], list[str]]:
    """Once the catalog no longer has them: the deleted versions' packaging records go, and
    with ``remove_disk`` their disks and job ISOs, unless a version still in the catalog
    has a record naming the same file (made there after this one's disk was removed).
    What fails here is a warning: the deletion itself is done."""
    removed: list[str] = []
    warnings: list[str] = []
    others = _files_of_others(st) if remove_disk else set()
    for name, files in zip(names, disks, strict=True):
        # Only the record read before the commit: the name is free again, so a new
        # packaging disk of this version may be writing its own by now.
        if records[name] is not None and read_record(st, layer, name) == records[name]:
            remove_file(record_path(st, layer, name), warnings)
        for file in files if remove_disk else ():
            if file is None:
                continue
            if os.path.realpath(file) in others:
                warnings.append(f"{file} is left in place: another version's record names it")
            elif remove_file(file, warnings):
                removed.append(file)
    return removed, warnings


def _files_of_others(st: Store) -> set[str]:
    """The disks and ISOs the packaging records of versions still in the catalog name."""
    out = set()
    for layer in st.catalog.layers():
        for v in st.catalog.versions(layer["name"]):
            record = read_record(st, layer["name"], v["name"]) or {}
            for key in ("disk_path", "iso"):
                if isinstance(record.get(key), str):
                    out.add(os.path.realpath(record[key]))
    return out


__all__ = ["GC_HINT", "delete_layer", "delete_version"]
