"""NTFS volumes left as Windows leaves them when it does not shut down fully, and the oracles
that judge them: ntfs-3g's own read-write mount, told not to recover (it then falls back to
read-only, saying why, on a hibernated or unclean volume), and ntfsinfo (which refuses a
volume marked for chkdsk).

The restart pages are built here from the linux-ntfs ``logfile.h`` layout, as Windows writes
them (one NTFS log client, page version 1.1 or 2.0); where they go on the volume is read by
sleuthkit's ``istat``, not by strata.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from strata.blockdev import RangeDevice, RawFileDevice
from strata.fs.ntfs import NtfsVolume
from strata.fs.ntfs import structs as s

from support.ntfs_tools import attr_offsets, protect
from support.tools import require

PAGE = 4096
SECTOR = 512
LOG_PAGE_DATA_OFFSET = 0x40
LOG_RECORD_HEADER_LENGTH = 0x30
RA_OFFSET = 0x30  # after the 30-byte header and the 9-entry update sequence array
CLIENT_ARRAY_OFFSET = 0x30


def restart_page(
    *,
    lsn: int,
    in_use: int = 0,
    flags: int = 0,
    version: tuple[int, int] = (1, 1),
    file_size: int = 4 << 20,
    magic: bytes = b"RSTR",
    usa_count: int = 1 + PAGE // SECTOR,
) -> bytes:
    """One 4 KiB restart page, protected by its update sequence as on disk."""
    page = bytearray(PAGE)
    usa_offset = 0x1E
    page[0:30] = (
        magic
        + usa_offset.to_bytes(2, "little")
        + usa_count.to_bytes(2, "little")
        + (0).to_bytes(8, "little")  # chkdsk LSN
        + PAGE.to_bytes(4, "little")  # system page size
        + PAGE.to_bytes(4, "little")  # log page size
        + RA_OFFSET.to_bytes(2, "little")
        + version[1].to_bytes(2, "little")
        + version[0].to_bytes(2, "little")
    )
    page[usa_offset : usa_offset + 2] = (0x0101).to_bytes(2, "little")  # the sequence number
    clients = 1
    length = CLIENT_ARRAY_OFFSET + clients * s.LOG_CLIENT_RECORD_SIZE
    area = (
        lsn.to_bytes(8, "little")
        + clients.to_bytes(2, "little")
        + s.LOGFILE_NO_CLIENT.to_bytes(2, "little")  # free list
        + in_use.to_bytes(2, "little")
        + flags.to_bytes(2, "little")
        + (67 - file_size.bit_length()).to_bytes(4, "little")  # sequence number bits
        + length.to_bytes(2, "little")
        + CLIENT_ARRAY_OFFSET.to_bytes(2, "little")
        + file_size.to_bytes(8, "little")
        + (0).to_bytes(4, "little")  # last LSN data length
        + LOG_RECORD_HEADER_LENGTH.to_bytes(2, "little")
        + LOG_PAGE_DATA_OFFSET.to_bytes(2, "little")
    )
    page[RA_OFFSET : RA_OFFSET + len(area)] = area
    client = RA_OFFSET + CLIENT_ARRAY_OFFSET
    page[client + 0x10 : client + 0x14] = b"\xff\xff\xff\xff"  # no previous, no next client
    page[client + 0x1C : client + 0x20] = (8).to_bytes(4, "little")
    page[client + 0x20 : client + 0x28] = "NTFS".encode("utf-16-le")
    return protect(bytes(page))


def logfile_offset(image: Path, start: int = 0) -> int:
    """Where ``$LogFile``'s first two pages lie in ``image`` (the volume at byte ``start``),
    as sleuthkit reads its runs: they must be one contiguous 8 KiB."""
    sectors = ["-o", str(start // SECTOR)] if start else []
    cluster = int(_field(run([require("fsstat"), *sectors, str(image)]), r"Cluster Size: (\d+)"))
    listing = run([require("istat"), *sectors, str(image), "2"])
    runs = listing.split("Type: $DATA", 1)[1].split("\n", 1)[1].split()
    clusters = [int(c) for c in runs[: max(1, 2 * PAGE // cluster)]]
    assert clusters == list(range(clusters[0], clusters[0] + len(clusters))), clusters
    return start + clusters[0] * cluster


def write_journal(image: Path, first: bytes, second: bytes, start: int = 0) -> None:
    at = logfile_offset(image, start)
    with open(image, "r+b") as f:
        f.seek(at)
        f.write(first + second)


def set_dirty(image: Path, start: int = 0) -> None:
    """Set ``VOLUME_IS_DIRTY`` in ``$Volume``, as ``fsutil dirty set`` does."""
    record = bytearray(_system_record(image, s.VOLUME_RECORD, start))
    attr = attr_offsets(bytes(record))[s.VOLUME_INFORMATION][0]
    value = attr + int.from_bytes(record[attr + 20 : attr + 22], "little")
    flags = int.from_bytes(record[value + 10 : value + 12], "little") | s.VOLUME_IS_DIRTY
    record[value + 10 : value + 12] = flags.to_bytes(2, "little")
    write_system_record(image, s.VOLUME_RECORD, bytes(record), start)


def free_record(image: Path, number: int, start: int = 0) -> None:
    """Mark system record ``number`` not in use."""
    record = bytearray(_system_record(image, number, start))
    record[22] &= ~s.RECORD_IN_USE & 0xFF
    write_system_record(image, number, bytes(record), start)


def write_system_record(image: Path, number: int, record: bytes, start: int = 0) -> None:
    """Write fixed-up system record ``number`` (one of the first four) to ``$MFT`` and to its
    ``$MFTMirr`` copy, protected: ntfs-3g refuses a volume whose two copies differ."""
    with RawFileDevice(str(image)) as dev:
        vol = NtfsVolume(RangeDevice(dev, start, dev.size - start) if start else dev)
        at = vol.record_offset(number)
        boot = s.BOOT_SECTOR.parse(vol.dev.read(0, SECTOR))
    mirror = boot.mftmirr_lcn * boot.bytes_per_sector * boot.sectors_per_cluster
    with open(image, "r+b") as f:
        for where in (at, mirror + number * len(record)):
            f.seek(start + where)
            f.write(protect(record))


def _system_record(image: Path, number: int, start: int) -> bytes:
    with RawFileDevice(str(image)) as dev:
        vol = NtfsVolume(RangeDevice(dev, start, dev.size - start) if start else dev)
        return vol.record(number)


def write_hiberfile(root: Path, header: bytes) -> None:
    """What hibernation leaves in the root of the volume mounted at ``root``."""
    (root / "hiberfil.sys").write_bytes(header)


def ntfs3g_mount_mode(image: Path, work: Path) -> tuple[str, str]:
    """How ntfs-3g mounts a copy of ``image`` when asked for read-write without recovery
    (``norecover``: by default it would empty an unclean journal and mount read-write): "rw",
    or "ro" when it judged the volume unsafe; and what it printed."""
    copy = work / f"{image.stem}.ntfs3g-oracle"
    shutil.copyfile(image, copy)
    try:
        with tempfile.TemporaryDirectory(prefix="ntfs-3g-mode-") as mnt:
            args = [require("ntfs-3g"), "-o", "norecover", str(copy), mnt]
            done = subprocess.run(args, capture_output=True, text=True)
            try:
                mounts = Path("/proc/mounts").read_text().splitlines()
                options = [line.split()[3] for line in mounts if line.split()[1] == mnt]
            finally:
                subprocess.run(["umount", mnt], capture_output=True)
        assert options, done.stderr
        return options[0].split(",")[0], done.stderr
    finally:
        copy.unlink()


def ntfsinfo_refusal(image: Path) -> str | None:
    """ntfsinfo's refusal of ``image`` (a volume scheduled for check), or None if it opens."""
    done = subprocess.run([require("ntfsinfo"), "-m", str(image)], capture_output=True, text=True)
    return None if done.returncode == 0 else done.stdout + done.stderr


def _field(text: str, pattern: str) -> str:
    found = re.search(pattern, text)
    assert found, (pattern, text)
    return found.group(1)


def run(args: list[str]) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def encrypt_signature(image: Path, start: int = 0) -> None:
    """Give the volume at ``start`` the boot-sector signature BitLocker writes (its OEM id
    names the FVE metadata), as turning BitLocker on does before it encrypts."""
    with open(image, "r+b") as f:
        f.seek(start + 3)
        f.write(b"-FVE-FS-")


def blkid_type(image: Path) -> str:
    """What util-linux's blkid probes ``image`` to be (TYPE=...), or "" when nothing."""
    done = subprocess.run(
        [require("blkid"), "-p", "-o", "value", "-s", "TYPE", str(image)],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()
