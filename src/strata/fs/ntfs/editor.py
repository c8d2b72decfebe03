"""Edit an NTFS volume by path, through libntfs-3g in process (``strata._ntfs``).

References: docs/architecture.md ("Layers at file level"); libntfs-3g's dir.h, attrib.h and
the ``system.ntfs_*`` setters ntfs-3g's FUSE driver exposes as extended attributes.

The publish merge applies NTFS file deltas with it, on a copy-on-write overlay of the OS
layer.  libntfs-3g allocates clusters and MFT records, keeps ``$Bitmap``, the indexes,
``$Secure`` and the reparse index consistent, and is what ntfs-3g mounts with: strata only
says which file gets which name, bytes and metadata.  Paths are ``/``-separated from the
volume's root and compared as libntfs-3g looks names up (case-insensitively for Win32 names).
"""

from __future__ import annotations

import contextlib
import errno
import functools
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import NamedTuple

from strata.blockdev.base import BlockDevice
from strata.errors import CorruptImage, InvalidInput, StateError, StrataError, Unsupported
from strata.fs.ntfs.structs import FILETIME_UNIX_OFFSET

ROOT = 5  # the root directory's MFT record
READ_PIECE = 1 << 20


@functools.cache
def _binding() -> ModuleType:
    try:
        from strata import _ntfs
    except ImportError as e:
        raise Unsupported(
            what="editing NTFS volumes: strata was built without libntfs-3g (install "
            "ntfs-3g-dev, then reinstall strata: make install)"
        ) from e
    return _ntfs


def available() -> bool:
    """Whether this build can edit NTFS volumes (``strata._ntfs``, libntfs-3g)."""
    try:
        _binding()
    except Unsupported:
        return False
    return True


class Times(NamedTuple):
    """FILETIMEs (100 ns since 1601, UTC) as ``$STANDARD_INFORMATION`` keeps them."""

    created: int
    modified: int
    accessed: int


def filetime_of_micros(micros: int) -> int:
    """A FILETIME from microseconds since 1970 (the file delta's stamps)."""
    return micros * 10 + FILETIME_UNIX_OFFSET


def _name(component: str) -> bytes:
    # NTFS names are UTF-16 units, unpaired surrogates included (the delta keeps them).
    return component.encode("utf-16-le", "surrogatepass")


def _fold(name: str) -> str:
    """``name`` as NTFS compares it: each UTF-16 unit upper-cased alone, as ``$UpCase`` maps
    it (``str.upper`` would make "SS" of "ß", which NTFS keeps)."""
    upper = name.upper()
    if len(upper) == len(name):
        return upper
    return "".join(c if len(c.upper()) != 1 else c.upper() for c in name)


