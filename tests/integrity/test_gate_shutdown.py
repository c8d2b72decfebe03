"""The finalize gate on packaging disks whose machine did not shut down fully: Windows
hibernated (``hiberfil.sys``), the NTFS journal left unclean, the volume marked for chkdsk.
ntfs-3g (told not to recover) and ntfsinfo judge the same volumes, read out of the disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from strata.errors import NotReady
from strata.integrity.checks import MESSAGES
from strata.ops import layers

from support.filelevel_tools import back_to_child, extract, package, to_raw
from support.integrity_tools import PART_SIZE, PART_START, can_mount, on_ntfs, windows_disk
from support.layers import finalize_args
from support.ntfs_shutdown import (
    blkid_type,
    encrypt_signature,
    ntfs3g_mount_mode,
    ntfsinfo_refusal,
    restart_page,
    set_dirty,
    write_hiberfile,
    write_journal,
)
from support.ntfs_tools import make_volume
from support.tools import run, strata

pytestmark = pytest.mark.skipif(not can_mount(), reason="ntfs-3g FUSE mounts need root")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shutdown-gate")
    store = root / "store"
    layers.import_os("win", "1", str(windows_disk(root)), store=store)
    return root, store


def _installed(root: Path) -> None:
    app = root / "Program Files" / "App"
    app.mkdir(parents=True)
    (app / "app.exe").write_bytes(b"MZ" + bytes(range(256)) * 64)


def _machine(
    world: tuple[Path, Path],
    name: str,
    change: Callable[[Path], None],
    after: Callable[[Path], None] = lambda raw: None,
) -> tuple[dict, Path]:
    """A packaging disk on which the machine installed an app, then did ``change`` (through
    ntfs-3g) and left the volume as ``after`` does to the raw disk; and the volume, as an
    image of its own, for the oracles."""
    root, store = world
    work = root / name
    work.mkdir()
    pkg = package(store, f"app-{name}", work / "out")
    raw = to_raw(pkg, work / "disk.raw")

    def both(mnt: Path) -> None:
        _installed(mnt)
        change(mnt)

    on_ntfs(raw, both, work)
    after(raw)
    back_to_child(pkg, raw)
    return pkg, extract(raw, PART_START, PART_SIZE, work / "partition1.vol")


def _refused(world: tuple[Path, Path], pkg: dict, check: str) -> list[dict]:
    with pytest.raises(NotReady) as info:
        layers.finalize(pkg["disk_path"], pkg["layer"], pkg["version"], store=world[1])
    findings = info.value.fields["findings"]
    assert [f["check"] for f in findings] == [check]
    assert findings[0]["message"] == MESSAGES[check]
    with layers.open_store(world[1]) as st:  # refused before capture: still packaging
        assert st.catalog.version(pkg["layer"], pkg["version"])["state"] == "packaging"
    return findings[0]["evidence"]


def test_hibernated_machine_is_refused_then_forced(world: tuple[Path, Path]) -> None:
    pkg, vol = _machine(world, "hibernated", lambda r: write_hiberfile(r, b"HIBR" + bytes(8188)))
    evidence = _refused(world, pkg, "unclean-shutdown")
    assert evidence == [
        {"file": "\\hiberfil.sys", "size": 8192, "signature": "HIBR", "partition": "partition 1"}
    ]
    mode, said = ntfs3g_mount_mode(vol, world[0])
    assert mode == "ro" and "hibernated" in said

    args = finalize_args(pkg, world[1])
    text = strata(*args)
    assert text.returncode == 9 and MESSAGES["unclean-shutdown"] in text.stderr
    reason = "hiberfil.sys is left over from a template; Windows was shut down (ticket 7)"
    forced = strata(*args, "--force", "--reason", reason, "--json")
    assert forced.returncode == 0, forced.stderr
    result = json.loads(forced.stdout.splitlines()[-1])
    assert result["state"] == "deployable" and result["integrity"]["forced"]


def test_unclean_journal_is_refused(world: tuple[Path, Path]) -> None:
    def unclean(raw: Path) -> None:
        pages = restart_page(lsn=7000), restart_page(lsn=6000, flags=2)
        write_journal(raw, *pages, start=PART_START)

    pkg, vol = _machine(world, "unclean", lambda r: None, unclean)
    (evidence,) = _refused(world, pkg, "unclean-shutdown")
    assert evidence["file"] == "\\$LogFile" and evidence["state"] == "unclean"
    assert evidence["lsn"] == 7000 and evidence["client_in_use"] == 0
    assert evidence["version"] == "1.1" and evidence["flags"] == "0x0000"
    mode, said = ntfs3g_mount_mode(vol, world[0])
    assert mode == "ro" and "unclean file system" in said


def test_volume_marked_for_chkdsk_is_refused(world: tuple[Path, Path]) -> None:
    pkg, vol = _machine(world, "dirty", lambda r: None, lambda raw: set_dirty(raw, PART_START))
    evidence = _refused(world, pkg, "chkdsk-scheduled")
    assert evidence == [
        {
            "file": "\\$Volume",
            "attribute": "$VOLUME_INFORMATION",
            "flags": "0x0001",
            "partition": "partition 1",
        }
    ]
    refusal = ntfsinfo_refusal(vol)
    assert refusal is not None and "scheduled for check" in refusal


def test_os_import_warns_of_a_hibernated_windows(world: tuple[Path, Path]) -> None:
    """Imported all the same, with a warning naming the volume and why; a clean one, none."""
    root, store = world
    work = root / "import"
    work.mkdir()
    gold = windows_disk(work)
    clean = strata("os", "import", "gold", gold, "--version", "1", "--store", store, "--json")
    assert clean.returncode == 0, clean.stderr
    events = [json.loads(line) for line in clean.stdout.splitlines()]
    assert not [e for e in events if e["event"] == "warning"]
    assert events[-1]["warnings"] == []

    on_ntfs(gold, lambda r: write_hiberfile(r, b"HIBR" + bytes(8188)), work)
    text = strata("os", "import", "gold", gold, "--version", "2", "--store", store)
    assert text.returncode == 0, text.stderr
    (warning,) = [line for line in text.stderr.splitlines() if "warning" in line]
    assert warning.startswith("strata: warning: partition 1: Windows did not shut down fully")
    assert "hiberfil.sys says Windows hibernated (HIBR)" in warning
    mode, said = ntfs3g_mount_mode(extract(gold, PART_START, PART_SIZE, work / "p1.vol"), work)
    assert mode == "ro" and "hibernated" in said


def test_bitlocker_volume_is_refused_and_warned_of_at_import(world: tuple[Path, Path]) -> None:
    """A packaging machine that turned BitLocker on: finalize refuses the disk (the Windows
    checks cannot read the volume: skipped, with the warning); blkid calls it BitLocker."""
    pkg, vol = _machine(
        world, "bitlocker", lambda r: None, lambda raw: encrypt_signature(raw, PART_START)
    )
    assert blkid_type(vol) == "BitLocker"
    with pytest.raises(NotReady) as info:
        layers.finalize(pkg["disk_path"], pkg["layer"], pkg["version"], store=world[1])
    (finding,) = info.value.fields["findings"]
    assert finding["check"] == "encrypted-volume"
    assert finding["evidence"] == [{"partition": "partition 1", "boot_sector": "-FVE-FS-"}]
    assert "manage-bde -off" in finding["message"]
    check = strata("layer", "check", "--disk", pkg["disk_path"], "--json")
    assert check.returncode == 9
    events = [json.loads(line) for line in check.stdout.splitlines()]
    assert any(e["event"] == "warning" and "no Windows volume" in e["message"] for e in events)

    root, store = world
    gold = windows_disk(root / "bitlocker")
    encrypt_signature(gold, PART_START)
    text = strata("os", "import", "locked", gold, "--version", "1", "--store", store)
    assert text.returncode == 0, text.stderr
    assert "strata: warning: partition 1: the volume is BitLocker-encrypted" in text.stderr


def test_data_volume_left_unclean_is_refused_too(world: tuple[Path, Path]) -> None:
    """Fast Startup leaves every fixed volume hibernated: a data volume (no Windows on it)
    with an unclean journal fails the same check, named by its partition."""
    work = world[0] / "data-volume"
    work.mkdir()
    data = make_volume(work / "data.vol", "16M", _installed)
    write_journal(data, restart_page(lsn=900), restart_page(lsn=800))
    windows = extract(windows_disk(work), PART_START, PART_SIZE, work / "windows.vol")
    disk = work / "two.raw"
    second = PART_START + PART_SIZE
    run(["truncate", "-s", str(second + 17 * 2**20), disk])
    run(["sgdisk", "-n", f"1:{PART_START // 512}:+{PART_SIZE // 1024}K", disk])
    run(["sgdisk", "-n", f"2:{second // 512}:+16M", disk])
    with open(disk, "r+b") as f:
        for start, vol in ((PART_START, windows), (second, data)):
            f.seek(start)
            f.write(vol.read_bytes())
    proc = strata("layer", "check", "--disk", disk, "--json")
    assert proc.returncode == 9, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    failed = [e for e in events if e["event"] == "integrity" and e["status"] == "failed"]
    assert [(e["check"], e["where"]) for e in failed] == [("unclean-shutdown", "partition 2")]
    assert failed[0]["evidence"][0]["state"] == "unclean"
    passed = {e["check"] for e in events if e.get("status") == "passed"}
    assert "msi-in-progress" in passed  # the Windows volume's hive checks ran too
    mode, said = ntfs3g_mount_mode(data, work)
    assert mode == "ro" and "unclean file system" in said


def test_os_import_of_a_volume_strata_cannot_read_still_imports(world: tuple[Path, Path]) -> None:
    """The warning's probe never fails the import: an NTFS boot sector with a bad sector
    size (a block-level import needs no file system) imports, with the problem named."""
    root, store = world
    work = root / "bad-boot"
    work.mkdir()
    gold = windows_disk(work)
    with open(gold, "r+b") as f:
        f.seek(PART_START + 11)  # bytes per sector
        f.write((3).to_bytes(2, "little"))
    proc = strata("os", "import", "odd", gold, "--version", "1", "--store", store)
    assert proc.returncode == 0, proc.stderr
    (warning,) = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert "partition 1: how Windows left the volume could not be read (" in warning
