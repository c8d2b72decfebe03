"""FAT oracles and fixtures: mkfs.fat builds, mtools fills and reads back, fsck.fat checks.

mtools is the independent reader: ``mcopy -s -m`` extracts the whole tree (with modification
times), ``mattrib -/`` lists attributes, ``fsck.fat -n`` checks FATs, chains, directories and
the FSInfo free count.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strata.blockdev.base import BlockDevice
from strata.fs.fat import FatVolume
from strata.fs.fat import structs as s
from strata.fs.fat.editor import lfn_entries
from strata.native import is_zero

from support.partition_devices import MemoryDevice
from support.tools import require

MiB = 1 << 20
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}


def mtools(tool: str, *args: str | os.PathLike[str], check: bool = True) -> str:
    proc = subprocess.run([require(tool), *map(str, args)], capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {args} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def spec(image: Path, offset: int = 0) -> str:
    return f"{image}@@{offset}" if offset else str(image)


def make_volume(path: Path, fat: int, size: int, *extra: str) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(
        [require("mkfs.fat"), "-F", str(fat), "-n", f"FAT{fat}VOL", *extra, str(path)],
        check=True,
        capture_output=True,
    )
    return path


def pattern(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@dataclass
class Populated:
    """What we put on a volume with mtools, as a flat map path -> bytes (None: directory)."""

    image: Path
    offset: int
    cluster_size: int
    tree: dict[str, bytes | None]


def populate(image: Path, work: Path, cluster_size: int, offset: int = 0) -> Populated:
    """Nested dirs, long and non-ASCII names, 0-byte, 1-cluster and fragmented files."""
    img = spec(image, offset)
    tree: dict[str, bytes | None] = {}
    src = work / "src"
    src.mkdir(exist_ok=True)

    def mkdir(*paths: str) -> None:
        mtools("mmd", "-i", img, *(f"::{p}" for p in paths))
        tree.update(dict.fromkeys(paths))

    def put(path: str, data: bytes) -> None:
        local = src / f"f{len(tree)}"
        local.write_bytes(data)
        mtools("mcopy", "-i", img, local, f"::{path}")
        tree[path] = data

    mkdir("/Dir", "/Dir/Sub", "/Dir/Sub/Deep", "/Ünïcödé dir", "/frag", "/many")
    put("/empty.txt", b"")
    put("/README.TXT", b"plain 8.3 name\n")
    put("/one cluster.bin", pattern(cluster_size, 1))
    put("/Dir/Sub/Deep/A long file name with spaces.dat", pattern(3 * cluster_size + 17, 2))
    put("/Ünïcödé dir/日本語 ファイル.txt", "こんにちは".encode())
    put("/Ünïcödé dir/Ærøskøbing.bin", pattern(5000, 3))
    for i in range(24):
        put(f"/frag/hole{i:02d}.bin", pattern(cluster_size, 100 + i))
    for i in range(0, 24, 2):
        mtools("mdel", "-i", img, f"::/frag/hole{i:02d}.bin")
        del tree[f"/frag/hole{i:02d}.bin"]
    rewind_next_free(image, offset)  # else mtools on FAT32 allocates past the holes
    put("/frag/fragmented file.bin", pattern(20 * cluster_size + 99, 4))
    names = []
    for i in range(40):
        local = src / f"Entry number {i:02d} with a rather long name.txt"
        local.write_bytes(f"entry {i}\n".encode())
        names.append(local)
        tree[f"/many/{local.name}"] = local.read_bytes()
    mtools("mcopy", "-i", img, *names, "::/many/")
    return Populated(image, offset, cluster_size, tree)


def rewind_next_free(image: Path, offset: int) -> None:
    """Point FAT32's FSInfo next-free hint at cluster 2 (FAT12/16 have no hint)."""
    with open(image, "r+b") as f:
        f.seek(offset)
        boot = f.read(512)
        if boot[82:87] != b"FAT32":
            return
        fsinfo = int.from_bytes(boot[48:50], "little") * int.from_bytes(boot[11:13], "little")
        f.seek(offset + fsinfo + 492)
        f.write((2).to_bytes(4, "little"))


