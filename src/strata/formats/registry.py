"""Format drivers: probe by magic, open and create by name.

Each sub-package of ``strata.formats`` exposes a module-level ``DRIVER``;
the registry discovers them, so a new format plugs in without touching the
CLI.  ``open_image`` returns the guest-visible disk with its parent chain
attached and verified; ``open_layer`` returns one file's own layer.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

from strata.blockdev.base import BlockDevice
from strata.blockdev.chain import ChainDevice, attach_parents
from strata.blockdev.copy import Progress
from strata.blockdev.rawfile import opening_input
from strata.errors import InvalidInput, Unsupported
from strata.formats.options import FormatOption, parse_options

PROBE_HEAD = 64 << 10
PROBE_TAIL = 4 << 10


class ProbeInput(NamedTuple):
    path: str
    size: int
    head: bytes
    tail: bytes


class Problem(NamedTuple):
    """One finding of ``strata disk check``."""

    structure: str
    message: str
    field: str = "-"
    offset: int | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = f" at file offset {self.offset:#x}" if self.offset is not None else ""
        fld = f" field {self.field}" if self.field != "-" else ""
        return f"{self.severity}: {self.structure}{fld}{where}: {self.message}"


class WriteRequest(NamedTuple):
    """What a format writer is asked to produce."""

    source: BlockDevice
    path: str
    options: Mapping[str, Any]
    backing: BlockDevice | None = None
    backing_layer: BlockDevice | None = None
    progress: Progress | None = None


class CreateRequest(NamedTuple):
    path: str
    size: int
    options: Mapping[str, Any]
    parent: BlockDevice | None = None


class FormatDriver(NamedTuple):
    name: str
    description: str
    probe: Callable[[ProbeInput], int]
    open: Callable[[str, bool], BlockDevice]
    create: Callable[[CreateRequest], BlockDevice] | None = None
    write: Callable[[WriteRequest], None] | None = None
    # check(path, allowed_dirs): where a parent may be opened (empty: the image's own directory)
    check: Callable[[str, Sequence[str]], list[Problem]] | None = None
    options: Sequence[FormatOption] = ()
    # check_options(options, size, child): refuses (InvalidInput) what ``create`` or ``write``
    # would refuse of these parsed options for a disk of ``size`` bytes, before any file exists.
    check_options: Callable[[Mapping[str, Any], int, bool], None] | None = None
    # Whether an image may be written under a temporary name and renamed into place
    # (``ops.output.written``): not when its files name each other.
    atomic_replace: bool = True
    # Whether ``write`` may take a block device as its destination (raw: the disk's bytes).
    onto_devices: bool = False


class Deferred:
    """The object named ``"package.module:attribute"``, imported when first used.

    A driver names its open, create, write and check this way (and its options, through
    ``DeferredOptions``): discovering every driver then costs only the probes, not each
    format's reader, writer and checker (start-up).  ``resolve`` imports the target; a
    target that does not import is an internal error when the driver is first used.
    """

    __slots__ = ("_value", "target")

    def __init__(self, target: str) -> None:
        if ":" not in target:
            raise ValueError(f"deferred target {target!r} is not 'module:attribute'")
        self.target = target
        self._value: Any = None

    def resolve(self) -> Any:
        if self._value is None:
            module, _, name = self.target.partition(":")
            self._value = getattr(importlib.import_module(module), name)
        return self._value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Deferred({self.target!r})"


class DeferredOptions(Sequence[FormatOption]):
    """A driver's options declared in a module that is imported only when they are read."""

    def __init__(self, target: str) -> None:
        self.deferred = Deferred(target)

    def __getitem__(self, index: Any) -> Any:
        return self.deferred.resolve()[index]

    def __len__(self) -> int:
        return len(self.deferred.resolve())

    def __repr__(self) -> str:
        return f"DeferredOptions({self.deferred.target!r})"


# Formats we recognise but do not read, so users get a precise answer.
FOREIGN_MAGIC: dict[bytes, str] = {
    b"QFI\xfb": "qcow2",
    b"QED\x00": "qed",
    b"<<< Oracle VM VirtualBox Disk Image >>>": "vdi",
    b"COWD": "vmdk (ESX COWD sparse)",
}


@cache
def drivers() -> tuple[FormatDriver, ...]:
    import strata.formats as package

    found: list[FormatDriver] = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"strata.formats.{info.name}")
        driver = getattr(module, "DRIVER", None)
        if isinstance(driver, FormatDriver):
            found.append(driver)
    return tuple(sorted(found, key=lambda d: d.name))


def names() -> list[str]:
    return [d.name for d in drivers()]


def get(name: str) -> FormatDriver:
    for driver in drivers():
        if driver.name == name.lower():
            return driver
    raise InvalidInput(f"unknown format {name!r} (known formats: {', '.join(names())})")


def read_probe(path: str) -> ProbeInput:
    with opening_input(path), open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(PROBE_HEAD)
        f.seek(max(0, size - PROBE_TAIL))
        tail = f.read(PROBE_TAIL)
    return ProbeInput(path, size, head, tail)


def probe(path: str) -> FormatDriver:
    data = read_probe(path)
    if data.size == 0:
        raise InvalidInput(f"{path} is empty, not a disk image")
    foreign = foreign_format(data)
    if foreign is not None:
        raise Unsupported(what=f"{path} is a {foreign} image; strata reads {', '.join(names())}")
    scored = [(d.probe(data), d.name, d) for d in drivers()]
    score, _, best = max(scored, key=lambda t: (t[0], t[1]))
    if score <= 0:
        raise Unsupported(
            what=f"{path} is in no known disk format ({', '.join(names())}); "
            f"its size {data.size} is not a multiple of 512, so it is not taken as raw "
            f"(pass -f raw to read it anyway)"
        )
    return best


def foreign_format(data: ProbeInput) -> str | None:
    """The disk format strata recognises but does not read that ``data`` is in, if any."""
    for magic, fmt in FOREIGN_MAGIC.items():
        if data.head.startswith(magic) or (fmt == "vdi" and magic in data.head[:128]):
            return fmt
    return None


def driver_for(path: str, fmt: str | None) -> FormatDriver:
    if fmt is None:
        return probe(path)
    driver = get(fmt)
    read_probe(path)
    return driver


def open_layer(path: str, fmt: str | None = None, writable: bool = False) -> BlockDevice:
    driver = driver_for(path, fmt)
    if os.path.getsize(path) == 0:
        raise InvalidInput(f"{path} is empty, not a disk image")
    return driver.open(path, writable)


def parent_dirs(path: str, allowed_dirs: Sequence[str] | None) -> list[str]:
    """Where the parents of ``path`` may be opened: ``allowed_dirs``, else its own directory."""
    return list(allowed_dirs) if allowed_dirs else [os.path.dirname(os.path.abspath(path))]


def open_image(
    path: str,
    fmt: str | None = None,
    writable: bool = False,
    allowed_dirs: Sequence[str] | None = None,
) -> ChainDevice:
    """The guest-visible disk of ``path``, parents opened read-only and verified.

    Parents are looked up only inside ``allowed_dirs`` (default: the image's
    own directory).
    """
    top = open_layer(path, fmt, writable)
    try:
        attach_parents(top, lambda p: open_layer(p), parent_dirs(path, allowed_dirs))
    except BaseException:
        top.close()
        raise
    return ChainDevice(top)


def options_for(fmt: str, texts: Sequence[str]) -> dict[str, Any]:
    driver = get(fmt)
    return parse_options(driver.name, driver.options, texts)
