"""The VMDK text descriptor: parse strictly, write canonically.

References: VMware Virtual Disk Format 5.0 §"The Descriptor File" (header
keys, extent description lines, disk database ``ddb.*``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from strata.errors import CorruptImage

NO_PARENT = 0xFFFF_FFFF
ACCESS_MODES = ("RW", "RDONLY", "NOACCESS")
EXTENT_KINDS = ("FLAT", "SPARSE", "ZERO", "VMFS", "VMFSSPARSE", "VMFSRDM", "VMFSRAW")
ADAPTER_TYPES = ("ide", "buslogic", "lsilogic", "legacyESX")
CREATE_TYPES = (
    "monolithicSparse",
    "streamOptimized",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
)
MAX_DESCRIPTOR = 1 << 20  # a descriptor is a few hundred bytes; refuse absurd ones

_EXTENT = re.compile(
    r"^(?P<access>\w+)\s+(?P<sectors>\d+)\s+(?P<kind>\w+)"
    r'(?:\s+"(?P<file>[^"]*)"(?:\s+(?P<offset>\d+))?)?\s*$'
)
_KEY = re.compile(r"^(?P<key>[A-Za-z0-9_.]+)\s*=\s*(?P<value>.*)$")


@dataclass(frozen=True)
class ExtentLine:
    access: str
    sectors: int
    kind: str
    filename: str | None = None
    offset: int = 0

    def render(self) -> str:
        if self.kind == "ZERO" or self.filename is None:
            return f"{self.access} {self.sectors} {self.kind}"
        tail = f" {self.offset}" if self.kind == "FLAT" else ""
        return f'{self.access} {self.sectors} {self.kind} "{self.filename}"{tail}'


@dataclass
class Descriptor:
    create_type: str
    extents: list[ExtentLine]
    cid: int = field(default_factory=lambda: new_cid())
    parent_cid: int = NO_PARENT
    parent_hint: str | None = None
    version: int = 1
    ddb: dict[str, str] = field(default_factory=dict)

    @property
    def sectors(self) -> int:
        return sum(e.sectors for e in self.extents)

    def render(self) -> str:
        lines = [
            "# Disk DescriptorFile",
            f"version={self.version}",
            f"CID={self.cid:08x}",
            f"parentCID={self.parent_cid:08x}",
            f'createType="{self.create_type}"',
        ]
        if self.parent_hint is not None:
            lines.append(f'parentFileNameHint="{self.parent_hint}"')
        lines += ["", "# Extent description", *(e.render() for e in self.extents)]
        lines += ["", "# The Disk Data Base", "#DDB", ""]
        lines += [f'{key} = "{value}"' for key, value in self.ddb.items()]
        return "\n".join(lines) + "\n"

    def encode(self) -> bytes:
        return self.render().encode("utf-8")


def new_cid() -> int:
    """A random content id; all-ones means "no parent" and is never used."""
    while True:
        cid = secrets.randbits(32)
        if cid not in (NO_PARENT, NO_PARENT - 1):
            return cid


def geometry(sectors: int, adapter: str) -> dict[str, str]:
    """ddb.geometry as qemu computes it (16 heads for IDE, 255 otherwise, 63 sectors)."""
    heads = 16 if adapter == "ide" else 255
    cylinders = min(sectors // (heads * 63), 16383)
    return {
        "ddb.geometry.cylinders": str(cylinders),
        "ddb.geometry.heads": str(heads),
        "ddb.geometry.sectors": "63",
    }


def standard_ddb(sectors: int, adapter: str, hw_version: int = 4) -> dict[str, str]:
    ddb = {"ddb.virtualHWVersion": str(hw_version)}
    ddb.update(geometry(sectors, adapter))
    ddb["ddb.adapterType"] = adapter
    return ddb


def parse(data: bytes, path: str, offset: int = 0) -> Descriptor:
    """Parse descriptor text (NUL padding after it is ignored)."""
    text = _decode(data.split(b"\0", 1)[0], path, offset)
    keys: dict[str, str] = {}
    ddb: dict[str, str] = {}
    extents: list[ExtentLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _KEY.match(line)
        if match:
            value = _unquote(match["value"].strip())
            target = ddb if match["key"].startswith("ddb.") else keys
            target[match["key"]] = value
            continue
        extents.append(_extent(line, number, path, offset))
    return _build(keys, ddb, extents, path, offset)


def _decode(data: bytes, path: str, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # VMware Workstation on Windows writes encoding="windows-1252" descriptors.
        if re.search(rb'^\s*encoding\s*=\s*"(windows-1252|ISO-8859-1)"', data, re.M | re.I):
            return data.decode("cp1252", errors="replace")
        raise _bad(path, offset, "text", f"not UTF-8 text at byte {e.start}") from e


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _extent(line: str, number: int, path: str, offset: int) -> ExtentLine:
    match = _EXTENT.match(line)
    if not match:
        raise _bad(path, offset, f"line {number}", f"neither key=value nor extent: {line[:80]!r}")
    access, kind = match["access"], match["kind"]
    if access not in ACCESS_MODES:
        raise _bad(path, offset, f"line {number}", f"unknown extent access {access!r}")
    if kind not in EXTENT_KINDS:
        raise _bad(path, offset, f"line {number}", f"unknown extent type {kind!r}")
    if kind != "ZERO" and match["file"] is None:
        raise _bad(path, offset, f"line {number}", f"{kind} extent without a file name")
    return ExtentLine(access, int(match["sectors"]), kind, match["file"], int(match["offset"] or 0))


def _build(
    keys: dict[str, str],
    ddb: dict[str, str],
    extents: list[ExtentLine],
    path: str,
    offset: int,
) -> Descriptor:
    for required in ("version", "CID", "parentCID", "createType"):
        if required not in keys:
            raise _bad(path, offset, required, "missing")
    if not extents:
        raise _bad(path, offset, "extents", "no extent description lines")
    return Descriptor(
        create_type=keys["createType"],
        extents=extents,
        cid=_hex(keys["CID"], "CID", path, offset),
        parent_cid=_hex(keys["parentCID"], "parentCID", path, offset),
        parent_hint=keys.get("parentFileNameHint"),
        version=_int(keys["version"], "version", path, offset),
        ddb=ddb,
    )


def _hex(value: str, name: str, path: str, offset: int) -> int:
    try:
        number = int(value, 16)
    except ValueError as e:
        raise _bad(path, offset, name, f"{value[:20]!r} is not hexadecimal") from e
    if not 0 <= number <= NO_PARENT:
        raise _bad(path, offset, name, f"{value[:20]!r} is not a 32-bit value")
    return number


def _int(value: str, name: str, path: str, offset: int) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise _bad(path, offset, name, f"{value[:20]!r} is not a number") from e


def _bad(path: str, offset: int, field_name: str, problem: str) -> CorruptImage:
    return CorruptImage(
        path=path, structure="descriptor", field=field_name, problem=problem, offset=offset
    )