def _components(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if part in (".", "..") or "\0" in part or len(_name(part)) > 510:
            raise InvalidInput(f"{path!r}: {part!r} is no NTFS name")
    return parts


class NtfsEditor:
    """An NTFS volume on ``device`` (read and written in place), edited by path.

    Every change is in the device once ``close`` returns (libntfs-3g writes its caches back
    at unmount).  A failure names the path and what libntfs-3g said: ``InvalidInput`` for a
    value it will not store (EINVAL), ``StateError`` for a full or hibernated volume,
    ``CorruptImage`` otherwise.
    """

    def __init__(self, device: BlockDevice) -> None:
        self.device = device
        try:
            self.volume = _binding().Volume(device)
        except OSError as e:
            if e.errno == errno.EPERM:  # libntfs-3g's refusal of a hibernated volume
                said = (e.strerror or "refused").rstrip(".")
                raise StateError(
                    what=f"{getattr(device, 'path', None) or 'the volume'}: libntfs-3g refuses "
                    f"to change this NTFS volume ({said}): boot Windows from it and shut it "
                    "down fully (not hibernated, no Fast Startup), then import it again"
                ) from e
            raise CorruptImage(
                path=getattr(device, "path", None) or "the volume",
                structure="NTFS volume",
                problem=f"libntfs-3g cannot mount it: {e.strerror or e}",
            ) from e
        self._dirs: dict[str, int] = {"": ROOT}  # folded path -> directory record
        self._listings: dict[int, dict[str, tuple[int, str]]] = {}  # see ``_lookup``

    def __enter__(self) -> NtfsEditor:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close()
            return
        # Unmounted all the same; the failure already on its way is the one to report.
        with contextlib.suppress(StrataError):
            self.close()

    def close(self) -> None:
        try:
            self.volume.close()
        except OSError as e:
            raise self._failure("unmount", "/", e) from e

    def _failure(self, doing: str, path: str, e: OSError) -> StrataError:
        if e.errno == errno.EINVAL:  # libntfs-3g's word for a value it will not store
            return InvalidInput(f"{path}: libntfs-3g refuses to {doing}: the value is not valid")
        if e.errno == errno.ENOSPC:
            return StateError(
                what=f"{path}: the NTFS volume has no room left ({doing}): give the OS layer a "
                "larger volume, or leave out a layer"
            )
        return CorruptImage(
            path=path,
            structure="NTFS volume",
            problem=f"libntfs-3g could not {doing}: {e.strerror or e}",
        )

    # -- lookups

    def resolve(self, path: str) -> int | None:
        """The MFT record of ``path``, or None when some component is missing.  Names match
        as Windows matches them, whatever their case."""
        found = self._walk(_components(path), path)
        return found[0] if found is not None else None

    def _walk(self, parts: list[str], path: str) -> tuple[int, int, str] | None:
        """(record, directory it is in, its name as stored) of ``parts``; None when absent."""
        if not parts:
            return ROOT, ROOT, ""
        parent = self._dirs.get(_fold("/".join(parts[:-1])))
        if parent is None:
            above = self._walk(parts[:-1], path)
            if above is None:
                return None
            parent = above[0]
            self._dirs[_fold("/".join(parts[:-1]))] = parent
        hit = self._lookup(parent, parts[-1], path)
        return (hit[0], parent, hit[1]) if hit is not None else None

    def _lookup(self, directory: int, name: str, path: str) -> tuple[int, str] | None:
        """(record, stored name) of ``name`` in ``directory``.  libntfs-3g matches a Win32
        name whatever its case but a POSIX one (what it gives the names it makes) only as
        spelled: a miss falls back to the directory's names folded to upper case, listed once
        and kept up to date by the edits."""
        try:
            found = self.volume.lookup(directory, _name(name))
        except OSError as e:
            raise self._failure("look up", path, e) from e
        if found is not None:
            return int(found), name
        return self._names(directory).get(_fold(name))

    def _names(self, directory: int) -> dict[str, tuple[int, str]]:
        names = self._listings.get(directory)
        if names is None:
            names = {_fold(n): (child, n) for n, child, _ in self.children(directory)}
            self._listings[directory] = names
        return names

    def exists(self, path: str) -> bool:
        return self.resolve(path) is not None

    def is_dir(self, inode: int) -> bool:
        return bool(self.volume.is_directory(inode))

    def children(self, inode: int) -> list[tuple[str, int, bool]]:
        """(name, record, is_directory) of each entry of directory ``inode``."""
        return [
            (name.decode("utf-16-le", "surrogatepass"), child, is_dir)
            for name, child, is_dir in self.volume.children(inode)
        ]

    # -- changes

    def mkdir(self, path: str) -> int:
        """The directory at ``path``, made with its missing parents."""
        parts = _components(path)
        node = ROOT
        for at, part in enumerate(parts):
            here = "/".join(parts[: at + 1])
            found = self._dirs.get(_fold(here))
            if found is None:
                hit = self._lookup(node, part, here)
                if hit is None:
                    found = self._create(node, part, here, directory=True)
                elif not self.is_dir(hit[0]):
                    raise InvalidInput(f"{here} is a file, not a directory")
                else:
                    found = hit[0]
                self._dirs[_fold(here)] = found
            node = found
        return node

    def create_file(self, path: str) -> int:
        """A new empty file at ``path`` (its directory made when missing); the path must be
        free."""
        directory, leaf = self._place_for(path)
        return self._create(directory, leaf, path, directory=False)

    def _place_for(self, path: str) -> tuple[int, str]:
        """The directory a new name at ``path`` goes into (made when missing), and the name."""
        parts = _components(path)
        if not parts:
            raise InvalidInput("the root directory has no name to give")
        return (self.mkdir("/".join(parts[:-1])) if len(parts) > 1 else ROOT), parts[-1]

    def _create(self, parent: int, name: str, path: str, directory: bool) -> int:
        if self._lookup(parent, name, path) is not None:  # in another case, for libntfs-3g
            raise InvalidInput(f"{path} exists already")
        try:
            made = int(self.volume.create(parent, _name(name), directory))
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise InvalidInput(f"{path} exists already") from e
            raise self._failure("create", path, e) from e
        self._named(parent, name, made)
        return made

    def _named(self, directory: int, name: str, inode: int) -> None:
        if directory in self._listings:
            self._listings[directory][_fold(name)] = (inode, name)

    def link(self, inode: int, path: str) -> None:
        """Another name, ``path``, for the file ``inode`` (a hard link)."""
        directory, leaf = self._place_for(path)
        if self._lookup(directory, leaf, path) is not None:
            raise InvalidInput(f"{path} exists already")
        try:
            self.volume.link(inode, directory, _name(leaf))
        except OSError as e:
            raise self._failure("link", path, e) from e
        self._named(directory, leaf, inode)

    def delete(self, path: str) -> bool:
        """Remove ``path`` and, for a directory, everything below it; False when absent."""
        parts = _components(path)
        if not parts:
            raise InvalidInput("the root directory cannot be deleted")
        found = self._walk(parts, path)
        if found is None:
            return False
        inode, parent, stored = found
        self._remove(parent, inode, stored, path)
        prefix = _fold("/".join(parts))
        self._dirs = {
            k: v for k, v in self._dirs.items() if k != prefix and not k.startswith(prefix + "/")
        }
        return True

    def _remove(self, parent: int, inode: int, name: str, path: str) -> None:
        if self.is_dir(inode):
            for child_name, child, _ in self.children(inode):
                self._remove(inode, child, child_name, f"{path}/{child_name}")
            self._listings.pop(inode, None)
        try:
            self.volume.unlink(parent, inode, _name(name))
        except OSError as e:
            raise self._failure("delete", path, e) from e
        if parent in self._listings:
            self._listings[parent].pop(_fold(name), None)

    def write(
        self, inode: int, pieces: Iterable[bytes | memoryview], stream: str = "", path: str = ""
    ) -> int:
        """Write ``pieces`` from offset 0 of the file's unnamed ``$DATA`` (or named
        ``stream``, made when missing), cutting what was there past their end; bytes
        written.  ``path`` names the file in errors."""
        name = _name(stream) if stream else b""
        doing = f"write stream {stream}" if stream else "write the data"
        at = 0
        for piece in pieces:
            if len(piece):
                self._call(doing, path, self.volume.write, inode, name, at, piece)
                at += len(piece)
        self._call(doing, path, self.volume.truncate, inode, name, at)
        return at

    def read(self, inode: int, stream: str = "", path: str = "") -> Iterator[bytes]:
        """The content of the file's unnamed ``$DATA`` (or named ``stream``), in pieces of at
        most ``READ_PIECE`` bytes, as it is now (what this editor wrote included)."""
        name = _name(stream) if stream else b""
        at = 0
        while True:
            try:
                piece = self.volume.read(inode, name, at, READ_PIECE)
            except OSError as e:
                raise self._failure("read", path or f"MFT record {inode}", e) from e
            if not piece:
                return
            yield piece
            at += len(piece)

    def set_times(self, inode: int, times: Times, path: str = "") -> None:
        """Created, modified and accessed times (the MFT-change time becomes now)."""
        self._call("set times", path, self.volume.set_times, inode, *times)

    def set_attributes(self, inode: int, flags: int, path: str = "") -> None:
        """``$STANDARD_INFORMATION``'s FILE_ATTRIBUTE_* flags; libntfs-3g keeps the ones the
        file system owns (directory, sparse, compressed, reparse point) as they are."""
        self._call("set attributes", path, self.volume.set_attributes, inode, flags)

    def set_security(self, inode: int, descriptor: bytes, path: str = "") -> None:
        """The self-relative security descriptor (stored once in ``$Secure``)."""
        self._call("set the security descriptor", path, self.volume.set_security, inode, descriptor)

    def set_reparse(self, inode: int, value: bytes, path: str = "") -> None:
        """The whole ``$REPARSE_POINT`` value (tag, length, data); b"" removes it."""
        self._call("set the reparse point", path, self.volume.set_reparse, inode, value)

    def _call(self, doing: str, path: str, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except OSError as e:
            raise self._failure(doing, path or f"MFT record {args[0]}", e) from e
