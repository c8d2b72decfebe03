"""Windows registry hives read (and, for the merge, changed) through hivex (Debian libhivex0).

References: hivex(3) (libhivex 1.3); the regf base block (``structs``) as hivex checks it:
"regf" magic, XOR checksum of the first 508 bytes at 0x1FC, hive-bins size at 0x28.

strata reads the hive bytes with its own file-system reader, copies them to an unnamed
temporary file (O_TMPFILE) and gives hivex its /proc/self/fd path: hivex takes a path, and
the copy is disk-backed so a 100 MiB SOFTWARE hive does not sit in memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from construct import ConstructError, Container

from strata.errors import CorruptImage, NotFound, TruncatedImage, Unsupported
from strata.integrity.structs import (
    BASE_BLOCK_SIZE,
    BINS_SIZE_OFFSET,
    CHECKSUM_OFFSET,
    CHECKSUMMED,
    BaseBlock,
)

BASE_BLOCK = BASE_BLOCK_SIZE
REG_SZ, REG_EXPAND_SZ, REG_BINARY, REG_DWORD, REG_MULTI_SZ, REG_QWORD = 1, 2, 3, 4, 7, 11

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.free.argtypes = [ctypes.c_void_p]


def _hivex() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libhivex.so.0", use_errno=True)
        except OSError as e:
            raise Unsupported(
                what="reading registry hives: libhivex.so.0 is missing (Debian package libhivex0)"
            ) from e
        _declare(lib)
        _lib = lib
    return _lib


def _declare(lib: ctypes.CDLL) -> None:
    node, size, vp = ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p
    signatures = {
        "hivex_open": ([ctypes.c_char_p, ctypes.c_int], vp),
        "hivex_close": ([vp], ctypes.c_int),
        "hivex_root": ([vp], node),
        "hivex_node_get_child": ([vp, node, ctypes.c_char_p], node),
        "hivex_node_children": ([vp, node], ctypes.POINTER(node)),
        "hivex_node_values": ([vp, node], ctypes.POINTER(node)),
        "hivex_node_get_value": ([vp, node, ctypes.c_char_p], node),
        "hivex_node_name": ([vp, node], vp),
        "hivex_value_key": ([vp, node], vp),
        "hivex_value_value": (
            [vp, node, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(size)],
            vp,
        ),
        "hivex_node_parent": ([vp, node], node),
        "hivex_node_add_child": ([vp, node, ctypes.c_char_p], node),
        "hivex_node_delete_child": ([vp, node], ctypes.c_int),
        "hivex_node_set_values": (
            [vp, node, size, ctypes.POINTER(_SetValue), ctypes.c_int],
            ctypes.c_int,
        ),
        "hivex_commit": ([vp, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    }
    for name, (args, res) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


class _SetValue(ctypes.Structure):
    """hivex's ``hive_set_value``: one value of a key, as ``hivex_node_set_values`` takes it."""

    _fields_ = [
        ("key", ctypes.c_char_p),
        ("t", ctypes.c_int),
        ("len", ctypes.c_size_t),
        ("value", ctypes.c_char_p),
    ]


HIVEX_OPEN_WRITE = 4


