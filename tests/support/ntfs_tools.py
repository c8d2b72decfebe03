"""NTFS test volumes (made by fixtures/ntfs_volume.py with mkntfs + ntfs-3g) and the oracles
that read them: an ntfs-3g FUSE mount walked with os.walk + hashlib, and sleuthkit fls/icat.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata.blockdev import RangeDevice, RawFileDevice
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s

from support.tools import require

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "fixtures" / "ntfs_volume.py"
CACHE = ROOT / "build" / "fixtures" / "ntfs"


def volume(files: int, size: str = "512M") -> Path:
    """A cached volume with ``files`` small files besides the special cases (built once)."""
    require("mkntfs")
    require("ntfs-3g")
    if os.geteuid() != 0:
        pytest.skip("building NTFS volumes mounts ntfs-3g (FUSE): needs root")
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:10]
    path = CACHE / f"vol-{files}-{size}-{digest}.img"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            [sys.executable, SCRIPT, tmp, "--files", str(files), "--size", size],
            check=True,
            capture_output=True,
        )
        tmp.rename(path)
    return path


@contextlib.contextmanager
def mounted(image: Path, streams: str = "windows", rw: bool = False) -> Iterator[Path]:
    """``image`` mounted through ntfs-3g, read-only unless ``rw``."""
    with tempfile.TemporaryDirectory(prefix="ntfs-oracle-") as mnt:
        opts = f"{'' if rw else 'ro,'}streams_interface={streams}"
        subprocess.run([require("ntfs-3g"), "-o", opts, str(image), mnt], check=True)
        try:
            yield Path(mnt)
        finally:
            subprocess.run(["umount", mnt], check=True)


@dataclass(frozen=True)
class Seen:
    type: str  # file, dir, symlink
    size: int
    sha256: str | None
    target: str | None = None
    mtime_ns: int = 0


def walk_mount(mnt: Path) -> dict[str, Seen]:
    """Every path below ``mnt`` as ntfs-3g shows it (symlinks not followed)."""
    out: dict[str, Seen] = {}
    for dirpath, dirs, files in os.walk(mnt):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, mnt)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = Seen("symlink", st.st_size, None, os.readlink(full), st.st_mtime_ns)
            elif os.path.isdir(full):
                out[rel] = Seen("dir", 0, None, None, st.st_mtime_ns)
            else:
                out[rel] = Seen("file", st.st_size, sha256_file(full), None, st.st_mtime_ns)
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FlsRow:
    kind: str  # "r" or "d" (fls name type)
    inode: str  # record-type-id
    path: str
    size: int

    @property
    def record(self) -> int:
        return int(self.inode.split("-")[0])

    @property
    def attr_type(self) -> int:
        parts = self.inode.split("-")
        return int(parts[1]) if len(parts) > 1 else 0


def fls(image: Path) -> list[FlsRow]:
    """``fls -r -p -l``: allocated names with their sizes (orphans and deleted left out)."""
    out = subprocess.run(
        [require("fls"), "-r", "-p", "-l", str(image)], check=True, capture_output=True
    ).stdout.decode("utf-8", "surrogateescape")
    rows = []
    for line in out.splitlines():
        head, _, rest = line.partition("\t")
        fields = rest.split("\t")
        kind, _, inode = head.partition(" ")
        if inode.startswith("*") or fields[0].startswith("$OrphanFiles"):
            continue
        rows.append(FlsRow(kind.split("/")[1], inode.rstrip(":"), fields[0], int(fields[5])))
    return rows


def icat(image: Path, inode: str) -> bytes:
    return subprocess.run(
        [require("icat"), str(image), inode], check=True, capture_output=True
    ).stdout


def small_volume(tmp: Path, files: int = 40) -> Path:
    """A private copy of a small cached volume, for tests that damage it."""
    src = volume(files, "16M")
    dst = tmp / "vol.img"
    dst.write_bytes(src.read_bytes())
    return dst


def protect(record: bytes, stride: int = 512) -> bytes:
    """Re-apply the update sequence to a fixed-up record (what NTFS does before a write)."""
    rec = bytearray(record)
    off = int.from_bytes(rec[4:6], "little")
    count = int.from_bytes(rec[6:8], "little")
    if off + 2 * count > stride or count * stride > len(rec) + stride:
        return bytes(rec)  # a damaged sequence array: leave the record as it is
    usn = rec[off : off + 2]
    for i in range(1, count):
        end = i * stride
        rec[off + 2 * i : off + 2 * i + 2] = rec[end - 2 : end]
        rec[end - 2 : end] = usn
    return bytes(rec)


def write_record(image: Path, disk_offset: int, record: bytes) -> None:
    """Write a fixed-up record back (protected, so its update sequence still checks)."""
    with open(image, "r+b") as f:
        f.seek(disk_offset)
        f.write(protect(record))


def attr_offsets(rec: bytes) -> dict[int, list[int]]:
    """Byte offsets of each attribute type in a fixed-up record."""
    out: dict[int, list[int]] = {}
    pos = int.from_bytes(rec[20:22], "little")
    while int.from_bytes(rec[pos : pos + 4], "little") != 0xFFFFFFFF:
        out.setdefault(int.from_bytes(rec[pos : pos + 4], "little"), []).append(pos)
        pos += int.from_bytes(rec[pos + 4 : pos + 8], "little")
    return out


def make_volume(path: Path, size: str, populate) -> Path:  # type: ignore[no-untyped-def]
    """mkntfs a sparse ``path`` and fill it through an ntfs-3g mount with ``populate(root)``."""
    require("mkntfs")
    if os.geteuid() != 0:
        pytest.skip("filling NTFS volumes mounts ntfs-3g (FUSE): needs root")
    subprocess.run(["truncate", "-s", size, str(path)], check=True)
    subprocess.run(
        [require("mkntfs"), "-F", "-Q", "-q", str(path)], check=True, capture_output=True
    )
    with tempfile.TemporaryDirectory(prefix="ntfs-fill-") as mnt:
        opts = "streams_interface=windows"
        subprocess.run([require("ntfs-3g"), "-o", opts, str(path), mnt], check=True)
        try:
            populate(Path(mnt))
        finally:
            subprocess.run(["umount", mnt], check=True)
    return path


def rename_record(image: Path, vol_path: str, new: str, start: int = 0) -> int:
    """Spell ``new`` (at most as long as the old name) in the $FILE_NAME of ``vol_path``'s
    record, as a hostile tool could (the directory index is left as it was); its number."""
    with RawFileDevice(str(image)) as dev:
        vol = NtfsVolume(RangeDevice(dev, start, dev.size - start) if start else dev)
        number = vol.stat(vol_path).record
        rec = bytearray(vol.record(number))
        offset = vol.record_offset(number)
    old = vol_path.rsplit("/", 1)[1]
    encoded = new.encode("utf-16-le", "surrogatepass")
    for pos in attr_offsets(rec)[s.FILE_NAME]:
        value = pos + int.from_bytes(rec[pos + 20 : pos + 22], "little")
        units = rec[value + 64]
        if rec[value + 66 : value + 66 + 2 * units].decode("utf-16-le") == old:
            assert len(encoded) <= 2 * units
            rec[value + 64] = len(encoded) // 2
            rec[value + 66 : value + 66 + 2 * units] = encoded.ljust(2 * units, b"\0")
    write_record(image, start + offset, bytes(rec))
    return number


def set_parent(image: Path, vol_path: str, parent_ref: int, start: int = 0) -> int:
    """Point every $FILE_NAME of ``vol_path``'s record at ``parent_ref`` (record number, and
    sequence in the top 16 bits), as chkdsk finds an orphan; its number."""
    with RawFileDevice(str(image)) as dev:
        vol = NtfsVolume(RangeDevice(dev, start, dev.size - start) if start else dev)
        number = vol.stat(vol_path).record
        rec = bytearray(vol.record(number))
        offset = vol.record_offset(number)
    for pos in attr_offsets(rec)[s.FILE_NAME]:
        value = pos + int.from_bytes(rec[pos + 20 : pos + 22], "little")
        rec[value : value + 8] = parent_ref.to_bytes(8, "little")
    write_record(image, start + offset, bytes(rec))
    return number


# -- the NTFS editor (strata._ntfs, libntfs-3g) and what its tests write ------------------------
def needs_editor_and_mount() -> list[pytest.MarkDecorator]:
    """Marks of tests that fill volumes through ntfs-3g (root, FUSE) and merge them through
    strata._ntfs (built only with ntfs-3g-dev)."""
    from strata.fs.ntfs import editor

    mountable = os.geteuid() == 0 and os.path.exists("/dev/fuse")
    return [
        pytest.mark.skipif(not mountable, reason="ntfs-3g FUSE mounts need root"),
        pytest.mark.skipif(
            not editor.available(), reason="strata._ntfs is not built (needs ntfs-3g-dev)"
        ),
    ]


def security_descriptor(read_only: bool) -> bytes:
    """A self-relative security descriptor: owner and group BUILTIN\\Administrators, a DACL
    granting Everyone read (or full) access."""
    admins = struct.pack("<BB6sII", 1, 2, b"\0\0\0\0\0\x05", 32, 544)
    everyone = struct.pack("<BB6sI", 1, 1, b"\0\0\0\0\0\x01", 0)
    mask = 0x120089 if read_only else 0x1F01FF
    ace = struct.pack("<BBHI", 0, 0, 8 + len(everyone), mask) + everyone
    acl = struct.pack("<BBHHH", 2, 0, 8 + len(ace), 1, 0) + ace
    owner = 20
    group, dacl = owner + len(admins), owner + 2 * len(admins)
    return struct.pack("<BBHIIII", 1, 0, 0x8004, owner, group, 0, dacl) + admins + admins + acl


def junction(target: str) -> bytes:
    """A mount-point reparse value (a junction) to ``target``, a Windows path."""
    substitute = ("\\??\\" + target).encode("utf-16-le")
    printed = target.encode("utf-16-le")
    names = substitute + b"\0\0" + printed + b"\0\0"
    head = struct.pack("<HHHH", 0, len(substitute), len(substitute) + 2, len(printed))
    return struct.pack("<IHH", 0xA0000003, len(head) + len(names), 0) + head + names
