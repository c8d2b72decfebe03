"""Layer verbs: import an OS layer, create a packaging disk, finalize it into a version.

References: docs/architecture.md ("Layers end to end"); Citrix App Layering's flow
(Create OS/App/Platform Layer, packaging disk, Shutdown for Finalize, Finalize).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xxhash

from strata import jsontext
from strata.blockdev.copy import Progress
from strata.errors import (
    IntegrityError,
    InvalidInput,
    NotFound,
    NotReady,
    StateError,
    StrataError,
)
from strata.formats import registry
from strata.formats.registry import CreateRequest, WriteRequest
from strata.fs.iso import write_job_iso
from strata.fs.ntfs.shutdown import Unfinished
from strata.fs.volumes import located_volumes
from strata.integrity.gate import (
    GateReport,
    encrypted_volumes,
    run_gate,
    unfinished_shutdowns,
)
from strata.layer import filedelta, filemerge
from strata.layer.blocks import (
    BLOCK_SIZE,
    allocated_ranges,
    capture_delta,
    capture_disk,
)
from strata.layer.compose import compose_tables
from strata.layer.ntfsmerge import HIVE_PATH, OsFiles
from strata.layer.storedev import StoreDevice
from strata.ops.packaging import (
    BASE_OPTIONS,
    MARKER_FIELDS,
    SUFFIX,
    BaseSpec,
    cached_base,
    fingerprint,
    holding,
    record_path,
    remove_file,
    save_record,
    unused_bases,
)
from strata.ops.store import open_store
from strata.store import Manifest, Store, to_hex
from strata.store.catalog import check_distinct, check_name
from strata.store.db import transaction

PathLike = str | os.PathLike[str] | None
CAPTURE_LEVEL = 1  # zstd level for capture: finalize is on the user's critical path


@dataclass(frozen=True)
class Resolved:
    """One layer version, resolved and loaded."""

    layer: str
    version: str
    kind: str
    os_layer: str | None
    manifest_id: bytes
    manifest: Manifest
    row: dict[str, Any]

    @property
    def ref(self) -> list[str]:
        return [self.layer, self.version]

    @property
    def table(self) -> np.ndarray:
        return self.manifest.table("blocks")


def parse_ref(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION`` (the last colon splits)."""
    name, sep, version = text.rpartition(":")
    if not sep:
        return text, None
    if not name or not version:
        raise InvalidInput(f"{text!r} is not NAME or NAME:VERSION")
    return name, version


def resolve(store: Store, text: str | Sequence[str]) -> Resolved:
    name, version = parse_ref(text) if isinstance(text, str) else (text[0], text[1])
    layer = store.catalog.layer(name)
    deployable = [v for v in layer["versions"] if v["state"] == "deployable"]
    if version is None:
        if not deployable:
            raise NotFound(what=f"a deployable version of layer {name!r}")
        row = deployable[-1]
    else:
        row = store.catalog.version(name, version)
        if row["state"] != "deployable":
            raise StateError(
                what=f"version {version!r} of {name!r} is {row['state']}, not deployable"
            )
    mid = bytes.fromhex(row["manifest"])
    return Resolved(
        name, row["name"], layer["kind"], layer["os_layer"], mid, store.get_manifest(mid), row
    )


def check_stack(layers: Sequence[Resolved]) -> None:
    """Block-level composition is valid when each layer was captured on exactly the layers
    applied before it, in the same order."""
    for at, layer in enumerate(layers[1:], start=1):
        captured_on = filemerge.captured_stack(layer)
        below = [x.ref for x in layers[:at]]
        if captured_on != below:
            raise StateError(
                what=f"layer {layer.layer}:{layer.version} was captured on "
                f"{_stack_text(captured_on)}, but this image puts it on {_stack_text(below)}; "
                "combining independently packaged layers needs a file-level merge"
            )


def _stack_text(stack: Sequence[Sequence[str]]) -> str:
    return " + ".join(f"{n}:{v}" for n, v in stack) or "nothing"


PLACE_KIND = {"--os": "os", "--platform": "platform", "--app": "app"}
KIND_NAME = {"os": "an OS layer", "platform": "a platform layer", "app": "an app layer"}


