"""How an NTFS volume was last left: hibernated, journal not clean, or marked for chkdsk.

A volume Windows did not shut down fully still has changes in its cache or journal that the
disk does not show: what an offline reader sees there is not what Windows would see. The
facts read here are those ntfs-3g reads before it mounts a volume read-write (ntfs-3g
2022.10.3, the oracle of the tests):

- ``\\hiberfil.sys`` in the root whose first 4 KiB start with ``hibr`` or ``HIBR``, or that
  is shorter than 4 KiB, means Windows hibernated (Fast Startup hibernates the kernel and
  leaves every fixed volume so); a header of zeros or ``wake`` means it resumed.
- ``$LogFile``: the restart page with the higher LSN is current. Version 2.0 means Windows
  kept metadata cached (Fast Startup, or access cut off by a power loss); a log client in use
  without the clean flag means the journal holds unfinished changes. A journal of 0xFF bytes
  is empty (mkntfs, ntfs-3g and chkdsk leave it so) and clean.
- ``$Volume``'s ``VOLUME_IS_DIRTY`` flag means chkdsk runs at the next boot (ntfsinfo
  refuses such a volume: "Volume is scheduled for check").

ntfs-3g also walks the log client array of a page with a client in use; strata does not, as
such a page is already not clean. References: linux-ntfs ``logfile.h`` (restart page and area
layout), Russon 5.6 ($VOLUME_INFORMATION).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from construct import ConstructError

from strata.errors import NotFound, StrataError
from strata.fs.ntfs import structs as s
from strata.fs.ntfs.volume import NtfsVolume

HIBERFILE = "/hiberfil.sys"
HIBER_HEADER = 4096
HIBER_SIGNATURES = (b"hibr", b"HIBR")  # ntfs-3g takes these two spellings, not "HiBr"
SECTOR = 512
EMPTY_MAGIC = b"\xff\xff\xff\xff"
RESTART_MAGICS = (b"RSTR", b"CHKD")
RECORD_PAGE_MAGIC = b"RCRD"
SUPPORTED_VERSIONS = ((1, 1), (2, 0))
CACHED_VERSION = (2, 0)
LOG_PAGE = 4096  # the journal's first two pages must fit before the record pages
MAX_SYSTEM_PAGE = 65536
MIN_LOG_RECORD_PAGES = 48


class RestartPage(NamedTuple):
    position: int
    magic: str
    version: tuple[int, int]
    lsn: int
    client_in_use: int
    flags: int

    @property
    def clean(self) -> bool:
        if self.version == CACHED_VERSION:
            return False
        in_use = self.magic == "RSTR" and self.client_in_use != s.LOGFILE_NO_CLIENT
        return not in_use or bool(self.flags & s.RESTART_VOLUME_IS_CLEAN)

    def evidence(self) -> dict[str, Any]:
        return {
            "restart_page": self.position,
            "magic": self.magic,
            "version": f"{self.version[0]}.{self.version[1]}",
            "lsn": self.lsn,
            "client_in_use": self.client_in_use,
            "flags": f"{self.flags:#06x}",
        }


class Journal(NamedTuple):
    """``state``: empty, clean, unclean (changes not checkpointed), cached (version 2.0) or
    damaged (neither empty nor holding a consistent restart page)."""

    state: str
    current: RestartPage | None = None
    problem: str = ""

    @property
    def clean(self) -> bool:
        return self.state in ("empty", "clean")

    def evidence(self) -> dict[str, Any]:
        found: dict[str, Any] = {"file": "\\$LogFile", "state": self.state}
        if self.current is not None:
            found.update(self.current.evidence())
        if self.problem:
            found["problem"] = self.problem
        return found


def hibernation(vol: NtfsVolume) -> dict[str, Any] | None:
    """What ``\\hiberfil.sys`` says when it says Windows hibernated, else None."""
    try:
        entry = vol.stat(HIBERFILE)
    except NotFound:
        return None
    if entry.is_dir:
        return None
    head = _first_bytes(vol.iter_file(entry, HIBER_HEADER), HIBER_HEADER)
    if len(head) < HIBER_HEADER:
        return {"file": "\\hiberfil.sys", "size": entry.size, "signature": None}
    if head[:4] in HIBER_SIGNATURES:
        return {"file": "\\hiberfil.sys", "size": entry.size, "signature": head[:4].decode()}
    return None


def journal(vol: NtfsVolume) -> Journal:
    """The state of the volume's ``$LogFile``, from its restart pages."""
    try:
        size = vol.stream(s.LOGFILE_RECORD)[1] & ~(LOG_PAGE - 1)
    except NotFound as e:  # a free $LogFile record, or one without data: no journal to trust
        return Journal("damaged", problem=f"$LogFile has no data ({e.message})")
    if size < (2 + MIN_LOG_RECORD_PAGES) * LOG_PAGE:
        return Journal("damaged", problem=f"$LogFile is too small ({size} bytes)")
    want = 2 * MAX_SYSTEM_PAGE + SECTOR  # both restart pages, whatever the page size
    data = _first_bytes(vol.iter_stream(s.LOGFILE_RECORD, chunk=want), want)
    pages, empty = _restart_pages(data)
    if empty:
        return Journal("empty")
    if not pages:
        return Journal("damaged", problem="$LogFile holds no consistent restart page")
    current = max(pages, key=lambda p: p.lsn)
    if current.version == CACHED_VERSION:
        return Journal("cached", current)
    return Journal("clean" if current.clean else "unclean", current)


