"""How an NTFS volume was left (``strata.fs.ntfs.shutdown``), judged beside ntfs-3g and ntfsinfo:
strata calls a journal or a hibernation file clean exactly when ntfs-3g, told not to recover
(``-o norecover``), mounts the volume read-write; it calls a volume marked for chkdsk exactly
when ntfsinfo refuses it as "scheduled for check"."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from strata.blockdev import RawFileDevice
from strata.errors import CorruptImage
from strata.fs.ntfs import NtfsVolume, shutdown
from strata.fs.ntfs import structs as s

from support.ntfs_shutdown import (
    free_record,
    ntfs3g_mount_mode,
    ntfsinfo_refusal,
    restart_page,
    set_dirty,
    write_hiberfile,
    write_journal,
)
from support.ntfs_tools import make_volume
from support.tools import require, result_of, strata

pytestmark = pytest.mark.skipif(
    not Path("/dev/fuse").exists(), reason="the ntfs-3g oracle mounts through FUSE (/dev/fuse)"
)

CLEAN = s.RESTART_VOLUME_IS_CLEAN
NONE = s.LOGFILE_NO_CLIENT

# name: (first page, second page) or None (as mkntfs and ntfs-3g leave it), strata's state,
# and what ntfs-3g says when it is not clean
JOURNALS = {
    "empty": (None, "empty", ""),
    "clean": (
        (restart_page(lsn=100, flags=CLEAN), restart_page(lsn=90, flags=CLEAN)),
        "clean",
        "",
    ),
    "no-client-in-use": (
        (restart_page(lsn=100, in_use=NONE), restart_page(lsn=90, in_use=NONE)),
        "clean",
        "",
    ),
    "unclean": (
        (restart_page(lsn=100), restart_page(lsn=90)),
        "unclean",
        "unclean file system",
    ),
    "second-page-current-and-unclean": (
        (restart_page(lsn=90, flags=CLEAN), restart_page(lsn=100)),
        "unclean",
        "unclean file system",
    ),
    "older-page-unclean": (
        (restart_page(lsn=100, flags=CLEAN), restart_page(lsn=90)),
        "clean",
        "",
    ),
    "fast-startup": (
        (
            restart_page(lsn=100, flags=CLEAN, version=(2, 0)),
            restart_page(lsn=90, flags=CLEAN, version=(2, 0)),
        ),
        "cached",
        "Metadata kept in Windows cache",
    ),
    "older-page-fast-startup": (
        (restart_page(lsn=100, flags=CLEAN), restart_page(lsn=90, version=(2, 0))),
        "clean",
        "",
    ),
    "bad-update-sequence-count": (
        (restart_page(lsn=100, usa_count=3), restart_page(lsn=90, usa_count=3)),
        "damaged",
        "inconsistent update sequence array count",
    ),
    "unknown-version": (
        (restart_page(lsn=100, version=(1, 2)), restart_page(lsn=90, version=(1, 2))),
        "damaged",
        "version 1.2 is not supported",
    ),
}

HIBERFILES = {
    "HIBR": (b"HIBR" + bytes(8188), True),
    "hibr": (b"hibr" + bytes(8188), True),
    "mixed-case": (b"HiBr" + bytes(8188), False),  # ntfs-3g knows two spellings only
    "resumed-wake": (b"wake" + bytes(8188), False),
    "resumed-zeros": (bytes(8192), False),
    "shorter-than-a-header": (b"HIBR" + bytes(96), True),
    "none": (None, False),
}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("ntfsinfo")
    return make_volume(tmp_path_factory.mktemp("shutdown") / "fresh.img", "16M", lambda r: None)


def _copy(fresh: Path, tmp_path: Path, name: str) -> Path:
    image = tmp_path / f"{name}.img"
    shutil.copyfile(fresh, image)
    return image


def _open(image: Path) -> tuple[RawFileDevice, NtfsVolume]:
    dev = RawFileDevice(str(image))
    return dev, NtfsVolume(dev)


@pytest.mark.parametrize("name", JOURNALS)
def test_journal_state_agrees_with_ntfs3g(fresh: Path, tmp_path: Path, name: str) -> None:
    pages, state, ntfs3g_says = JOURNALS[name]
    image = _copy(fresh, tmp_path, name)
    if pages is not None:
        write_journal(image, *pages)
    dev, vol = _open(image)
    with dev:
        found = shutdown.journal(vol)
    assert found.state == state
    mode, said = ntfs3g_mount_mode(image, tmp_path)
    assert (mode == "rw") == found.clean, said
    assert ntfs3g_says in said
    if found.current is not None:
        assert found.current.lsn == 100
        assert found.evidence()["version"] in ("1.1", "2.0")


@pytest.mark.parametrize("name", HIBERFILES)
def test_hibernation_agrees_with_ntfs3g(fresh: Path, tmp_path: Path, name: str) -> None:
    header, hibernated = HIBERFILES[name]
    image = tmp_path / f"{name}.img"
    if header is None:
        shutil.copyfile(fresh, image)
    else:
        make_volume(image, "16M", lambda root: write_hiberfile(root, header))
    dev, vol = _open(image)
    with dev:
        found = shutdown.hibernation(vol)
    assert (found is not None) == hibernated
    if found is not None:
        assert found["file"] == "\\hiberfil.sys" and found["size"] == len(header)
    mode, said = ntfs3g_mount_mode(image, tmp_path)
    assert (mode == "ro") == hibernated, said
    assert ("hibernated" in said.lower()) == hibernated


def test_dirty_flag_agrees_with_ntfsinfo(fresh: Path, tmp_path: Path) -> None:
    image = _copy(fresh, tmp_path, "dirty")
    dev, vol = _open(image)
    with dev:
        assert shutdown.dirty(vol) is None
    assert ntfsinfo_refusal(image) is None
    set_dirty(image)
    dev, vol = _open(image)
    with dev:
        flags = shutdown.dirty(vol)
    assert flags is not None and flags & s.VOLUME_IS_DIRTY
    refusal = ntfsinfo_refusal(image)
    assert refusal is not None and "scheduled for check" in refusal


def test_hostile_restart_pages_give_a_state_never_an_error() -> None:
    """2 000 journals with random bytes changed in the first sector of one or both restart
    pages: every one is judged (a current page, or none consistent), none raises."""
    rng = random.Random(7)
    good = restart_page(lsn=100) + restart_page(lsn=90)
    seen: dict[str, int] = {}
    for i in range(2000):
        data = bytearray(good)
        for page in (0, 4096) if i % 2 else (4096,):
            for _ in range(rng.randint(1, 6)):
                data[page + rng.randrange(0x60)] = rng.randrange(256)
        pages, empty = shutdown._restart_pages(bytes(data))
        assert not empty
        kind = "none" if not pages else max(pages, key=lambda p: p.lsn).magic
        seen[kind] = seen.get(kind, 0) + 1
    assert seen.get("none", 0) > 0 and seen.get("RSTR", 0) > 0, seen


def test_a_free_logfile_record_is_a_damaged_journal(fresh: Path, tmp_path: Path) -> None:
    """$LogFile's record marked free (as a hostile tool could): strata names the journal
    damaged instead of failing on the missing record; ntfs-3g mounts it read-only only."""
    image = _copy(fresh, tmp_path, "free-logfile")
    free_record(image, s.LOGFILE_RECORD)
    dev, vol = _open(image)
    with dev:
        found = shutdown.journal(vol)
    assert found.state == "damaged" and "no data" in found.problem
    mode, said = ntfs3g_mount_mode(image, tmp_path)
    assert mode == "ro" and "FILE_LogFile" in said, said


def test_fs_ls_warns_of_a_volume_windows_left_hibernated(fresh: Path, tmp_path: Path) -> None:
    """``fs ls`` still lists it, with a warning naming why it may be stale; none when clean."""
    clean = strata("fs", "ls", fresh, "--json")
    assert clean.returncode == 0, clean.stderr
    assert not [e for e in map(json.loads, clean.stdout.splitlines()) if e["event"] == "warning"]
    image = tmp_path / "hibernated.img"
    make_volume(image, "16M", lambda root: write_hiberfile(root, b"HIBR" + bytes(8188)))
    proc = strata("fs", "ls", image, "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    (warning,) = [e for e in events if e["event"] == "warning"]
    assert warning["kind"] == "UncleanShutdown"
    assert "hiberfil.sys says Windows hibernated (HIBR)" in warning["message"]
    assert "/hiberfil.sys" in [e["path"] for e in result_of(events)["entries"]]
    text = strata("fs", "ls", image)
    assert "strata: warning: Windows did not shut down this volume fully" in text.stderr


def test_a_state_that_cannot_be_read_is_a_warning_beside_a_listing(
    fresh: Path, tmp_path: Path
) -> None:
    """$Volume's record marked free: ``fs ls`` still lists the volume and says the state
    could not be read, rather than failing where it listed before."""
    image = _copy(fresh, tmp_path, "free-volume")
    free_record(image, s.VOLUME_RECORD)
    proc = strata("fs", "ls", image, "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    (warning,) = [e for e in events if e["event"] == "warning"]
    assert "how Windows left this volume could not be read" in warning["message"]
    assert "record 3" in warning["message"]


def test_a_free_volume_record_is_named_as_damage(fresh: Path, tmp_path: Path) -> None:
    """The gate reads ``$Volume``'s flags: a free record there is a CorruptImage naming
    ``$Volume`` (finalize exit 5), not a 'not found' the user cannot place."""
    image = _copy(fresh, tmp_path, "free-volume-record")
    free_record(image, s.VOLUME_RECORD)
    dev, vol = _open(image)
    with dev, pytest.raises(CorruptImage, match=r"\$Volume"):
        shutdown.dirty(vol)
