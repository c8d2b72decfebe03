"""Disk verbs, format-agnostic through the registry: info, map, compare, convert, create, check."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from strata.blockdev.base import BlockDevice, Extent, ExtentState, coalesce
from strata.blockdev.chain import ChainDevice, attach_parents, why_unopened
from strata.blockdev.copy import Progress, first_difference
from strata.errors import InvalidInput, StrataError
from strata.formats import registry
from strata.formats.registry import CreateRequest, Problem, WriteRequest
from strata.ops.output import check_destination, input_files, refuse_inputs, written


class OpenSpec(NamedTuple):
    """How to open an image named on the command line."""

    path: str
    fmt: str | None = None
    allowed_dirs: Sequence[str] = ()


def open_disk(spec: OpenSpec, writable: bool = False) -> ChainDevice:
    return registry.open_image(spec.path, spec.fmt, writable, list(spec.allowed_dirs) or None)


def layer_format(dev: BlockDevice) -> str:
    return str(getattr(dev, "format_name", "unknown"))


def info(spec: OpenSpec) -> dict[str, Any]:
    with open_disk(spec) as disk:
        return describe(disk)


def partitions(spec: OpenSpec) -> dict[str, Any]:
    """What ``strata disk partitions IMAGE`` reports: the partition table of any image,
    through its chain (``partition.describe``: scheme ``none`` when it has none) and
    ``filesystem``, the file system ``fs.detect`` finds on the whole disk when it has no
    table (a "superfloppy", as ``mkfs.fat`` and ``mkntfs`` make on a bare image), else None."""
    from strata.fs import detect
    from strata.partition import describe as describe_table
    from strata.partition import read_table

    with open_disk(spec) as disk:
        table = read_table(disk)
        found = detect(disk) if table.scheme == "none" else None
        return {"filename": spec.path, **describe_table(table, disk), "filesystem": found}


def describe(disk: ChainDevice) -> dict[str, Any]:
    chain = [
        {"filename": getattr(layer, "path", None), "format": layer_format(layer)}
        for layer in disk.layers[1:]
    ]
    facts = {
        "filename": disk.path,
        "format": layer_format(disk.top),
        "virtual-size": disk.size,
        "actual-size": disk.allocated_bytes,
        "sector-size": disk.sector_size,
        "backing-chain": chain,
    }
    facts.update(disk.info())
    facts.setdefault("subformat", None)
    return facts


def map_entries(spec: OpenSpec) -> Iterator[dict[str, Any]]:
    """The allocation map in ``qemu-img map --output=json`` terms."""
    with opened_map(spec) as entries:
        yield from entries


@contextmanager
def opened_map(spec: OpenSpec) -> Iterator[Iterator[dict[str, Any]]]:
    """``map_entries`` of an image already opened, its chain checked and its first run
    found, so a caller streaming the map writes nothing for an image that fails there."""
    with open_disk(spec) as disk:
        entries = (map_entry(ext) for ext in coalesce(disk.extents()))
        first = next(entries, None)
        yield itertools.chain([] if first is None else [first], entries)


def map_entry(ext: Extent) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "start": ext.offset,
        "length": ext.length,
        "depth": ext.depth,
        "present": ext.state != ExtentState.UNALLOCATED,
        "zero": ext.state != ExtentState.DATA,
        "data": ext.state == ExtentState.DATA,
    }
    if ext.file_offset is not None and ext.state != ExtentState.UNALLOCATED:
        entry["offset"] = ext.file_offset
    return entry


def compare(a: OpenSpec, b: OpenSpec, progress: Progress | None = None) -> int | None:
    """First differing guest offset, or None when the contents are equal."""
    with open_disk(a) as da, open_disk(b) as db:
        return first_difference(da, db, progress=progress)


def output_driver(
    fmt: str, option_texts: Sequence[str], dst: str, verb: str
) -> tuple[registry.FormatDriver, dict[str, Any]]:
    """The driver that will ``verb`` (write or create) ``dst``, with its parsed options."""
    driver = registry.get(fmt)
    if getattr(driver, verb) is None:
        raise InvalidInput(f"strata cannot {verb} {driver.name} images")
    options = registry.options_for(driver.name, option_texts)
    check_destination(dst, onto_devices=verb == "write" and driver.onto_devices)
    return driver, options


def convert(
    src: OpenSpec,
    dst: str,
    out_format: str = "raw",
    option_texts: Sequence[str] = (),
    backing: OpenSpec | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    driver, options = output_driver(out_format, option_texts, dst, "write")
    with open_disk(src) as source, _opened(backing) as base:
        refuse_inputs(dst, input_files([source, base]))
        if base is not None and base.size > source.size:
            raise InvalidInput(
                f"backing {backing.path if backing else ''} is larger than the source"
            )
        layer = base.top if base is not None else None
        with written(dst, driver.atomic_replace) as path:
            driver.write(WriteRequest(source, path, options, base, layer, progress))
    return {"filename": dst, "format": driver.name, "virtual-size": source.size}


@contextmanager
def _opened(spec: OpenSpec | None) -> Iterator[ChainDevice | None]:
    if spec is None:
        yield None
        return
    with open_disk(spec) as dev:
        yield dev


def create(
    path: str,
    out_format: str,
    size: int | None,
    option_texts: Sequence[str] = (),
    parent: OpenSpec | None = None,
) -> dict[str, Any]:
    driver, options = output_driver(out_format, option_texts, path, "create")
    with _opened(parent) as base:
        refuse_inputs(path, input_files([base]))
        if size is None:
            if base is None:
                raise InvalidInput("a size is needed unless --parent gives one")
            size = base.size
        if size <= 0:
            raise InvalidInput(f"size must be positive, not {size}")
        layer = base.top if base is not None else None
        with written(path, driver.atomic_replace) as where:
            driver.create(CreateRequest(where, size, options, layer)).close()
    return {"filename": path, "format": driver.name, "virtual-size": size}


def check(spec: OpenSpec) -> list[Problem]:
    """Every structure of the image (its format's check), then its parent chain as the other
    verbs open it: a parent that cannot be found, lies outside the allowed directories, does
    not open or is not the one the child was made on is a problem (``qemu-img check`` fails
    when it cannot open the backing file)."""
    driver = registry.driver_for(spec.path, spec.fmt)
    if driver.check is None:
        return []
    try:
        problems = driver.check(spec.path, spec.allowed_dirs)
    except StrataError as e:
        return [Problem("image", e.message)]
    if not any(_on_parent_link(p) for p in problems):
        problems += chain_problems(
            spec, structure_clean=not any(p.severity == "error" for p in problems)
        )
    return problems


def _on_parent_link(problem: Problem) -> bool:
    """An error the format's own check found with the link to the parent (a VHD checks its
    parent's UUID): the chain would fail on the same link, and say it again."""
    return problem.severity == "error" and (
        problem.structure == "parent" or problem.field.lower().startswith("parent")
    )


def chain_problems(spec: OpenSpec, structure_clean: bool) -> list[Problem]:
    """Why the parent chain of ``spec`` does not open, if it does not."""
    try:
        top = registry.open_layer(spec.path, spec.fmt)
    except StrataError as e:  # the child itself: its structure problems say why, if any
        return [] if not structure_clean else [Problem("image", e.message)]
    try:
        attach_parents(top, registry.open_layer, registry.parent_dirs(spec.path, spec.allowed_dirs))
    except (StrataError, OSError) as e:
        return [Problem("parent", why_unopened(e))]
    finally:
        top.close()
    return []
