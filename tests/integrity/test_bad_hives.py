"""Hives that are truncated, fail their base-block checksum, are missing or damaged: a failed
check (exit 9, overridable) naming the hive and what is wrong with it (never a traceback); a
disk without a Windows volume: a warning, and the Windows checks skipped. Mutated hives: only
strata errors come out."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from strata.errors import NotReady, StrataError
from strata.integrity.checks import CHECKS, VOLUME_CHECKS
from strata.integrity.gate import DISK_CHECKS
from strata.integrity.hive import Hive, open_hive

from support.integrity_tools import (
    CLEAN_SYSTEM,
    CONFIG,
    build_hive,
    can_mount,
    merged,
    on_ntfs,
    windows_disk,
)
from support.ntfs_tools import make_volume
from support.tools import strata

SYSTEM_NAME = "\\Windows\\System32\\config\\SYSTEM (partition 1)"
SOFTWARE_NAME = "\\Windows\\System32\\config\\SOFTWARE (partition 1)"


@pytest.fixture(scope="module")
def clean_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not can_mount():
        pytest.skip("ntfs-3g FUSE mounts need root")
    return windows_disk(tmp_path_factory.mktemp("bad-hives"))


def _edit_hive(name: str, edit: Callable[[bytes], bytes | None]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / CONFIG / name
        data = edit(path.read_bytes())
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)

    return change


def _bad_checksum(data: bytes) -> bytes:
    return data[:0x0C] + b"\x5a" + data[0x0D:]  # the timestamp, under the checksum


def _bad_hbin(data: bytes) -> bytes:
    return data[:4096] + b"XXXX" + data[4100:]


def _no_select(tmp: Path) -> Callable[[bytes], bytes]:
    spec = {k: v for k, v in CLEAN_SYSTEM.items() if k != "Select"}
    hive = build_hive(tmp / "SYSTEM.noselect", spec)
    return lambda _data: hive.read_bytes()


BAD = [
    ("truncated-bins", "SYSTEM", lambda d: d[:6000], [SYSTEM_NAME, "hive bins end at"]),
    ("truncated-base", "SYSTEM", lambda d: d[:1000], [SYSTEM_NAME, "base block"]),
    ("five-bytes", "SYSTEM", lambda d: d[:5], [SYSTEM_NAME, "the hive is 5 bytes"]),
    ("checksum", "SOFTWARE", _bad_checksum, [SOFTWARE_NAME, "checksum", "0x1fc"]),
    ("missing", "SOFTWARE", lambda d: None, [f"registry hive {SOFTWARE_NAME} is missing"]),
    ("missing-system", "SYSTEM", lambda d: None, [f"registry hive {SYSTEM_NAME} is missing"]),
    ("hbin", "SYSTEM", _bad_hbin, [SYSTEM_NAME, "hivex"]),
    ("no-select", "SYSTEM", None, [SYSTEM_NAME, "Select\\Current"]),
]
NEEDS = {  # the checks that read each hive (pvs-ipv6 only runs with --target pvs)
    "SYSTEM": {"boot-driver-reboot", "post-install-reboot", "ngen-in-progress"},
    "SOFTWARE": {"post-install-reboot", "msi-in-progress", "kms-rearm"},
}


@pytest.mark.parametrize(("tag", "hive", "edit", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_hive_is_a_failed_check_naming_it(
    clean_raw: Path, tmp_path: Path, tag: str, hive: str, edit, words: list[str]
) -> None:
    raw = tmp_path / f"{tag}.raw"
    shutil.copyfile(clean_raw, raw)
    on_ntfs(raw, _edit_hive(hive, edit or _no_select(tmp_path)), tmp_path)
    proc = strata("layer", "check", "--disk", raw, "--json")
    assert proc.returncode == NotReady.exit_code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    (error,) = [e for e in events if e["event"] == "error"]
    (failed,) = [e for e in events if e["event"] == "integrity" and e["status"] == "failed"]
    assert failed["check"] == "registry-hive" and failed["evidence"][0]["hive"] == hive
    assert set(failed["evidence"][0]["checks"]) == NEEDS[hive]
    passed = {e["check"] for e in events if e.get("status") == "passed"}
    assert passed == ({c.id for c in CHECKS if not c.targets} - NEEDS[hive]) | set(DISK_CHECKS)
    for word in words:
        assert word in error["message"] and word in failed["message"], failed["message"]
    text = strata("layer", "check", "--disk", raw)
    assert text.returncode == NotReady.exit_code and text.stderr.startswith("strata: ")


def test_clean_disk_passes_layer_check(clean_raw: Path) -> None:
    proc = strata("layer", "check", "--disk", clean_raw, "--target", "pvs", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["ok"] and result["volumes"] == ["partition 1"] and not result["warnings"]


def test_no_windows_volume_warns_and_skips(tmp_path: Path) -> None:
    if not can_mount():
        pytest.skip("ntfs-3g FUSE mounts need root")

    def populate(root: Path) -> None:
        (root / "data").mkdir()
        (root / "data" / "SMSCFG.INI").write_text("not under \\Windows")

    vol = make_volume(tmp_path / "data.img", "8M", populate)
    proc = strata("layer", "check", "--disk", vol, "--json", "--target", "pvs")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    (warning,) = [e for e in events if e["event"] == "warning"]
    assert "no Windows volume" in warning["message"] and "skipped" in warning["message"]
    # only the whole disk's checks and those of how the (data) volume was left
    expected = [*DISK_CHECKS, *(c.id for c in VOLUME_CHECKS)]
    integrity = [e for e in events if e["event"] == "integrity"]
    assert [(e["check"], e["status"]) for e in integrity] == [(c, "passed") for c in expected]
    assert events[-1]["volumes"] == [] and events[-1]["passed"] == expected
    text = strata("layer", "check", "--disk", vol)
    assert text.returncode == 0 and "strata: warning: no Windows volume" in text.stderr


class _HostView:
    """The checks over hive bytes held in memory (no NTFS): for the mutation test."""

    where = "test"

    def __init__(self, hives: dict[str, bytes], stack) -> None:  # type: ignore[no-untyped-def]
        self._data = hives
        self._stack = stack
        self._open: dict[str, Hive] = {}

    def hive(self, name: str) -> Hive:
        if name not in self._open:
            self._open[name] = self._stack.enter_context(open_hive([self._data[name]], name))
        return self._open[name]

    def exists(self, path: str) -> bool:
        return False

    def hibernation(self) -> None:  # the volume's state is tested on NTFS volumes
        return None

    def journal(self) -> None:
        return None

    def dirty_flags(self) -> None:
        return None

    def control_set(self) -> str:
        from strata.integrity.checks import current_control_set

        return current_control_set(self.hive("SYSTEM"))


def test_mutated_hives_raise_only_strata_errors(tmp_path: Path) -> None:
    from contextlib import ExitStack

    spec = merged(
        CLEAN_SYSTEM,
        {
            "ControlSet002\\Control\\Session Manager": {
                "PendingFileRenameOperations": [
                    "multi_sz",
                    ["\\??\\C:\\a", "", "\\??\\C:\\b", "!c"],
                ]
            }
        },
    )
    system = build_hive(tmp_path / "SYSTEM", spec).read_bytes()
    software = build_hive(tmp_path / "SOFTWARE", {"Microsoft": {}}).read_bytes()
    rng = random.Random(10)
    fds = len(os.listdir("/proc/self/fd"))
    outcomes = {"ok": 0, "error": 0}
    for i in range(2000):
        data = bytearray(system)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data)) if i % 3 else rng.randrange(4096, len(data))
            data[at] = rng.randrange(256)
        if i % 10 == 0:
            data = data[: rng.randrange(len(data))]
        if i % 4 == 1:  # keep the base block valid so hivex, not our precheck, meets the damage
            struct.pack_into("<I", data, 0x1FC, _xor(data))
        try:
            with ExitStack() as stack:
                view = _HostView({"SYSTEM": bytes(data), "SOFTWARE": software}, stack)
                for check in CHECKS:
                    check.run(view)
            outcomes["ok"] += 1
        except StrataError:
            outcomes["error"] += 1
    print(outcomes)
    assert outcomes["ok"] > 0 and outcomes["error"] > 0, outcomes
    assert sum(outcomes.values()) == 2000
    assert len(os.listdir("/proc/self/fd")) == fds  # every copy and hivex handle closed


def _xor(data: bytearray) -> int:
    if len(data) < 4096:
        return 0
    out = 0
    for word in struct.unpack_from("<127I", data):
        out ^= word
    return out


def test_rename_pairs_split_between_driver_and_post_install(tmp_path: Path) -> None:
    from contextlib import ExitStack

    from strata.integrity.checks import boot_driver_reboot, post_install_reboot

    renames = [
        "\\??\\C:\\a.tmp",
        "",
        "\\??\\C:\\new.sys",
        "!\\??\\C:\\WINDOWS\\system32\\DRIVERS\\x.sys",
    ]
    spec = merged(
        CLEAN_SYSTEM,
        {
            "ControlSet002\\Control\\Session Manager": {
                "PendingFileRenameOperations2": ["multi_sz", renames]
            }
        },
    )
    system = build_hive(tmp_path / "SYSTEM", spec).read_bytes()
    software = build_hive(tmp_path / "SOFTWARE", {"Microsoft": {}}).read_bytes()
    with ExitStack() as stack:
        view = _HostView({"SYSTEM": system, "SOFTWARE": software}, stack)
        drivers = boot_driver_reboot(view)
        others = post_install_reboot(view)
    assert [e["data"] for e in drivers] == [renames[2:]]
    assert [e["data"] for e in others] == [renames[:2]]
    assert {e["value"] for e in drivers + others} == {"PendingFileRenameOperations2"}


def _dirty(data: bytes) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, 4, struct.unpack_from("<I", out, 8)[0] + 1)  # sequence1
    struct.pack_into("<I", out, 0x1FC, _xor(out))
    return bytes(out)


def test_dirty_hive_is_read_with_a_warning(clean_raw: Path, tmp_path: Path) -> None:
    raw = tmp_path / "dirty.raw"
    shutil.copyfile(clean_raw, raw)
    on_ntfs(raw, _edit_hive("SYSTEM", _dirty), tmp_path)
    proc = strata("layer", "check", "--disk", raw, "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    (warning,) = [e for e in events if e["event"] == "warning"]
    assert SYSTEM_NAME in warning["message"] and "dirty" in warning["message"]
    assert events[-1]["ok"] and events[-1]["volumes"] == ["partition 1"]


def test_whole_disk_windows_volume(clean_raw: Path, tmp_path: Path) -> None:
    from support.filelevel_tools import extract
    from support.integrity_tools import PART_SIZE, PART_START

    vol = extract(clean_raw, PART_START, PART_SIZE, tmp_path / "whole.img")
    on_ntfs_whole = strata("layer", "check", "--disk", vol, "--target", "pvs", "--json")
    assert on_ntfs_whole.returncode == 0, on_ntfs_whole.stderr
    result = json.loads(on_ntfs_whole.stdout.splitlines()[-1])
    assert result["volumes"] == ["whole disk"]
    assert len(result["passed"]) == len(CHECKS) + len(DISK_CHECKS)
