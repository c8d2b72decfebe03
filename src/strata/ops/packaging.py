"""The files a packaging disk stands on, beside the catalog: its cached base and its record.

A **cached base** is the composed stack (OS, platform, prerequisite apps, the layer's own
base version) written once per stack and format in the packaging disk's directory as
``strata-base-<stack hash>.<fmt>``, with a ``.json`` description (the stack, and the file's
size, mtime and inode), so that every packaging disk made on that stack there is a
differencing child of the same file.  It is looked for, written and pruned under a flock on
that directory.  ``prune_bases`` removes the bases no disk uses any more: a packaging disk
removed after finalize leaves its base behind, as large as the composed OS.

A **packaging record** (``store/packaging/<hash>.json``) holds what finalize needs: the
stack, the disk, its base, its format and size.

References: docs/architecture.md ("Packaging disk").
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from strata import jsontext
from strata.blockdev.chain import resolve_candidate
from strata.blockdev.copy import Progress
from strata.errors import InvalidInput, StrataError, Unsupported
from strata.formats import registry
from strata.formats.registry import WriteRequest
from strata.layer.storedev import StoreDevice
from strata.ops.store import PathLike, open_store
from strata.store import Store
from strata.store.chunkstore import durable_write

SUFFIX = {"vhd": ".vhd", "vhdx": ".vhdx", "vmdk": ".vmdk", "raw": ".raw"}
# The composed base is written in a subformat every reader opens as a parent.
BASE_OPTIONS = {
    "vhd": ("subformat=dynamic",),
    "vhdx": ("subformat=dynamic",),
    "vmdk": ("subformat=monolithicSparse",),
}
BASE_PREFIX = "strata-base-"
MARKER_SUFFIX = ".json"


# -- the cached base -----------------------------------------------------------------------
@dataclass(frozen=True)
class BaseSpec:
    """What a cached base holds: the stack (its refs, and their hash) composed into
    ``table``, for a disk of ``size`` bytes in format ``fmt``."""

    refs: list[list[str]]
    key: str
    table: np.ndarray
    size: int
    sector: int
    fmt: str


def base_path(out: str, key: str, fmt: str) -> str:
    return os.path.join(out, f"{BASE_PREFIX}{key}{SUFFIX[fmt]}")


def cached_base(
    st: Store,
    spec: BaseSpec,
    out: str,
    progress: Progress | None,
    warnings: list[str],
) -> dict[str, Any]:
    """The description of the composed base in ``out``, written when it is not there yet
    (or no longer what its description says).  The caller holds ``holding(out)``."""
    path = base_path(out, spec.key, spec.fmt)
    if os.path.exists(path):
        info = _reusable_base(st, path, path + MARKER_SUFFIX, warnings)
        if info is not None:
            return info
    return _write_base(st, spec, path, progress)


@contextmanager
def holding(directory: str) -> Iterator[None]:
    """``directory`` locked (flock on the directory itself: no lock file among the user's)
    while a base is looked for, written and given a child there, or pruned: commands run
    together write it once, none reads it half written, and prune removes none that a disk
    is being made on."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_base(st: Store, spec: BaseSpec, path: str, progress: Progress | None) -> dict[str, Any]:
    marker = path + MARKER_SUFFIX
    driver = registry.get(spec.fmt)
    options = registry.options_for(spec.fmt, BASE_OPTIONS[spec.fmt])
    if driver.write is None:
        raise InvalidInput(f"strata cannot write {spec.fmt}")
    with StoreDevice(st, spec.table, spec.size, spec.sector) as source:
        driver.write(WriteRequest(source, path, options, progress=progress))
    _fsync_image(path, spec.fmt)  # writers leave data in the page cache; the marker must not lie
    info = {
        "path": path,
        "format": spec.fmt,
        "stack": spec.refs,
        "fingerprint": fingerprint(path),
    }
    durable_write(Path(marker), json.dumps(info).encode(), Path(marker).parent)
    return info


def _reusable_base(st: Store, path: str, marker: str, warnings: list[str]) -> dict[str, Any] | None:
    """The description of the base at ``path`` if the file is still what it describes, else
    None (the base is then written again).  A damaged description is a damaged cache: it is
    rebuilt from a packaging record holding the same unchanged base (disks made on it keep
    their parent), else the base is written again; either way with a warning."""
    try:
        info = _read_marker(marker)
    except ValueError as e:
        found = _base_of_a_record(st, path)
        if found is None:
            warnings.append(f"{marker} is damaged ({e}); writing the base {path} again")
            return None
        info, owner = found
        durable_write(Path(marker), json.dumps(info).encode(), Path(marker).parent)
        warnings.append(f"{marker} was damaged ({e}); rebuilt it from the record of {owner}")
        return info
    if info is None or info["fingerprint"] != fingerprint(path):
        return None
    if info["path"] != path:  # the directory was moved (or renamed) with its base
        info = {**info, "path": path}
        durable_write(Path(marker), json.dumps(info).encode(), Path(marker).parent)
    return info


def _read_marker(marker: str) -> dict[str, Any] | None:
    """The base description, None when there is none; ValueError saying how it is damaged."""
    try:
        with open(marker, "rb") as f:
            info = jsontext.parse(f.read())
    except FileNotFoundError:
        return None
    except ValueError as e:  # syntax, UTF-8, nesting
        raise ValueError(f"not JSON: {e}") from e
    if not isinstance(info, dict) or not all(
        isinstance(info.get(key), kind) for key, kind in MARKER_FIELDS.items()
    ):
        raise ValueError(f"not an object with {', '.join(MARKER_FIELDS)}")
    return info


MARKER_FIELDS = {"path": str, "format": str, "stack": list, "fingerprint": list}


def _base_of_a_record(st: Store, path: str) -> tuple[dict[str, Any], str] | None:
    """The base description a packaging record in this store holds for ``path``, if the file
    has not changed since (same fingerprint), and whose record it is (LAYER:VERSION)."""
    now = fingerprint(path)
    for record in iter_records(st):
        base = record.get("base")
        if isinstance(base, dict) and base.get("path") == path and base.get("fingerprint") == now:
            return base, f"{record.get('layer')}:{record.get('version')}"
    return None


def _fsync_image(path: str, fmt: str) -> None:
    layer = registry.open_layer(path, fmt)
    try:
        files = list(getattr(layer, "files", [path]))
    finally:
        layer.close()
    for name in files:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fingerprint(path: str) -> list[int]:
    """What changes when anything writes to the file (size, mtime, inode)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


# -- packaging records ---------------------------------------------------------------------
def record_path(st: Store, layer: str, version: str) -> str:
    """Where the packaging record of ``layer:version`` is (``store/packaging/<hash>.json``)."""
    key = xxhash.xxh3_64_hexdigest(json.dumps([layer, version]).encode())
    return str(st.root / "packaging" / f"{key}.json")


def save_record(st: Store, layer: str, version: str, record: dict[str, Any]) -> None:
    path = record_path(st, layer, version)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    durable_write(Path(path), json.dumps(record).encode(), st.root / "tmp")


def read_record(st: Store, layer: str, version: str) -> dict[str, Any] | None:
    """The packaging record of ``layer:version``; None when there is none or it is no JSON
    object, for readers that tolerate that (finalize refuses a damaged record)."""
    return _parse_record(record_path(st, layer, version))


def iter_records(st: Store) -> Iterator[dict[str, Any]]:
    """Every packaging record of the store that is a JSON object, in file-name order."""
    for name in sorted((st.root / "packaging").glob("*.json")):
        record = _parse_record(str(name))
        if record is not None:
            yield record


def _parse_record(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            record = jsontext.parse(f.read())
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# -- listing -------------------------------------------------------------------------------
def list_disks(*, store: PathLike = None) -> list[dict[str, Any]]:
    """The packaging disks of the store, in catalog order: every version being packaged or
    finalizing (whether or not its disk is still there), and every finalized version whose
    disk is still there (left behind: it can go)."""
    rows = []
    with open_store(store, readonly=True) as st:
        for layer in st.catalog.layers():
            for v in st.catalog.versions(layer["name"]):
                row = _disk_row(st, layer["name"], v)
                if v["state"] in ("packaging", "finalizing") or row["disk_present"]:
                    rows.append(row)
    return rows


def _disk_row(st: Store, layer: str, v: dict[str, Any]) -> dict[str, Any]:
    record = read_record(st, layer, v["name"])
    problem = None
    if record is None:
        exists = os.path.exists(record_path(st, layer, v["name"]))
        problem = "damaged packaging record" if exists else "no packaging record"
        record = {}
    base = record.get("base")
    base_path = base.get("path") if isinstance(base, dict) else None
    disk, iso = record.get("disk_path"), record.get("iso")
    return {
        "layer": layer,
        "version": v["name"],
        "state": v["state"],
        "format": record.get("format"),
        "created": record.get("created", v["created"]),
        "disk": disk,
        "disk_present": isinstance(disk, str) and os.path.exists(disk),
        "job_iso": iso if isinstance(iso, str) and os.path.exists(iso) else None,
        "base": base_path,
        "base_present": isinstance(base_path, str) and os.path.exists(base_path),
        "problem": problem,
    }


# -- pruning -------------------------------------------------------------------------------
@dataclass
class DirectoryBases:
    """The cached bases of one directory and the disks that use each (by real path)."""

    directory: str
    users: dict[str, list[str]]  # base -> the disks that use it
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (disk, why)
    stray_markers: list[str] = field(default_factory=list)  # descriptions without a base


def prune_bases(
    directories: Sequence[str], *, store: PathLike = None, dry_run: bool = False
) -> dict[str, Any]:
    """Remove the cached bases in ``directories`` that no disk uses any more, with their
    descriptions (and descriptions left without a base).

    A base is in use while a disk in its directory names it as parent (whatever made that
    disk), or a packaging record of this store names it as the base of a disk still there.
    When a disk in the directory cannot be read, which base it uses cannot be told, and
    every base there is kept (a warning names the disk).  The directory stays locked
    meanwhile, so a packaging disk cannot be made on a base being removed."""
    for directory in directories:
        if not os.path.isdir(directory):
            raise InvalidInput(f"{directory} is not a directory")
    directories = list(dict.fromkeys(os.path.realpath(d) for d in directories))
    with open_store(store, readonly=True) as st:
        recorded = recorded_users(st)
    removed: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    warnings: list[str] = []
    for directory in directories:
        with holding(directory):
            found = scan_directory(directory, recorded)
            warnings += [
                f"cannot tell which base {disk} uses ({why}); every base in {directory} is kept"
                for disk, why in found.unreadable
            ]
            for base, users in sorted(found.users.items()):
                entry = {"path": base, "bytes": _allocated(base, base + MARKER_SUFFIX)}
                if users or found.unreadable:
                    kept.append({**entry, "used_by": sorted(set(users))})
                    continue
                if dry_run or remove_file(base, warnings):
                    removed.append(entry)
                    if not dry_run:
                        remove_file(base + MARKER_SUFFIX, warnings)
            for marker in found.stray_markers:
                entry = {"path": marker, "bytes": _allocated(marker)}
                if dry_run or remove_file(marker, warnings):
                    removed.append(entry)
    return {
        "dry_run": dry_run,
        "removed": removed,
        "kept": kept,
        "freed_bytes": sum(e["bytes"] for e in removed),
        "warnings": warnings,
    }


def unused_bases(st: Store, records: Iterable[dict[str, Any] | None]) -> list[str]:
    """The cached bases of ``records`` (still there) that no disk uses any more: what
    ``prune_bases`` would remove.  For the result of a command that removed their disks;
    each directory is scanned once."""
    by_directory: dict[str, dict[str, str]] = {}  # directory -> {real path: path as recorded}
    for record in records:
        base = record.get("base") if record else None
        if isinstance(base, dict) and isinstance(base.get("path"), str):
            real = os.path.realpath(base["path"])
            if os.path.exists(real):
                by_directory.setdefault(os.path.dirname(real), {})[real] = base["path"]
    if not by_directory:
        return []
    recorded = recorded_users(st)
    unused = [
        bases[real]
        for directory, bases in by_directory.items()
        for real in _unused_in(directory, set(bases), recorded)
    ]
    return sorted(set(unused))


def prune_hint(base: str) -> str:
    return (
        f"no disk uses the base {base} any more; `strata packaging-disk prune "
        f"{os.path.dirname(base)}` removes it"
    )


def _unused_in(directory: str, bases: set[str], recorded: dict[str, list[str]]) -> list[str]:
    """Which of ``bases`` in ``directory`` no disk uses; none when it cannot be told: this
    runs after a command's work is committed, which a directory that cannot be read must
    not turn into a failure."""
    try:
        with holding(directory):
            found = scan_directory(directory, recorded)
    except (OSError, StrataError):
        return []
    if found.unreadable:
        return []
    return [base for base in bases if found.users.get(base) == []]


def recorded_users(st: Store) -> dict[str, list[str]]:
    """The disks still there that this store's packaging records make on each base."""
    users: dict[str, list[str]] = {}
    for record in iter_records(st):
        base, disk = record.get("base"), record.get("disk_path")
        on_base = isinstance(base, dict) and isinstance(base.get("path"), str)
        if on_base and isinstance(disk, str) and os.path.exists(disk):
            users.setdefault(os.path.realpath(base["path"]), []).append(disk)
    return users


def scan_directory(directory: str, recorded: dict[str, list[str]]) -> DirectoryBases:
    """The bases in ``directory``, each with the disks there whose parent it is and those
    ``recorded`` names."""
    bases, markers, others = _entries(directory)
    found = DirectoryBases(directory, {b: list(recorded.get(b, [])) for b in bases})
    found.stray_markers = [m for m in markers if m[: -len(MARKER_SUFFIX)] not in found.users]
    for path in others:
        try:
            parents = parent_candidates(path)
        except StrataError as e:
            found.unreadable.append((path, e.message))
            continue
        for parent in parents & found.users.keys():
            found.users[parent].append(path)
    return found


_DISK_SUFFIXES = {SUFFIX[fmt] for fmt in BASE_OPTIONS}


def _entries(directory: str) -> tuple[list[str], list[str], list[str]]:
    """The real paths of the directory's regular files: bases, base descriptions, others."""
    bases, markers, others = [], [], []
    real = os.path.realpath(directory)
    with os.scandir(real) as it:
        for entry in it:
            if not entry.is_file(follow_symlinks=False):
                continue
            path = os.path.join(real, entry.name)
            if entry.name.startswith(BASE_PREFIX) and entry.name.endswith(MARKER_SUFFIX):
                markers.append(path)
            elif entry.name.startswith(BASE_PREFIX) and _is_base_name(entry.name):
                bases.append(path)
            else:
                others.append(path)
    return sorted(bases), sorted(markers), sorted(others)


def _is_base_name(name: str) -> bool:
    return any(name.endswith(suffix) for suffix in _DISK_SUFFIXES)


def parent_candidates(path: str) -> set[str]:
    """The real paths where the disk at ``path`` says its parent may be: none for a disk
    without a parent or a file that is no disk image; a StrataError where it cannot be told
    (a damaged disk, a format strata does not read)."""
    if os.path.getsize(path) == 0:
        return set()
    try:
        layer = registry.open_layer(path)
    except Unsupported:
        if registry.foreign_format(registry.read_probe(path)) is None:
            return set()  # no disk image: nobody's child
        raise  # a qcow2 (say) may be a child of a base: which one cannot be told
    try:
        ref = getattr(layer, "parent_ref", None)
    finally:
        layer.close()
    if ref is None:
        return set()
    return {os.path.realpath(resolve_candidate(path, c)) for c in ref.candidates}


def _allocated(*paths: str) -> int:
    """The bytes the files take on disk (a base is sparse)."""
    total = 0
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_blocks * 512
    return total


def remove_file(path: str, warnings: list[str]) -> bool:
    """Remove ``path``; True when it was removed.  A file the system refuses to remove is a
    warning: this runs after a command's work is done (a commit, a prune decision)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        warnings.append(f"{path} could not be removed: {e.strerror or e}")
        return False
    return True
