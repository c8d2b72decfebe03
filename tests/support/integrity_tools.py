"""Windows-like test disks for the finalize integrity gate: SYSTEM and SOFTWARE hives built by
hivexsh (fixtures/hive_build.py) placed with ntfs-3g on an NTFS partition of a GPT disk, and
the "packaging machine" that changes them (ntfs-3g on the packaging disk's raw form)."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.filelevel_tools import back_to_child, extract, to_raw
from support.ntfs_tools import make_volume
from support.tools import require, run

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
PART_START = MiB  # partition 1 at sector 2048
PART_SIZE = 30 * MiB
DISK_SIZE = 32 * MiB
CONFIG = Path("Windows/System32/config")
Spec = dict[str, dict[str, list[Any]]]

_spec = importlib.util.spec_from_file_location("hive_build", ROOT / "fixtures" / "hive_build.py")
assert _spec is not None and _spec.loader is not None
hive_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hive_build)

SM = "Control\\Session Manager"
# ControlSet001 is a stale set left with pending work; Select\Current names ControlSet002.
CLEAN_SYSTEM: Spec = {
    "Select": {"Current": ["dword", 2], "Default": ["dword", 2], "LastKnownGood": ["dword", 1]},
    f"ControlSet001\\{SM}": {
        "PendingFileRenameOperations": ["multi_sz", ["\\??\\C:\\stale.tmp", ""]],
    },
    "ControlSet001\\Services\\clr_optimization_v4.0.30319_64": {"Start": ["dword", 2]},
    f"ControlSet002\\{SM}": {"ProtectionMode": ["dword", 1]},
    "ControlSet002\\Services\\clr_optimization_v4.0.30319_64": {"Start": ["dword", 3]},
    "ControlSet002\\Services\\clr_optimization_v4.0.30319_32": {"Start": ["dword", 4]},
    "ControlSet002\\Services\\Tcpip6\\Parameters": {"DisabledComponents": ["dword", 0xFF]},
    "ControlSet001\\Services\\Netlogon": {"JoinDomain": ["sz", "STALE"]},
    "ControlSet002\\Services\\Netlogon": {"DependOnService": ["multi_sz", ["LanmanWorkstation"]]},
}
CLEAN_SOFTWARE: Spec = {
    "Microsoft\\Windows\\CurrentVersion\\RunOnce": {},
    "Microsoft\\Windows\\CurrentVersion\\Installer": {"InstallerLocation": ["sz", "C:\\x"]},
    "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing": {},
    "Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update": {},
    "Microsoft\\Updates": {"UpdateExeVolatile": ["dword", 0]},  # 0: nothing pending
    "Microsoft\\Windows NT\\CurrentVersion\\SoftwareProtectionPlatform": {
        "SkipRearm": ["dword", 0],
        "KeyManagementServiceName": ["sz", "kms.example.test"],
    },
}


def merged(base: Spec, extra: Spec) -> Spec:
    out = copy.deepcopy(base)
    for key, values in extra.items():
        out.setdefault(key, {}).update(copy.deepcopy(values))
    return out


def build_hive(path: Path, spec: Spec) -> Path:
    require("hivexsh")
    return hive_build.build(path, spec)


def windows_disk(work: Path) -> Path:
    """A 32 MiB GPT raw disk, partition 1 NTFS holding \\Windows\\System32 with clean hives."""
    require("sgdisk")
    system = build_hive(work / "SYSTEM.clean", CLEAN_SYSTEM)
    software = build_hive(work / "SOFTWARE.clean", CLEAN_SOFTWARE)

    def populate(root: Path) -> None:
        (root / CONFIG).mkdir(parents=True)
        (root / "Windows" / "System32" / "drivers").mkdir()
        (root / "Windows" / "System32" / "drivers" / "disk.sys").write_bytes(b"MZ" * 1000)
        shutil.copyfile(system, root / CONFIG / "SYSTEM")
        shutil.copyfile(software, root / CONFIG / "SOFTWARE")

    vol = make_volume(work / "ntfs.vol", str(PART_SIZE), populate)
    disk = work / "windows.raw"
    run(["truncate", "-s", str(DISK_SIZE), disk])
    run(
        [
            require("sgdisk"),
            "-n",
            f"1:{PART_START // 512}:+{PART_SIZE // 1024}K",
            "-t",
            "1:0700",
            disk,
        ]
    )
    put_volume(disk, vol)
    return disk


def put_volume(disk: Path, vol: Path) -> None:
    with open(vol, "rb") as src, open(disk, "r+b") as out:
        out.seek(PART_START)
        shutil.copyfileobj(src, out, 4 * MiB)


def on_ntfs(raw: Path, change: Callable[[Path], None], work: Path) -> None:
    """Run ``change(mount root)`` on partition 1 of ``raw`` through a read-write ntfs-3g mount."""
    vol = extract(raw, PART_START, PART_SIZE, work / f"{raw.stem}.vol")
    with tempfile.TemporaryDirectory(prefix="ntfs-pkg-") as mnt:
        run([require("ntfs-3g"), vol, mnt])
        try:
            change(Path(mnt))
        finally:
            run(["umount", mnt])
    put_volume(raw, vol)
    vol.unlink()


def package_machine(pkg: dict[str, Any], work: Path, change: Callable[[Path], None]) -> Path:
    """What a packaging machine did: ``change`` applied to the packaging disk's NTFS volume;
    the disk becomes a child of its recorded base again. Returns the raw form."""
    raw = to_raw(pkg, work / f"{Path(pkg['disk_path']).stem}.raw")
    on_ntfs(raw, change, work)
    back_to_child(pkg, raw)
    return raw


def replace_hive(name: str, hive: Path) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        shutil.copyfile(hive, root / CONFIG / name)

    return change


def hivexget(hive: Path, key: str, value: str | None = None) -> str:
    args = [require("hivexget"), hive, key] + ([value] if value is not None else [])
    return run(args).stdout


def read_from_disk(raw: Path, rel: str, dest: Path, work: Path) -> Path:
    """``rel`` copied out of partition 1 of ``raw`` through a read-only ntfs-3g mount."""
    vol = extract(raw, PART_START, PART_SIZE, work / "oracle.vol")
    with tempfile.TemporaryDirectory(prefix="ntfs-oracle-") as mnt:
        run([require("ntfs-3g"), "-o", "ro", vol, mnt])
        try:
            shutil.copyfile(Path(mnt) / rel, dest)
        finally:
            run(["umount", mnt])
    os.unlink(vol)
    return dest


def can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["test", "-e", "/dev/fuse"]).returncode == 0