def check_kinds(os_layer: Resolved, platform: Resolved | None, apps: Sequence[Resolved]) -> None:
    """Each layer is of the kind its place takes (--os, --platform, --app), as image publish
    and packaging-disk create both ask."""
    for place, layer in [
        ("--os", os_layer),
        ("--platform", platform),
        *(("--app", a) for a in apps),
    ]:
        if layer is not None and layer.kind != PLACE_KIND[place]:
            right = [p for p, kind in PLACE_KIND.items() if kind == layer.kind]
            raise InvalidInput(
                f"{place} {layer.layer!r} is {KIND_NAME.get(layer.kind, layer.kind)}, not "
                f"{KIND_NAME[PLACE_KIND[place]]}" + "".join(f"; give it as {p}" for p in right)
            )


def check_same_os(os_layer: Resolved, others: Sequence[Resolved]) -> None:
    for layer in others:
        if layer.os_layer is not None and layer.os_layer != os_layer.layer:
            raise InvalidInput(
                f"layer {layer.layer!r} belongs to OS layer {layer.os_layer!r}, "
                f"not {os_layer.layer!r}"
            )


def composed_table(layers: Sequence[Resolved]) -> np.ndarray:
    return compose_tables([layer.table for layer in layers])


def stack_table(st: Store, layers: Sequence[Resolved]) -> np.ndarray:
    """The disk a stack of layers makes: block tables composed when each layer was captured
    on the ones before it, else their file deltas merged (``layer.filemerge``)."""
    try:
        check_stack(layers)
    except StateError:
        meta = layers[0].manifest.meta
        size, sector = int(meta["size"]), int(meta.get("sector_size", 512))
        return filemerge.merge(st, layers, size, sector, workdir=str(st.root / "tmp")).table
    return composed_table(layers)


def layer_diff(ref: str, *, store: PathLike = None, registry: bool = False) -> dict[str, Any]:
    """The file delta of a layer version: per FAT or NTFS volume, each entry with its change.
    ``file_delta`` says whether the version has one; when not, ``reason`` says why.
    ``registry``: also what the version changed in each registry hive it carries, against
    its OS layer's (``registry``: keys added and removed, values set and removed)."""
    with open_store(store, readonly=True) as st:
        layer = resolve(st, ref)
        delta = filedelta.load(layer.manifest)
        info = layer.manifest.meta.get("file_delta") or {}
        return {
            "layer": layer.layer,
            "version": layer.version,
            "kind": layer.kind,
            "file_delta": delta is not None,
            "reason": None if delta is not None else no_file_delta(layer.kind),
            "volumes": delta.listing() if delta is not None else [],
            "skipped": info.get("skipped", []),
            "warnings": info.get("warnings", []),
            **({"registry": registry_changes(st, layer, delta)} if registry else {}),
        }


def registry_changes(
    st: Store, layer: Resolved, delta: filedelta.FileDelta | None
) -> list[dict[str, Any]]:
    """Per hive the version carries on an NTFS volume, what it changed against the hive its
    OS layer holds there (``layer.hivemerge.listing``); a hive the OS layer lacks is new."""
    if delta is None:
        return []
    ntfs = {v.partition for v in delta.volumes if v.fs == "ntfs"}
    rows = [
        r
        for r in range(len(delta.entries))
        if int(delta.entries[r]["partition"]) in ntfs
        and int(delta.entries[r]["flags"]) & filedelta.HAS_CONTENT
        and HIVE_PATH.fullmatch(delta.path(r))
    ]
    if not rows:
        return []
    os_layer = resolve(st, filemerge.captured_stack(layer)[0])
    meta = os_layer.manifest.meta
    base = StoreDevice(st, os_layer.table, int(meta["size"]), int(meta.get("sector_size", 512)))
    try:
        files = OsFiles(base)
        return [_hive_change(st, delta, row, files) for row in rows]
    finally:
        base.close()


