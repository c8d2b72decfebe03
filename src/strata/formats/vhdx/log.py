"""The VHDX log: find the active sequence, validate it, and replay it.

References: [MS-VHDX] 2.3 Log, 2.3.1 Log Entry, 2.3.2 Log Sequence, 2.3.3 Log Replay.

A log whose header LogGuid is non-zero must be replayed before any other read.
If no valid, complete sequence exists, the spec says the file is corrupt and must
not be opened; strata refuses it with :class:`CorruptImage` rather than ignoring it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from construct import ConstructError

from strata.errors import CorruptImage, TruncatedImage, Unsupported
from strata.formats.vhdx import structs as S

MAX_LOG_BYTES = 256 * S.MiB


@dataclass(frozen=True, slots=True)
class LogWrite:
    """One replayed update: ``data`` at ``offset``, or ``length`` zeros when data is None."""

    offset: int
    length: int
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class LogEntry:
    position: int
    length: int
    tail: int
    sequence: int
    flushed_file_offset: int
    last_file_offset: int
    writes: tuple[LogWrite, ...]


@dataclass(frozen=True, slots=True)
class Replay:
    entries: tuple[LogEntry, ...]

    @property
    def writes(self) -> list[LogWrite]:
        return [w for entry in self.entries for w in entry.writes]

    @property
    def head(self) -> LogEntry:
        return self.entries[-1]


class _Ring:
    """The log region as a circular buffer (entries may wrap past its end)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, position: int, length: int) -> bytes:
        end = position + length
        if end <= self.size:
            return self.data[position:end]
        return self.data[position:] + self.data[: end - self.size]


