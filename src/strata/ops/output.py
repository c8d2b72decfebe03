"""Where a command writes its image: never onto one of its inputs, and never so that a
failure loses the file it was to replace.

An image replacing an existing file is written beside it under a hidden name and renamed
over it only once complete, so a corrupt source, a full disk or a signal part-way leaves
the old file as it was.  Two kinds of output are written in place instead: a destination
that is not a regular file (a block device), and a format whose files name each other
(``FormatDriver.atomic_replace`` false: a VMDK's descriptor names its extent files, so a
VMDK written under another name would name the wrong files).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from strata.blockdev.base import BlockDevice
from strata.blockdev.rawfile import create_file
from strata.errors import InvalidInput


def check_destination(path: str, onto_devices: bool = False) -> None:
    """``path`` can take a new image: its directory exists, it is not a directory, and it is
    a device only when ``onto_devices`` (a raw image written onto a block device)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InvalidInput(f"cannot write {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise InvalidInput(f"cannot write {path}: it is a directory")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a new file, or one the writer will name in its own error
    if stat.S_ISCHR(mode):
        raise InvalidInput(f"cannot write {path}: it is a character device, not a file or disk")
    if stat.S_ISBLK(mode) and not onto_devices:
        raise InvalidInput(
            f"cannot write {path}: it is a block device; only raw images are written onto "
            "block devices (disk convert or image export with -O raw)"
        )


def input_files(devices: Iterable[BlockDevice | None]) -> list[str]:
    """Every file the opened ``devices`` read: each layer of a chain, each VMDK extent."""
    files: list[str] = []
    for dev in devices:
        for layer in getattr(dev, "layers", [dev]) if dev is not None else []:
            files += getattr(layer, "files", [])
    return files


def refuse_inputs(dst: str, inputs: Iterable[str]) -> None:
    """``dst`` must not be a file the command reads, under any name: the same path, a
    symbolic or hard link to it, a parent in the chain or an extent of the source."""
    if not os.path.exists(dst):
        return
    for path in inputs:
        if os.path.exists(path) and os.path.samefile(dst, path):
            raise InvalidInput(f"{dst} is also an input ({path}); write to another file")


def refuse_inside(dst: str, root: str | os.PathLike[str], what: str) -> None:
    """``dst`` must not lie inside ``root`` (followed through symbolic links)."""
    real, top = os.path.realpath(dst), os.path.realpath(root)
    # os.path, not pathlib: pathlib and what it imports were 4 % of `disk convert`'s start-up
    # (callgrind instructions), and only this function wanted it.
    if os.path.commonpath([real, top]) == top:
        raise InvalidInput(f"{dst} lies inside {what} {root}; write outside it")


@contextmanager
def written(dst: str, atomic_replace: bool = True) -> Iterator[str]:
    """The path to write ``dst`` at.  If the block fails, what it wrote is removed and a file
    that was at ``dst`` before is left as it was (except when written in place: see the
    module's note)."""
    target = os.path.realpath(dst) if os.path.islink(dst) else dst
    try:
        before = os.stat(target)
    except FileNotFoundError:
        before = None
    if before is None or not stat.S_ISREG(before.st_mode) or not atomic_replace:
        with _removed_on_failure(target, before), _named(dst):
            yield target
        return
    name = f".{os.path.basename(target)}.strata-{os.getpid()}.part"
    part = os.path.join(os.path.dirname(target), name)
    try:
        # Made here, so a directory that refuses it is named with the file the user gave;
        # inside the ``try``, so a SIGTERM that lands just after it leaves no part file
        # (seen under load: the part appeared, the signal came before the ``try``).
        os.close(create_file(part, f"replace {dst} (written first beside it as {name})"))
        with _named(dst):
            yield part
        os.chmod(part, stat.S_IMODE(before.st_mode))
        os.replace(part, target)
    except BaseException:
        if os.path.lexists(part):
            os.unlink(part)
        raise


@contextmanager
def _named(dst: str) -> Iterator[None]:
    """A write error the system gave without a file name (``pwrite`` on a full disk) names
    the destination, so its one line says which file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = dst
        raise


@contextmanager
def _removed_on_failure(path: str, before: os.stat_result | None) -> Iterator[None]:
    """Delete ``path`` if the block fails after writing it: a regular file it created, or
    one it wrote in place (a writer truncates first, so what is left is a partial image,
    not the old content).  A file the block failed before touching is left as it was, and
    so is anything that is not a regular file."""
    try:
        yield
    except BaseException:
        after = _identity(path)
        if after is not None and after != _identity_of(before) and _is_regular(path):
            os.unlink(path)
        raise


def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        return _identity_of(os.stat(path))
    except FileNotFoundError:
        return None


def _identity_of(st: os.stat_result | None) -> tuple[int, int, int, int] | None:
    if st is None:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _is_regular(path: str) -> bool:
    return stat.S_ISREG(os.lstat(path).st_mode)