def _hive_change(st: Store, delta: filedelta.FileDelta, row: int, files: OsFiles) -> dict[str, Any]:
    from strata.integrity.hive import open_hive
    from strata.layer import hivemerge

    partition, path = int(delta.entries[row]["partition"]), delta.path(row)
    where = {"partition": partition, "hive": path}
    theirs = files.content(partition, path)
    if theirs is None:
        return {**where, "new": True}
    mine = filedelta.read_content(st, delta.chunk_rows(row))
    with (
        open_hive(theirs, f"{path} of the OS layer") as b,
        open_hive(mine, f"{path} of the layer") as m,
    ):
        return {**where, **hivemerge.listing(hivemerge.changes(b, m))}


def no_file_delta(kind: str) -> str:
    """Why a version of a layer of ``kind`` has no file delta."""
    if kind == "os":
        return (
            "OS layers are imported from a disk as blocks (partition table and volumes), "
            "with no packaging, so they have no file delta"
        )
    return (
        "finalize found no FAT or NTFS volume on the packaging disk, so this version holds "
        "its block delta only"
    )


# -- OS import -----------------------------------------------------------------------------
def import_os(
    name: str,
    version: str,
    image: str,
    *,
    store: PathLike = None,
    fmt: str | None = None,
    allowed_dirs: Sequence[str] = (),
    description: str = "",
    comment: str = "",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Any supported disk image → a deployable version of OS layer ``name`` (parents of a
    differencing image looked up in ``allowed_dirs``, default the image's own directory).
    A failure removes the version (and the layer) it created from the catalog again; its
    chunks are left to ``store gc``."""
    started = time.monotonic()
    check_name(name, "layer")
    check_name(version, "version")
    with (
        registry.open_image(image, fmt, allowed_dirs=list(allowed_dirs) or None) as disk,
        open_store(store, create=True) as st,
        st.claim_version(name, version),
        ExitStack() as undo,
    ):
        new_layer, new_version = _claim_os_version(st, name, version, description, comment)
        if new_version:
            undo.callback(st.catalog.discard_version, name, version, drop_layer=new_layer)
        meta = {
            "layer": name,
            "version": version,
            "kind": "os",
            "os_layer": None,
            "size": disk.size,
            "sector_size": disk.sector_size,
            "block_size": BLOCK_SIZE,
            "stack": [],
            "partitions": _partitions(disk),
            "source": os.path.basename(image),
        }
        volumes = list(located_volumes(disk))  # probed once for both warnings
        warnings = [_unfinished_warning(*found) for found in unfinished_shutdowns(volumes)]
        warnings += [_ENCRYPTED.format(where) for where in encrypted_volumes(volumes)]
        capture = capture_disk(st, disk, progress=progress)
        mid = _commit(st, name, version, meta, capture.blocks, None, comment)
        undo.pop_all()
        return {
            "layer": name,
            "version": version,
            "kind": "os",
            "manifest": to_hex(mid),
            "size": disk.size,
            **capture.stats.as_dict(),
            "seconds": round(time.monotonic() - started, 3),
            "warnings": warnings,
        }


def _unfinished_warning(where: str, state: Unfinished) -> str:
    # Imported all the same (the disk may be meant so), but a machine booted from an image
    # made of it may resume the hibernated kernel over file systems the layers changed.
    unread = "; ".join(state.unreadable)
    if not state.reasons:
        return f"{where}: how Windows left the volume could not be read ({unread})"
    also = f"; could not read: {unread}" if unread else ""
    return (
        f"{where}: Windows did not shut down fully ({'; '.join(state.reasons)}{also}): the OS "
        "layer holds the disk as it is, not what Windows last saw, and a machine booted from "
        "it may try to resume; shut Windows down fully (Fast Startup off) and import again"
    )


_ENCRYPTED = (
    "{}: the volume is BitLocker-encrypted: its sectors are ciphertext, no file delta can be "
    "read from it and an image made of it boots only where its keys are; decrypt it "
    "(`manage-bde -off`) and import again"
)


def _claim_os_version(
    st: Store, name: str, version: str, description: str, comment: str
) -> tuple[bool, bool]:
    """The OS layer and the version to import into, in one transaction (two imports of new
    versions may both find no layer); whether each was created here."""
    with transaction(st.db):
        new_layer = _open_os_layer(st, name, description, comment)
        return new_layer, _open_version(st, name, version, comment)


def _open_os_layer(st: Store, name: str, description: str, comment: str) -> bool:
    layer = _find_layer(st, name)
    if layer is None:
        st.catalog.create_layer(name, "os", description=description, comment=comment)
        return True
    if layer["kind"] != "os":
        raise InvalidInput(f"layer {name!r} exists and is not an OS layer")
    return False


def _open_version(st: Store, layer: str, version: str, comment: str) -> bool:
    """A new version, or the one an interrupted run left behind (the caller holds the claim
    on it, so no other run is writing it); never a deployable one."""
    try:
        state = st.catalog.version(layer, version)["state"]
    except NotFound:
        st.catalog.create_version(layer, version, comment=comment)
        return True
    if state not in ("packaging", "finalizing"):
        raise InvalidInput(
            f"version {version!r} of {layer!r} already exists ({state}); choose another --version"
        )
    return False


def _partitions(disk: Any) -> dict[str, Any] | None:
    """The partition table, recorded for the file-level work that reads volumes."""
    try:
        from strata.partition import read_table
    except ImportError:
        return None
    try:
        table = read_table(disk)
    except StrataError:
        return None
    return json.loads(json.dumps(_plain(table), default=str))


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def _find_layer(st: Store, name: str) -> dict[str, Any] | None:
    try:
        return st.catalog.layer(name)
    except NotFound:
        return None


def _commit(
    st: Store,
    layer: str,
    version: str,
    meta: dict[str, Any],
    blocks: np.ndarray,
    masks: np.ndarray | None,
    comment: str,
    files: filedelta.FileDelta | None = None,
) -> bytes:
    manifest = Manifest("layer-version", meta)
    manifest.add_table("blocks", "chunks-v1", blocks)
    if masks is not None:
        manifest.add_table("sectors", "sector-mask-v1", masks)
    if files is not None:
        files.add_to(manifest)
    st.flush()
    mid = st.put_manifest(manifest)
    if st.catalog.version(layer, version)["state"] == "packaging":
        st.catalog.transition(layer, version, "finalizing")
    st.commit_version(layer, version, mid, comment)
    return mid


# -- packaging disk ------------------------------------------------------------------------
@dataclass(frozen=True)
class PackagingRequest:
    layer: str
    os: str
    fmt: str
    name: str
    out: str
    version: str | None = None
    base_version: str | None = None
    platform: str | None = None
    apps: Sequence[str] = ()
    full: bool = False
    kind: str = "app"
    description: str = ""
    platform_types: Sequence[str] = ()
    purpose: str | None = None
    comment: str = ""
    options: Sequence[str] = ()


def create_packaging_disk(
    req: PackagingRequest, *, store: PathLike = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Everything is checked before anything is written; what a failure leaves half made
    (the version and a new layer in the catalog, the disk, the job ISO) is removed again.
    A base written on the way stays: it is a cache other packaging disks may already use.
    ``warnings`` in the result: what was repaired on the way (a damaged base description)."""
    if req.fmt not in BASE_OPTIONS:
        raise InvalidInput(f"a packaging disk is vhd, vhdx or vmdk, not {req.fmt!r}")
    check_name(req.layer, "layer")
    if req.version is not None:
        check_name(req.version, "version")
    check_distinct(
        [("--os", req.os)]
        + ([("--platform", req.platform)] if req.platform else [])
        + [("--app", app) for app in req.apps]
        + [("--layer", req.layer)]
    )
    options = registry.options_for(req.fmt, req.options)
    disk_path, iso_path = _packaging_paths(req)
    with open_store(store) as st:
        plan = _packaging_plan(st, req)
        _check_disk_options(req, options, int(plan.stack[0].manifest.meta["size"]))
        with ExitStack() as undo:
            plan = _claim_version(st, req, plan)
            undo.callback(st.catalog.discard_version, req.layer, plan.version, drop_layer=plan.new)
            undo.callback(_remove, disk_path)
            undo.callback(_remove, iso_path)
            warnings: list[str] = []
            record = _write_packaging_disk(st, req, plan, disk_path, iso_path, progress, warnings)
            undo.pop_all()
        return {**record, "state": "packaging", "warnings": warnings}


def _check_disk_options(req: PackagingRequest, options: dict[str, Any], size: int) -> None:
    """What the disk's writer would refuse of its options, refused before the base is
    written (it would stay, as the cache it is)."""
    check = registry.get(req.fmt).check_options
    if check is not None:
        check(options, size, not req.full)


def _packaging_paths(req: PackagingRequest) -> tuple[str, str]:
    """The disk and its job ISO, neither of which may exist yet."""
    out = os.path.abspath(req.out)
    if not os.path.isdir(out):
        raise InvalidInput(f"output directory {req.out} does not exist")
    disk_path = os.path.join(out, _with_suffix(req.name, req.fmt))
    iso_path = os.path.splitext(disk_path)[0] + "-job.iso"
    for path in (disk_path, iso_path):
        if os.path.lexists(path):
            raise InvalidInput(f"{path} already exists; choose another --name")
    return disk_path, iso_path


def _remove(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _write_packaging_disk(
    st: Store,
    req: PackagingRequest,
    plan: PackagingPlan,
    disk_path: str,
    iso_path: str,
    progress: Progress | None,
    warnings: list[str],
) -> dict[str, Any]:
    """The disk (on its cached base unless ``full``), its job ISO and its packaging record."""
    stack = plan.stack
    table = stack_table(st, stack)
    size = int(stack[0].manifest.meta["size"])
    sector = int(stack[0].manifest.meta.get("sector_size", 512))
    base = None
    if req.full:
        _write_full(st, table, size, sector, req, disk_path, progress)
    else:
        out = os.path.dirname(disk_path)
        spec = BaseSpec([x.ref for x in stack], _stack_key(stack), table, size, sector, req.fmt)
        with holding(out):  # until the child exists: prune then sees the base in use
            base = cached_base(st, spec, out, progress, warnings)
            _create_child(disk_path, req, base["path"], size)
    job = {
        "layer": req.layer,
        "version": plan.version,
        "kind": req.kind,
        "os_layer": stack[0].layer,
        "stack": [x.ref for x in stack],
        "disk": os.path.basename(disk_path),
        "format": req.fmt,
    }
    write_job_iso(iso_path, job)
    record = {
        **job,
        "disk_path": disk_path,
        "iso": iso_path,
        "base": base,
        "size": size,
        "sector_size": sector,
        "created": time.time(),
    }
    save_record(st, req.layer, plan.version, record)
    return record


def _with_suffix(name: str, fmt: str) -> str:
    if os.sep in name or name in ("", ".", ".."):
        raise InvalidInput(f"--name {name!r} must be a plain file name")
    return name if name.endswith(SUFFIX[fmt]) else name + SUFFIX[fmt]


@dataclass(frozen=True)
class PackagingPlan:
    """What a packaging disk is made of, found without changing anything."""

    stack: list[Resolved]
    version: str
    base_version: str | None
    new: bool  # the layer does not exist yet


def _packaging_plan(st: Store, req: PackagingRequest) -> PackagingPlan:
    os_layer = resolve(st, req.os)
    platform = resolve(st, req.platform) if req.platform else None
    apps = [resolve(st, ref) for ref in req.apps]
    check_kinds(os_layer, platform, apps)
    prereqs = [*([platform] if platform else []), *apps]
    check_same_os(os_layer, prereqs)
    existing = _find_layer(st, req.layer)
    _check_fits(req, existing, os_layer.layer)
    versions = existing["versions"] if existing is not None else []
    version = req.version or next_version([v["name"] for v in versions])
    if any(v["name"] == version for v in versions):
        raise InvalidInput(f"layer {req.layer!r} already has a version {version!r}")
    deployable = [v["name"] for v in versions if v["state"] == "deployable"]
    base_version = req.base_version or (deployable[-1] if deployable else None)
    stack = [os_layer, *prereqs]
    if base_version is not None:
        stack.append(resolve(st, [req.layer, base_version]))
    return PackagingPlan(stack, version, base_version, existing is None)


def _check_fits(req: PackagingRequest, existing: dict[str, Any] | None, os_layer: str) -> None:
    """An existing layer may get a packaging disk on ``os_layer`` unless it is an OS layer or
    belongs to another one."""
    kind = existing["kind"] if existing is not None else req.kind
    if kind == "os":
        raise InvalidInput(
            f"{req.layer!r} is an OS layer; import OS versions with `strata os import`"
        )
    if existing is not None and existing["os_layer"] not in (None, os_layer):
        raise InvalidInput(
            f"layer {req.layer!r} belongs to OS layer {existing['os_layer']!r}, not {os_layer!r}"
        )


def next_version(names: Sequence[str]) -> str:
    """The default name of a new version: one more than the highest numbered one, so never a
    name the layer has (``len + 1`` was, after a version named ``2`` by hand)."""
    numbers = [int(n) for n in names if n.isascii() and n.isdigit()]
    return str(max(numbers, default=0) + 1)


def _claim_version(st: Store, req: PackagingRequest, plan: PackagingPlan) -> PackagingPlan:
    """The new version (and the layer, when new), in one transaction: a concurrent command
    wanting the same version fails here, before either writes a file.  A default version name
    is chosen here, inside the transaction, so two concurrent commands get two names; so is
    whether the layer is new (another command may have just created it).  The stack is
    recorded with the version, and checked to be still there (a ``layer delete`` may have
    run since it was resolved), so a delete that comes later finds what depends on it."""
    with transaction(st.db):
        _check_unchanged(st, plan.stack)
        existing = _find_layer(st, req.layer)
        if existing is not None and plan.new:
            _check_fits(req, existing, plan.stack[0].layer)
        if req.version is None:
            names = [v["name"] for v in existing["versions"]] if existing is not None else []
            plan = replace(plan, version=next_version(names))
        plan = replace(plan, new=existing is None)
        if plan.new:
            st.catalog.create_layer(
                req.layer,
                req.kind,
                os_layer=plan.stack[0].layer,
                description=req.description,
                platform_types=req.platform_types,
                purpose=req.purpose,
                comment=req.comment,
            )
        st.catalog.create_version(
            req.layer,
            plan.version,
            base=plan.base_version,
            description=req.description,
            comment=req.comment,
            stack=[x.ref for x in plan.stack],
        )
    return plan


def _check_unchanged(st: Store, stack: Sequence[Resolved]) -> None:
    """Each layer version of ``stack`` is still in the catalog with the manifest it was
    resolved with (NotFound, StateError otherwise)."""
    for x in stack:
        row = st.catalog.version(x.layer, x.version)
        if row["manifest"] != to_hex(x.manifest_id):
            raise StateError(
                what=f"layer version {x.layer}:{x.version} was deleted or replaced while the "
                "packaging disk was being planned; run the command again"
            )


def _stack_key(stack: Sequence[Resolved]) -> str:
    text = json.dumps([[x.layer, x.version, to_hex(x.manifest_id)] for x in stack])
    return xxhash.xxh3_64_hexdigest(text.encode())


def _create_child(disk_path: str, req: PackagingRequest, base_path: str, size: int) -> None:
    driver = registry.get(req.fmt)
    if driver.create is None:
        raise InvalidInput(f"strata cannot create {req.fmt} children")
    options = registry.options_for(req.fmt, req.options)
    parent = registry.open_layer(base_path, req.fmt)
    try:  # a failure's partial disk is removed by create_packaging_disk
        driver.create(CreateRequest(disk_path, size, options, parent)).close()
    finally:
        parent.close()


def _write_full(
    st: Store,
    table: np.ndarray,
    size: int,
    sector: int,
    req: PackagingRequest,
    disk_path: str,
    progress: Progress | None,
) -> None:
    driver = registry.get(req.fmt)
    assert driver.write is not None
    options = registry.options_for(req.fmt, req.options)
    source = StoreDevice(st, table, size, sector)
    # A failure's partial disk is removed by create_packaging_disk.
    driver.write(WriteRequest(source, disk_path, options, progress=progress))


def _load_record(st: Store, layer: str, version: str) -> dict[str, Any]:
    path = record_path(st, layer, version)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise NotFound(
            what=f"packaging record of {layer}:{version} (was it created by "
            "`strata packaging-disk create`?)"
        ) from e
    try:
        record = jsontext.parse(raw)
    except ValueError as e:
        raise _damaged_record(layer, version, path, f"not JSON: {e}") from e
    wrong = _wrong_record_fields(record)
    if wrong:
        raise _damaged_record(layer, version, path, f"fields missing or of the wrong type: {wrong}")
    return record


# What finalize reads of a packaging record (the store's own file: damage there is the
# store's, reported as such rather than as a crash deep in finalize).
_RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "os_layer": (str, type(None)),
    "stack": list,
    "format": str,
    "disk_path": str,
    "size": int,
    "sector_size": int,
    "base": (dict, type(None)),
}


def _wrong_record_fields(record: object) -> str:
    if not isinstance(record, dict):
        return "not an object"
    wrong = [k for k, kind in _RECORD_FIELDS.items() if not isinstance(record.get(k), kind)]
    base = record.get("base")
    if isinstance(base, dict):
        wrong += [
            f"base.{k}" for k, kind in MARKER_FIELDS.items() if not isinstance(base.get(k), kind)
        ]
    return ", ".join(wrong)


def _damaged_record(layer: str, version: str, path: str, problem: str) -> IntegrityError:
    return IntegrityError(
        what=f"the packaging record of {layer}:{version} ({path}) is damaged: {problem}; "
        f"delete the version (`strata layer delete {layer}:{version}`) and package it again"
    )


# -- finalize ------------------------------------------------------------------------------
def finalize(
    disk: str,
    layer: str,
    version: str,
    *,
    store: PathLike = None,
    comment: str = "",
    remove_disk: bool = False,
    progress: Progress | None = None,
    target: str | None = None,
    force: bool = False,
    reason: str = "",
    on_gate: Callable[[GateReport], None] | None = None,
) -> dict[str, Any]:
    """Capture what the packaging machine changed into ``layer:version`` (deployable).

    The integrity gate runs first: a failed check raises ``NotReady`` unless ``force`` (with
    a ``reason``, recorded as an ``integrity-override`` in the audit history)."""
    started = time.monotonic()
    if force != bool(reason.strip()):
        raise InvalidInput("--force needs --reason TEXT (and --reason goes with --force)")
    with open_store(store) as st, st.claim_version(layer, version):
        state = st.catalog.version(layer, version)["state"]
        if state not in ("packaging", "finalizing"):
            raise StateError(
                what=f"version {version!r} of {layer!r} is {state}; "
                "only a version being packaged can be finalized"
            )
        record = _load_record(st, layer, version)
        with _open_packaging_disk(disk, record) as (image, within), _base_view(st, record) as base:
            gate = run_gate(image, target)
            if on_gate is not None:
                on_gate(gate)
            if not gate.ok:
                if not force:
                    st.catalog.log(
                        "integrity-check",
                        "failed",
                        layer=layer,
                        version=version,
                        details=gate.as_dict(),
                    )
                    raise NotReady(
                        what=f"{len(gate.findings)} integrity check(s) failed: {gate.summary()}",
                        findings=[f.as_dict() for f in gate.findings],
                    )
                st.catalog.log(
                    "integrity-override",
                    layer=layer,
                    version=version,
                    comment=reason,
                    details=gate.as_dict(),
                )
            meta = {
                "layer": layer,
                "version": version,
                "kind": record["kind"],
                "os_layer": record["os_layer"],
                "stack": record["stack"],
                "size": image.size,
                "sector_size": image.sector_size,
                "block_size": BLOCK_SIZE,
                "format": record["format"],
            }
            capture = capture_delta(
                st, image, base, within=within, level=CAPTURE_LEVEL, progress=progress
            )
            blocks, meta["stack"] = _fold_base_version(st, layer, record["stack"], capture.blocks)
            folded = meta["stack"] != record["stack"]
            with _file_base(st, record, meta["stack"], base, folded) as file_base:
                masks = None if folded else capture.masks  # sectors differing from base
                files = filedelta.capture(
                    st, image, file_base, blocks["offset"], masks=masks, level=CAPTURE_LEVEL
                )
            mid = _commit(st, layer, version, meta, blocks, capture.masks, comment, files)
        warnings: list[str] = []
        removed = _remove_disk(disk, record, warnings) if remove_disk else []
        unused = unused_bases(st, [record]) if remove_disk else []
        return {
            "layer": layer,
            "version": version,
            "state": "deployable",
            "manifest": to_hex(mid),
            "changed_blocks": len(capture.blocks),
            "changed_sectors": _count_bits(capture.masks),
            **capture.stats.as_dict(),
            "file_delta": files.summary() if files is not None else None,
            "removed": removed,
            "unused_bases": unused,
            "warnings": warnings,
            "integrity": {**gate.as_dict(), "forced": not gate.ok},
            "seconds": round(time.monotonic() - started, 3),
        }


def _fold_base_version(
    st: Store, layer: str, stack: list[list[str]], delta: np.ndarray
) -> tuple[np.ndarray, list[list[str]]]:
    """A new version is its base version plus the delta, on the stack the base was made on,
    so that every version of a layer composes in the same place."""
    if not stack or stack[-1][0] != layer:
        return delta, stack
    base = resolve(st, stack[-1])
    return compose_tables([base.table, delta], keep_zero=True), stack[:-1]


@contextmanager
def _file_base(
    st: Store, record: dict[str, Any], stack: list[list[str]], base: Any, folded: bool
) -> Iterator[Any]:
    """What the file delta is taken against: the packaging disk's parent chain, or, for a
    version folded onto its base version, the stack below that base version."""
    if not folded:
        yield base
        return
    table = stack_table(st, [resolve(st, ref) for ref in stack])
    with StoreDevice(st, table, record["size"], record["sector_size"]) as view:
        yield view


def _count_bits(masks: np.ndarray | None) -> int:
    if masks is None or not len(masks):
        return 0
    raw = np.frombuffer(masks["mask"].tobytes(), np.uint8)
    return int(np.unpackbits(raw).sum())


@contextmanager
def _open_packaging_disk(disk: str, record: dict[str, Any]) -> Iterator[Any]:
    """The packaging disk, checked against its record, and the ranges finalize must read
    (None for a standalone disk: everything)."""
    if not os.path.exists(disk):
        raise NotFound(what=disk)
    if os.path.realpath(disk) != os.path.realpath(record["disk_path"]):
        raise InvalidInput(
            f"{disk} is not the packaging disk of this version ({record['disk_path']})"
        )
    base = record.get("base")
    allowed = [os.path.dirname(os.path.abspath(disk))]
    if base is not None:
        allowed.append(os.path.dirname(base["path"]))
    with registry.open_image(disk, record["format"], allowed_dirs=allowed) as image:
        if image.size != record["size"]:
            raise StateError(what=f"{disk} is {image.size} bytes; its base was {record['size']}")
        if base is None:
            yield image, None
            return
        _check_parent(disk, image, base)
        yield image, list(allocated_ranges(image.top))


@contextmanager
def _base_view(st: Store, record: dict[str, Any]) -> Iterator[Any]:
    """What the packaging disk started from: its base file, or the composed stack."""
    base = record.get("base")
    if base is not None:
        with registry.open_image(base["path"], record["format"]) as view:
            yield view
        return
    stack = [resolve(st, ref) for ref in record["stack"]]
    with StoreDevice(st, stack_table(st, stack), record["size"], record["sector_size"]) as view:
        yield view


def _check_parent(disk: str, image: Any, base: dict[str, Any]) -> None:
    layers = image.layers
    if len(layers) < 2:
        raise StateError(what=f"{disk} has no parent; it was created as a child of {base['path']}")
    parent_path = getattr(layers[1], "path", None) or ""
    if os.path.realpath(parent_path) != os.path.realpath(base["path"]):
        raise StateError(
            what=f"the parent of {disk} is {parent_path}, not the recorded base {base['path']}"
        )
    if fingerprint(base["path"]) != base["fingerprint"]:
        raise StateError(
            what=f"the base {base['path']} was modified after the packaging disk "
            "was created; its layers can no longer be trusted"
        )


def _remove_disk(disk: str, record: dict[str, Any], warnings: list[str]) -> list[str]:
    """The packaging disk and its job ISO removed (after the commit: a refusal is a
    warning)."""
    return [path for path in (disk, record.get("iso")) if path and remove_file(path, warnings)]