def _descriptor_sectors(count: int) -> int:
    return -(-(S.LOG_HEADER_SIZE + count * S.LOG_DESCRIPTOR_SIZE) // S.LOG_SECTOR)


def parse_entry(ring: _Ring, position: int, log_guid: bytes) -> LogEntry | None:
    """The entry at ``position`` when every field, descriptor and the checksum are valid."""
    if ring.data[position : position + 4] != b"loge":
        return None
    try:
        head = S.LogEntryHeader.parse(ring.read(position, S.LOG_HEADER_SIZE))
    except ConstructError:
        return None
    length, count = head.entry_length, head.descriptor_count
    if (
        length == 0
        or length % S.LOG_SECTOR
        or length > ring.size
        or head.tail % S.LOG_SECTOR
        or head.tail >= ring.size
        or head.sequence_number == 0
        or head.log_guid != log_guid
        or _descriptor_sectors(count) * S.LOG_SECTOR > length
    ):
        return None
    raw = ring.read(position, length)
    if S.checksum(raw) != head.checksum:
        return None
    writes = _descriptors(raw, count, head.sequence_number)
    if writes is None:
        return None
    return LogEntry(
        position,
        length,
        head.tail,
        head.sequence_number,
        head.flushed_file_offset,
        head.last_file_offset,
        tuple(writes),
    )


def _descriptors(raw: bytes, count: int, sequence: int) -> list[LogWrite] | None:
    data_at = _descriptor_sectors(count) * S.LOG_SECTOR
    writes: list[LogWrite] = []
    for index in range(count):
        at = S.LOG_HEADER_SIZE + index * S.LOG_DESCRIPTOR_SIZE
        desc = raw[at : at + S.LOG_DESCRIPTOR_SIZE]
        if desc[:4] == b"zero":
            zero = S.LogZeroDescriptor.parse(desc)
            if (
                zero.sequence_number != sequence
                or zero.file_offset % S.LOG_SECTOR
                or zero.zero_length % S.LOG_SECTOR
            ):
                return None
            writes.append(LogWrite(zero.file_offset, zero.zero_length))
        elif desc[:4] == b"desc":
            write = _data_write(raw, desc, data_at, sequence)
            if write is None:
                return None
            writes.append(write)
            data_at += S.LOG_SECTOR
        else:
            return None
    return writes


def _data_write(raw: bytes, desc: bytes, data_at: int, sequence: int) -> LogWrite | None:
    d = S.LogDataDescriptor.parse(desc)
    if d.sequence_number != sequence or d.file_offset % S.LOG_SECTOR:
        return None
    if data_at + S.LOG_SECTOR > len(raw):
        return None
    try:
        sector = S.LogDataSector.parse(raw[data_at : data_at + S.LOG_SECTOR])
    except ConstructError:
        return None
    if sector.sequence_high != sequence >> 32 or sector.sequence_low != sequence & 0xFFFFFFFF:
        return None
    data = d.leading_bytes + sector.data + d.trailing_bytes
    return LogWrite(d.file_offset, S.LOG_SECTOR, data)


def find_active_sequence(log: bytes, log_guid: bytes) -> list[LogEntry]:
    """The newest valid and complete sequence, tail first ([MS-VHDX] 2.3.3 steps)."""
    ring = _Ring(log)
    cache: dict[int, LogEntry | None] = {}

    def entry_at(position: int) -> LogEntry | None:
        if position not in cache:
            cache[position] = parse_entry(ring, position, log_guid)
        return cache[position]

    best: list[LogEntry] = []
    tail = old_tail = 0
    while True:
        current = _extend(entry_at, tail, ring.size)
        valid = _complete(current)
        if valid and valid[-1].sequence > (best[-1].sequence if best else 0):
            best = valid
        if valid:
            tail = (current[-1].position + current[-1].length) % ring.size
        else:
            tail = (tail + S.LOG_SECTOR) % ring.size
        if tail <= old_tail:
            return best
        old_tail = tail


def _extend(entry_at: object, tail: int, size: int) -> list[LogEntry]:
    sequence: list[LogEntry] = []
    position = tail
    for _ in range(size // S.LOG_SECTOR):
        entry = entry_at(position)  # type: ignore[operator]
        if entry is None or (sequence and entry.sequence != sequence[-1].sequence + 1):
            break
        sequence.append(entry)
        position = (position + entry.length) % size
    return sequence


def _complete(sequence: Sequence[LogEntry]) -> list[LogEntry]:
    """The part of ``sequence`` from its head's tail to its head, or [] when the tail is absent."""
    if not sequence:
        return []
    for index, entry in enumerate(sequence):
        if entry.position == sequence[-1].tail:
            return list(sequence[index:])
    return []


def load_replay(
    read: object, path: str, log_offset: int, log_length: int, log_guid: bytes, file_size: int
) -> Replay:
    """Read the log region and find what must be replayed; refuse a corrupt log."""
    where = {"path": path, "structure": "log"}
    if log_length == 0 or log_length % S.ALIGNMENT or log_offset % S.ALIGNMENT:
        raise CorruptImage(
            **where,
            problem=f"log at {log_offset:#x}+{log_length:#x} is not MiB-aligned",
            field="LogOffset",
            offset=log_offset,
        )
    if log_offset < S.HEADER_SECTION_SIZE:
        raise CorruptImage(
            **where, problem="log overlaps the header section", field="LogOffset", offset=log_offset
        )
    if log_length > MAX_LOG_BYTES:
        raise Unsupported(what=f"{path}: a live log of {log_length} bytes (limit {MAX_LOG_BYTES})")
    if log_offset + log_length > file_size:
        raise TruncatedImage(
            **where, problem="the file ends inside the log", field="LogLength", offset=log_offset
        )
    data = read(log_offset, log_length)  # type: ignore[operator]
    entries = find_active_sequence(data, log_guid)
    if not entries and not _untorn_entries(_Ring(data), log_guid):
        # qemu-img/qemu-io 7.2 set LogGuid (and flush) before their first entry, and
        # write an entry sector by sector: interrupted there, the log holds no entry
        # or only a torn one (its sectors do not all carry its sequence number, the
        # check 2.3.1 provides for torn writes).  Such an entry was never flushed, so
        # never applied: there is nothing to replay, and qemu opens these files too.
        return Replay(())
    if not entries:
        raise CorruptImage(
            **where,
            problem="the header names a live log (LogGuid set) but the log holds no valid, "
            "complete sequence of entries; refusing to open it",
            field="LogGuid",
            offset=log_offset,
        )
    head = entries[-1]
    if file_size < head.flushed_file_offset:
        raise TruncatedImage(
            **where,
            problem=f"the file is {file_size} bytes but the log says it was at least "
            f"{head.flushed_file_offset} (truncated)",
            field="FlushedFileOffset",
            offset=log_offset + head.position,
        )
    return Replay(tuple(entries))


def _untorn_entries(ring: _Ring, log_guid: bytes) -> list[int]:
    """Positions of entries written with ``log_guid`` that are invalid but not torn."""
    found = []
    for position in range(0, ring.size, S.LOG_SECTOR):
        head = ring.read(position, S.LOG_HEADER_SIZE)
        if head[:4] == b"loge" and head[32:48] == log_guid and not _torn(ring, position):
            found.append(position)
    return found


def _torn(ring: _Ring, position: int) -> bool:
    """Whether a sector of the entry lacks the entry's sequence number (a torn write)."""
    head = S.LogEntryHeader.parse(ring.read(position, S.LOG_HEADER_SIZE))
    count, sequence = head.descriptor_count, head.sequence_number
    length = _descriptor_sectors(count) * S.LOG_SECTOR
    if length > ring.size:
        return False
    raw = ring.read(position, length)
    data_sectors = 0
    for index in range(count):
        at = S.LOG_HEADER_SIZE + index * S.LOG_DESCRIPTOR_SIZE
        desc = raw[at : at + S.LOG_DESCRIPTOR_SIZE]
        if desc[:4] not in (b"zero", b"desc") or int.from_bytes(desc[24:32], "little") != sequence:
            return True
        data_sectors += desc[:4] == b"desc"
    for index in range(min(data_sectors, ring.size // S.LOG_SECTOR)):
        sector = ring.read((position + length + index * S.LOG_SECTOR) % ring.size, S.LOG_SECTOR)
        high, low = int.from_bytes(sector[4:8], "little"), int.from_bytes(sector[-4:], "little")
        if sector[:4] != b"data" or (high << 32 | low) != sequence:
            return True
    return False


def encode_entry(
    *,
    sequence: int,
    tail: int,
    log_guid: bytes,
    writes: Sequence[LogWrite],
    flushed_file_offset: int,
    last_file_offset: int,
) -> bytes:
    """One log entry holding ``writes`` (4 KiB data sectors or zero runs)."""
    count = len(writes)
    data_writes = [w for w in writes if w.data is not None]
    desc_bytes = _descriptor_sectors(count) * S.LOG_SECTOR
    entry = bytearray(desc_bytes + len(data_writes) * S.LOG_SECTOR)
    header = dict(
        checksum=0,
        entry_length=len(entry),
        tail=tail,
        sequence_number=sequence,
        descriptor_count=count,
        reserved=0,
        log_guid=log_guid,
        flushed_file_offset=flushed_file_offset,
        last_file_offset=last_file_offset,
    )
    entry[: S.LOG_HEADER_SIZE] = S.LogEntryHeader.build(header)
    data_at = desc_bytes
    for index, write in enumerate(writes):
        at = S.LOG_HEADER_SIZE + index * S.LOG_DESCRIPTOR_SIZE
        entry[at : at + S.LOG_DESCRIPTOR_SIZE] = _encode_descriptor(write, sequence)
        if write.data is not None:
            entry[data_at : data_at + S.LOG_SECTOR] = S.LogDataSector.build(
                dict(
                    sequence_high=sequence >> 32,
                    data=write.data[8:4092],
                    sequence_low=sequence & 0xFFFFFFFF,
                )
            )
            data_at += S.LOG_SECTOR
    return bytes(S.with_checksum(entry))


def _encode_descriptor(write: LogWrite, sequence: int) -> bytes:
    if write.data is None:
        return S.LogZeroDescriptor.build(
            dict(
                reserved=0,
                zero_length=write.length,
                file_offset=write.offset,
                sequence_number=sequence,
            )
        )
    if len(write.data) != S.LOG_SECTOR:
        raise ValueError("a log data write is exactly one 4 KiB sector")
    return S.LogDataDescriptor.build(
        dict(
            trailing_bytes=write.data[4092:],
            leading_bytes=write.data[:8],
            file_offset=write.offset,
            sequence_number=sequence,
        )
    )