def mtools_tree(image: Path, work: Path, offset: int = 0) -> dict[str, bytes | None]:
    """The whole tree as mtools extracts it."""
    out = work / f"extract-{len(list(work.glob('extract-*')))}"
    out.mkdir()
    listing = mtools("mdir", "-/", "-a", "-b", "-i", spec(image, offset), "::/")
    if listing.strip():
        mtools("mcopy", "-s", "-n", "-m", "-i", spec(image, offset), "::/*", out)
    return dict(_local_tree(out))


def _local_tree(root: Path) -> Iterator[tuple[str, bytes | None]]:
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root) if dirpath != str(root) else ""
        for d in dirnames:
            yield f"{rel}/{d}", None
        for f in filenames:
            yield f"{rel}/{f}", Path(dirpath, f).read_bytes()


def mtools_mtimes(image: Path, work: Path, offset: int = 0) -> dict[str, dt.datetime]:
    out = work / f"times-{len(list(work.glob('times-*')))}"
    out.mkdir()
    mtools("mcopy", "-s", "-n", "-m", "-i", spec(image, offset), "::/*", out)
    return {
        "/" + os.path.relpath(os.path.join(d, f), out): dt.datetime.fromtimestamp(
            os.stat(os.path.join(d, f)).st_mtime, dt.UTC
        ).replace(tzinfo=None)
        for d, _, files in os.walk(out)
        for f in files
    }


def mtools_attributes(image: Path, offset: int = 0) -> dict[str, str]:
    """Path -> attribute letters (A, S, H, R) as ``mattrib -/`` prints them."""
    found = {}
    for line in mtools("mattrib", "-/", "-i", spec(image, offset), "::/").splitlines():
        flags, _, path = line.partition("::")
        if path not in ("", "/"):
            found[path] = "".join(sorted(flags.split()))
    return found


def strata_tree(vol: FatVolume) -> dict[str, bytes | None]:
    return {p: (None if e.is_dir else vol.read_file(e)) for p, e in vol.walk()}


def strata_attributes(vol: FatVolume) -> dict[str, str]:
    letters = {0x20: "A", 0x04: "S", 0x02: "H", 0x01: "R"}
    return {
        p: "".join(sorted(c for bit, c in letters.items() if e.attributes & bit))
        for p, e in vol.walk()
    }


def fsck(image: Path) -> str:
    """``fsck.fat -n`` output; a clean volume prints only its banner and summary line."""
    proc = subprocess.run(
        [require("fsck.fat"), "-n", str(image)], capture_output=True, text=True, env=ENV
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    clean = proc.returncode == 0 and len(lines) == 2 and lines[0].startswith("fsck.fat")
    return "clean" if clean else f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def extract(dev: BlockDevice, path: Path) -> Path:
    """Copy a device (a partition) to a sparse file for tools that take a file."""
    with open(path, "wb") as f:
        f.truncate(dev.size)
        buf = bytearray(MiB)
        for lo in range(0, dev.size, MiB):
            view = memoryview(buf)[: min(MiB, dev.size - lo)]
            dev.readinto(lo, view)
            if not is_zero(view):
                f.seek(lo)
                f.write(view)
    return path


def rewrite_long_name(data: bytearray, parent: str, name: str, new: str) -> int:
    """Spell ``new`` in the long-name slots of ``parent/name`` (as many slots as it has, the
    checksum kept), as a hostile tool could; the short entry's volume offset."""
    vol = FatVolume(MemoryDevice(bytes(data)))
    d = vol.directory(vol.stat(parent))
    entry = vol.lookup(d, name)
    assert entry is not None and entry.offset is not None
    record = lfn_entries(new, s.lfn_checksum(entry.raw_short))
    assert len(record) // 32 == entry.lfn_slots, (new, entry.lfn_slots)
    for k in range(entry.lfn_slots):
        at = d.slot_offset(entry.slot - entry.lfn_slots + k)
        data[at : at + 32] = record[32 * k : 32 * k + 32]
    return entry.offset