@dataclass(frozen=True)
class Value:
    name: str
    type: int
    data: bytes

    def as_int(self) -> int | None:
        if self.type == REG_DWORD and len(self.data) >= 4:
            return int.from_bytes(self.data[:4], "little")
        if self.type == REG_QWORD and len(self.data) >= 8:
            return int.from_bytes(self.data[:8], "little")
        return None

    def as_strings(self) -> list[str]:
        """REG_SZ / REG_EXPAND_SZ / REG_MULTI_SZ as text (UTF-16LE, NUL separated)."""
        if self.type not in (REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ):
            return []
        text = self.data[: len(self.data) // 2 * 2].decode("utf-16-le", "replace")
        parts = text.split("\0")
        if self.type != REG_MULTI_SZ:
            return parts[:1]
        while parts and parts[-1] == "":
            parts.pop()
        return parts

    def shown(self) -> object:
        """The value as hivexget prints it (dword as a number, strings as text)."""
        number = self.as_int()
        if number is not None:
            return number
        if self.type in (REG_SZ, REG_EXPAND_SZ, REG_MULTI_SZ):
            strings = self.as_strings()
            return strings if self.type == REG_MULTI_SZ else (strings[0] if strings else "")
        return self.data.hex()


class Hive:
    """One hive, opened read-only unless ``write``; ``name`` (e.g.
    ``\\Windows\\System32\\config\\SYSTEM on partition 2``) is what every error names."""

    def __init__(
        self,
        path: str,
        name: str,
        short: str | None = None,
        dirty: bool = False,
        write: bool = False,
    ) -> None:
        self.path = path
        self.name = name
        self.short = short or name
        self.dirty = dirty  # sequence numbers differ: newer data may sit in the .LOG1/.LOG2
        self._lib = _hivex()
        handle = self._lib.hivex_open(os.fsencode(path), HIVEX_OPEN_WRITE if write else 0)
        if not handle:
            raise self._error("cannot open the hive", ctypes.get_errno())
        self._h: int | None = handle

    def _error(self, what: str, err: int) -> CorruptImage:
        reason = os.strerror(err) if err else "unknown error"
        return CorruptImage(
            path=self.name, structure="registry hive", problem=f"hivex: {what} ({reason})"
        )

    def close(self) -> None:
        if self._h:
            self._lib.hivex_close(self._h)
            self._h = None

    def __enter__(self) -> Hive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def handle(self) -> int:
        if not self._h:
            raise ValueError("hive is closed")
        return self._h

    def root(self) -> int:
        ctypes.set_errno(0)
        node = self._lib.hivex_root(self.handle)
        if not node:
            raise self._error("no root key", ctypes.get_errno())
        return int(node)

    def key(self, path: str) -> int | None:
        """The node at ``path`` (backslash separated, case-insensitive), None when absent."""
        node: int | None = self.root()
        for part in (p for p in path.split("\\") if p):
            node = self.child(node, part, path)  # type: ignore[arg-type]
            if node is None:
                return None
        return node

    def child(self, node: int, name: str, path: str = "") -> int | None:
        """The subkey ``name`` (case-insensitive) of ``node``, None when absent."""
        ctypes.set_errno(0)
        child = self._lib.hivex_node_get_child(self.handle, node, name.encode())
        if not child:
            err = ctypes.get_errno()
            if err not in (0, errno.ENOENT):
                raise self._error(f"reading key {path or name}", err)
            return None
        return int(child)

    def subkeys(self, node: int) -> list[str]:
        return [name for name, _ in self.children(node)]

    def children(self, node: int) -> list[tuple[str, int]]:
        """(name, node) of each subkey of ``node``."""
        return [
            (self._string(self._lib.hivex_node_name, n), n)
            for n in self._array(self._lib.hivex_node_children, node, "subkeys")
        ]

    def parent(self, node: int) -> int:
        ctypes.set_errno(0)
        up = self._lib.hivex_node_parent(self.handle, node)
        if not up:
            raise self._error("reading a key's parent", ctypes.get_errno())
        return int(up)

    def name_of(self, node: int) -> str:
        return self._string(self._lib.hivex_node_name, node)

    # -- changes (a hive opened with ``write``; nothing reaches the file before ``commit``)

    def add_key(self, parent: int, name: str) -> int:
        ctypes.set_errno(0)
        node = self._lib.hivex_node_add_child(self.handle, parent, name.encode())
        if not node:
            raise self._error(f"adding key {name}", ctypes.get_errno())
        return int(node)

    def delete_key(self, node: int) -> None:
        """``node`` and everything below it."""
        ctypes.set_errno(0)
        if self._lib.hivex_node_delete_child(self.handle, node) != 0:
            raise self._error("deleting a key", ctypes.get_errno())

    def set_values(self, node: int, values: list[Value]) -> None:
        """``values`` become all of ``node``'s values (hivex sets a key's values as a whole)."""
        table = (_SetValue * max(1, len(values)))()
        for slot, v in zip(table, values, strict=False):
            slot.key, slot.t, slot.len, slot.value = v.name.encode(), v.type, len(v.data), v.data
        ctypes.set_errno(0)
        if self._lib.hivex_node_set_values(self.handle, node, len(values), table, 0) != 0:
            raise self._error("setting values", ctypes.get_errno())

    def commit(self) -> None:
        """Write the changes back to the file the hive was opened from."""
        ctypes.set_errno(0)
        if self._lib.hivex_commit(self.handle, None, 0) != 0:
            raise self._error("writing the hive", ctypes.get_errno())

    def values(self, node: int) -> list[Value]:
        return [self._value(v) for v in self._array(self._lib.hivex_node_values, node, "values")]

    def value(self, node: int, name: str) -> Value | None:
        ctypes.set_errno(0)
        v = self._lib.hivex_node_get_value(self.handle, node, name.encode())
        if not v:
            err = ctypes.get_errno()
            if err not in (0, errno.ENOENT):
                raise self._error(f"reading value {name}", err)
            return None
        return self._value(int(v))

    def _array(self, fn: Callable[..., Any], node: int, what: str) -> list[int]:
        ctypes.set_errno(0)
        arr = fn(self.handle, node)
        if not arr:
            raise self._error(f"reading {what}", ctypes.get_errno())
        out = []
        i = 0
        while arr[i]:
            out.append(int(arr[i]))
            i += 1
        _libc.free(ctypes.cast(arr, ctypes.c_void_p))
        return out

    def _string(self, fn: Callable[..., Any], item: int) -> str:
        ctypes.set_errno(0)
        ptr = fn(self.handle, item)
        if not ptr:
            raise self._error("reading a name", ctypes.get_errno())
        try:
            return ctypes.string_at(ptr).decode("utf-8", "replace")
        finally:
            _libc.free(ptr)

    def _value(self, v: int) -> Value:
        name = self._string(self._lib.hivex_value_key, v)
        kind, length = ctypes.c_int(), ctypes.c_size_t()
        ctypes.set_errno(0)
        ptr = self._lib.hivex_value_value(self.handle, v, ctypes.byref(kind), ctypes.byref(length))
        if not ptr:
            raise self._error(f"reading value {name}", ctypes.get_errno())
        try:
            data = ctypes.string_at(ptr, length.value)
        finally:
            _libc.free(ptr)
        return Value(name, kind.value, data)


def check_base_block(head: bytes, size: int, name: str) -> Container:
    """What hivex would refuse, said with the field and offset: magic, checksum, bins size."""
    if size < BASE_BLOCK or len(head) < BASE_BLOCK:
        raise TruncatedImage(
            path=name,
            structure="registry hive base block",
            problem=f"the hive is {size} bytes, shorter than its {BASE_BLOCK}-byte base block",
            field="-",
            offset=0,
        )
    try:
        block = BaseBlock.parse(head)
    except ConstructError as e:
        raise CorruptImage(
            path=name,
            structure="registry hive base block",
            problem="no 'regf' signature",
            field="signature",
            offset=0,
        ) from e
    computed = int(np.bitwise_xor.reduce(np.frombuffer(head[:CHECKSUMMED], "<u4")))
    if block.checksum != computed:
        raise CorruptImage(
            path=name,
            structure="registry hive base block",
            problem=f"checksum {block.checksum:#010x}, computed {computed:#010x}",
            field="checksum",
            offset=CHECKSUM_OFFSET,
        )
    end = BASE_BLOCK + block.hive_bins_data_size
    if end > size:
        raise TruncatedImage(
            path=name,
            structure="registry hive",
            problem=f"hive bins end at {end:#x}, the file is {size:#x} bytes",
            field="hive_bins_data_size",
            offset=BINS_SIZE_OFFSET,
        )
    return block


@contextmanager
def open_hive(
    chunks: Iterable[bytes], name: str, short: str | None = None, scratch: str | None = None
) -> Iterator[Hive]:
    """The hive whose bytes ``chunks`` yields, copied to an unnamed file, opened read-only.
    ``name`` (path and volume) is what errors name; ``short`` (``SYSTEM``) what evidence does."""
    with tempfile.TemporaryFile(dir=scratch) as tmp:
        size, head = _copy(chunks, tmp)
        block = check_base_block(head, size, name)
        dirty = block.sequence1 != block.sequence2
        with Hive(f"/proc/self/fd/{tmp.fileno()}", name, short, dirty) as hive:
            hive.root()
            yield hive


def _copy(chunks: Iterable[bytes], out: IO[bytes]) -> tuple[int, bytes]:
    size = 0
    head = b""
    for chunk in chunks:
        if len(head) < BASE_BLOCK:
            head += chunk[: BASE_BLOCK - len(head)]
        out.write(chunk)
        size += len(chunk)
    out.flush()
    return size, head


def missing(name: str) -> NotFound:
    return NotFound(what=f"registry hive {name}")
