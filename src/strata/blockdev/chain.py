"""Parent chains, resolved once for every format.

A driver that has a parent declares a :class:`ParentRef`: candidate paths in
the order the format prefers and a ``verify`` callable that checks the
parent's identity (UUID, linkage GUID, CID).  :func:`attach_parents` opens
them through the format registry, refusing any path outside the directories the
caller allows.  :class:`ChainDevice` then reads the composed disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from strata.blockdev.base import (
    BaseDevice,
    BlockDevice,
    Buffer,
    Extent,
    ExtentState,
    read_concurrently,
    zero_fill,
)
from strata.errors import (
    CorruptImage,
    InvalidInput,
    NotFound,
    PathOutsideAllowed,
    StrataError,
    SystemIOError,
    Unsupported,
)


class ParentRef(NamedTuple):
    """Where a child says its parent lives, and how to recognise it."""

    candidates: Sequence[str]
    verify: Callable[[BlockDevice], None] = lambda _parent: None
    description: str = "parent"
    formats: Sequence[str] = ()


def resolve_candidate(child_path: str, candidate: str) -> str:
    """Relative candidates are relative to the child's directory."""
    if os.path.isabs(candidate):
        return candidate
    return os.path.join(os.path.dirname(os.path.abspath(child_path)), candidate)


def check_allowed(path: str, allowed_dirs: Sequence[str], refusal: str | None = None) -> str:
    """``path`` resolved, when it lies inside one of ``allowed_dirs``; else PathOutsideAllowed,
    saying ``refusal`` when given (its own message names --allow-dir, which allows parents)."""
    real = os.path.realpath(path)
    for allowed in allowed_dirs:
        root = os.path.realpath(allowed)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return real
    raise PathOutsideAllowed(refusal, path=path, allowed=", ".join(allowed_dirs))


def find_parent(child_path: str, ref: ParentRef, allowed_dirs: Sequence[str]) -> str:
    """The first candidate that exists inside the allowed directories."""
    refused: PathOutsideAllowed | None = None
    for candidate in ref.candidates:
        path = resolve_candidate(child_path, candidate)
        if not os.path.exists(path):
            continue
        try:
            return check_allowed(path, allowed_dirs)
        except PathOutsideAllowed as e:
            refused = e
    if refused is not None:
        raise refused
    tried = ", ".join(repr(c) for c in ref.candidates) or "no locator"
    raise NotFound(what=f"{ref.description} of {child_path} (tried {tried})")


def why_unopened(e: StrataError | OSError) -> str:
    """What ``disk check`` says of a parent that ``find_parent`` or opening it refused."""
    if isinstance(e, StrataError):
        return e.message
    return SystemIOError.of(e).message  # the system refuses to read it


def attach_parents(
    dev: BlockDevice,
    open_layer: Callable[[str], BlockDevice],
    allowed_dirs: Sequence[str],
    max_depth: int = 64,
) -> BlockDevice:
    """Open and verify every parent below ``dev``, linking ``dev.parent``."""
    layer: Any = dev
    seen: set[str] = set()
    for _ in range(max_depth):
        ref: ParentRef | None = getattr(layer, "parent_ref", None)
        if ref is None:
            return dev
        path = find_parent(layer.path, ref, allowed_dirs)
        seen.add(os.path.realpath(layer.path))
        if path in seen:
            raise CorruptImage(
                path=layer.path, structure="parent chain", problem=f"loops back to {path}"
            )
        parent = open_layer(path)
        try:
            _check_format(parent, path, ref)
            ref.verify(parent)
        except BaseException:
            parent.close()
            raise
        layer.parent = parent
        layer = parent
    if getattr(layer, "parent_ref", None) is None:  # the last parent the limit allows
        return dev
    raise Unsupported(what=f"{getattr(dev, 'path', dev)}: a parent chain deeper than {max_depth}")


def _check_format(parent: BlockDevice, path: str, ref: ParentRef) -> None:
    found = getattr(parent, "format_name", "?")
    if ref.formats and found not in ref.formats:
        raise InvalidInput(
            f"{path} is a {found} image; this {ref.description} must be {' or '.join(ref.formats)}"
        )


class ChainDevice(BaseDevice):
    """The guest-visible disk: a layer with UNALLOCATED runs read from its parents."""

    format_name = "chain"

    def __init__(self, top: BlockDevice) -> None:
        self.top = top
        self._size = top.size
        self._sector_size = top.sector_size
        self.path = getattr(top, "path", None)
        self.writable = getattr(top, "writable", False)
        below = top.parent
        self.below: ChainDevice | None = ChainDevice(below) if below is not None else None

    @property
    def parent(self) -> BlockDevice | None:
        return self.top.parent

    @property
    def concurrent_reads(self) -> bool:  # type: ignore[override]
        return read_concurrently(self.layers)

    @property
    def layers(self) -> list[BlockDevice]:
        chain: list[BlockDevice] = [self.top]
        while chain[-1].parent is not None:
            chain.append(chain[-1].parent)  # type: ignore[arg-type]
        return chain

    def _readinto(self, offset: int, view: memoryview) -> None:
        if self.below is None:  # a layer reads zeros where it holds nothing: no extents needed
            self.top.readinto(offset, view)
            return
        for ext in self.top.extents(offset, len(view)):
            part = view[ext.offset - offset : ext.end - offset]
            if ext.state == ExtentState.DATA:
                self.top.readinto(ext.offset, part)
            elif ext.state == ExtentState.UNALLOCATED and self.below is not None:
                self._read_below(ext.offset, part)
            else:
                zero_fill(part)

    def readv(self, pieces: Iterable[tuple[int, Buffer]]) -> None:
        readv = getattr(self.top, "readv", None)
        if self.below is None and readv is not None:
            readv(pieces)
        else:
            super().readv(pieces)

    def _read_below(self, offset: int, part: memoryview) -> None:
        assert self.below is not None
        inside = max(0, min(len(part), self.below.size - offset))
        if inside:
            self.below.readinto(offset, part[:inside])
        if inside < len(part):
            zero_fill(part[inside:])

    def _extents(self, offset: int, length: int) -> Iterator[Extent]:
        for ext in self.top.extents(offset, length):
            if ext.state != ExtentState.UNALLOCATED or self.below is None:
                yield ext
                continue
            yield from self._extents_below(ext)

    def _extents_below(self, ext: Extent) -> Iterator[Extent]:
        assert self.below is not None
        inside_end = min(ext.end, self.below.size)
        if ext.offset < inside_end:
            for sub in self.below.extents(ext.offset, inside_end - ext.offset):
                yield Extent(sub.offset, sub.length, sub.state, sub.depth + 1, sub.file_offset)
        if inside_end < ext.end:
            start = max(ext.offset, inside_end)
            yield Extent(start, ext.end - start, ExtentState.UNALLOCATED, ext.depth)

    def write(self, offset: int, data: bytes | Buffer) -> None:
        write = getattr(self.top, "write", None)
        if write is None:
            super().write(offset, data)
        else:
            write(offset, data)

    def flush(self) -> None:
        flush = getattr(self.top, "flush", None)
        if flush is not None:
            flush()

    def info(self) -> dict[str, Any]:
        info = getattr(self.top, "info", None)
        return info() if info is not None else {}

    @property
    def allocated_bytes(self) -> int:
        return int(getattr(self.top, "allocated_bytes", 0))

    def close(self) -> None:
        self.top.close()