def dirty(vol: NtfsVolume) -> int | None:
    """``$Volume``'s flags when they mark the volume for chkdsk, else None."""
    try:
        attrs = vol.attributes(s.VOLUME_RECORD)
    except NotFound as e:  # said as the volume's damage, not as a file the user asked for
        raise vol.corrupt("$Volume", f"no usable record ({e.message})", "MFT record 3") from e
    info = [a for a in attrs if a.type == s.VOLUME_INFORMATION]
    if not info or len(info[0].value) < s.VOLUME_INFO_SIZE:
        raise vol.corrupt("$Volume", "no $VOLUME_INFORMATION value", "$VOLUME_INFORMATION")
    flags = int(s.VOLUME_INFO.parse(info[0].value).flags)
    return flags if flags & s.VOLUME_IS_DIRTY else None


class Unfinished(NamedTuple):
    """For a warning beside other work: what says the volume was not left shut down fully,
    a phrase each, and what could not be read (an error there is not the work's failure)."""

    reasons: list[str]
    unreadable: list[str]


def unfinished(vol: NtfsVolume) -> Unfinished:
    found = Unfinished([], [])
    for probe in (_hibernated_phrase, _journal_phrase, _dirty_phrase):
        try:
            phrase = probe(vol)
        except StrataError as e:
            found.unreadable.append(e.message)
            continue
        if phrase:
            found.reasons.append(phrase)
    return found


def _hibernated_phrase(vol: NtfsVolume) -> str:
    hibernated = hibernation(vol)
    if hibernated is None:
        return ""
    return f"\\hiberfil.sys says Windows hibernated ({hibernated['signature']})"


def _journal_phrase(vol: NtfsVolume) -> str:
    log = journal(vol)
    if log.clean:
        return ""
    return f"the NTFS journal is {log.state}" + (
        f", LSN {log.current.lsn}" if log.current is not None else ""
    )


def _dirty_phrase(vol: NtfsVolume) -> str:
    flags = dirty(vol)
    return "" if flags is None else f"chkdsk is scheduled ($Volume flags {flags:#06x})"


def _first_bytes(chunks: Any, limit: int) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += chunk[: limit - len(out)]
        if len(out) >= limit:
            break
    return bytes(out)


def _restart_pages(data: bytes) -> tuple[list[RestartPage], bool]:
    """The consistent restart pages among the places one may start (offset 0, then every
    power of two from 512), and whether every place looked at was empty."""
    pages: list[RestartPage] = []
    empty = True
    steps = MAX_SYSTEM_PAGE.bit_length() - SECTOR.bit_length() + 1
    for pos in [0, *(SECTOR << k for k in range(steps))]:
        if pos + SECTOR > len(data):
            break
        magic = data[pos : pos + 4]
        if magic != EMPTY_MAGIC:
            empty = False
        elif not empty:
            break
        if magic == RECORD_PAGE_MAGIC:
            break
        if magic not in RESTART_MAGICS:
            continue
        page = _restart_page(data[pos : pos + SECTOR], pos)
        if page is not None:
            pages.append(page)
            if pos:
                break
    return pages, empty


def _restart_page(block: bytes, pos: int) -> RestartPage | None:
    """The restart page in the first sector ``block`` at ``pos``, or None when its header
    or restart area is inconsistent (as ntfs-3g judges it)."""
    try:
        head = s.RESTART_PAGE_HEADER.parse(block)
    except ConstructError:
        return None
    if not _header_consistent(head, pos):
        return None
    ra_at = int(head.restart_area_offset)
    if ra_at + s.RESTART_AREA_SIZE > SECTOR - 2:
        return None
    area = s.RESTART_AREA.parse(block[ra_at:])
    if not _area_consistent(head, area, ra_at):
        return None
    magic = bytes(head.magic).decode()
    lsn = int(area.current_lsn) if magic == "RSTR" else int(head.chkdsk_lsn)
    version = (int(head.major_version), int(head.minor_version))
    return RestartPage(pos, magic, version, lsn, int(area.client_in_use_list), int(area.flags))


def _power_of_two(n: int) -> bool:
    return n >= SECTOR and n & (n - 1) == 0


def _header_consistent(head: Any, pos: int) -> bool:
    page = int(head.system_page_size)
    if not (_power_of_two(page) and _power_of_two(int(head.log_page_size))):
        return False
    if pos not in (0, page):
        return False
    if (int(head.major_version), int(head.minor_version)) not in SUPPORTED_VERSIONS:
        return False
    chkdsk = bytes(head.magic) == b"CHKD"
    usa_end = s.RESTART_PAGE_HEADER_SIZE
    if not (chkdsk and head.usa_count == 0):
        usa_end = head.usa_offset + 2 * head.usa_count
        if head.usa_count != 1 + page // SECTOR:
            return False
        if head.usa_offset < s.RESTART_PAGE_HEADER_SIZE or usa_end > SECTOR - 2:
            return False
    ra_at = int(head.restart_area_offset)
    if ra_at % 8 or ra_at < usa_end or ra_at > page:
        return False
    return chkdsk or head.chkdsk_lsn == 0


def _area_consistent(head: Any, area: Any, ra_at: int) -> bool:
    page = int(head.system_page_size)
    clients = int(area.log_clients)
    ca_at = int(area.client_array_offset)
    if ca_at % 8 or ra_at + ca_at > SECTOR - 2:
        return False
    length = ca_at + clients * s.LOG_CLIENT_RECORD_SIZE
    if ra_at + length > page or ra_at + area.restart_area_length > page:
        return False
    if length > area.restart_area_length:
        return False
    for index in (area.client_free_list, area.client_in_use_list):
        if index != s.LOGFILE_NO_CLIENT and index >= clients:
            return False
    if area.seq_number_bits != 67 - int(area.file_size).bit_length():
        return False
    return area.log_record_header_length % 8 == 0 and area.log_page_data_offset % 8 == 0
