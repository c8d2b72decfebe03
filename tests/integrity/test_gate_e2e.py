"""Issue 10 acceptance: the finalize integrity gate on packaging disks whose "packaging machine"
(ntfs-3g on the disk's raw form) left each kind of unfinished work. Hives are built by hivexsh;
hivexget reads back, from the disk through an ntfs-3g mount, every value strata reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strata.errors import NotReady
from strata.integrity.checks import CHECKS, MESSAGES
from strata.integrity.gate import DISK_CHECKS
from strata.ops import layers

from support.filelevel_tools import package
from support.integrity_tools import (
    CLEAN_SOFTWARE,
    CLEAN_SYSTEM,
    CONFIG,
    SM,
    build_hive,
    can_mount,
    hivexget,
    merged,
    package_machine,
    read_from_disk,
    replace_hive,
    windows_disk,
)
from support.layers import finalize_args
from support.tools import strata

pytestmark = pytest.mark.skipif(not can_mount(), reason="ntfs-3g FUSE mounts need root")

CS = "ControlSet002"
DRIVER_RENAME = [
    "\\??\\C:\\Windows\\System32\\drivers\\disk.sys.new",
    "!\\??\\C:\\Windows\\System32\\drivers\\disk.sys",
]


@dataclass(frozen=True)
class Case:
    check: str
    hive: str | None  # SYSTEM / SOFTWARE replaced, or None for a file change
    spec: dict[str, Any]
    target: str | None = None


CASES = [
    Case(
        "boot-driver-reboot",
        "SYSTEM",
        {f"{CS}\\{SM}": {"PendingFileRenameOperations": ["multi_sz", DRIVER_RENAME]}},
    ),
    Case(
        "post-install-reboot",
        "SOFTWARE",
        {
            "Microsoft\\Windows\\CurrentVersion\\RunOnce": {
                "FinishSetup": ["sz", "C:\\Program Files\\App\\finish.exe /quiet"]
            },
            "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\RebootPending": {},
        },
    ),
    Case(
        "msi-in-progress",
        "SOFTWARE",
        {
            "Microsoft\\Windows\\CurrentVersion\\Installer\\InProgress": {
                "Logfile": ["sz", "C:\\Windows\\Temp\\MSI1234.LOG"]
            }
        },
    ),
    Case(
        "ngen-in-progress",
        "SYSTEM",
        {f"{CS}\\Services\\clr_optimization_v4.0.30319_64": {"Start": ["dword", 2]}},
    ),
    Case("sccm-client-state", None, {}),
    Case(
        "kms-rearm",
        "SOFTWARE",
        {
            "Microsoft\\Windows NT\\CurrentVersion\\SoftwareProtectionPlatform": {
                "SkipRearm": ["dword", 1]
            }
        },
    ),
    Case(
        "pvs-ipv6",
        "SYSTEM",
        {f"{CS}\\Services\\Tcpip6\\Parameters": {"DisabledComponents": ["dword", 0x20]}},
        target="pvs",
    ),
]


@dataclass(frozen=True)
class World:
    root: Path
    store: Path
    os_raw: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("integrity")
    os_raw = windows_disk(root)
    store = root / "store"
    layers.import_os("win", "1", str(os_raw), store=store)
    return World(root, store, os_raw)


def _change(case: Case, work: Path) -> Callable[[Path], None]:
    if case.hive is None:

        def smscfg(root: Path) -> None:
            (root / "Windows" / "SMSCFG.INI").write_text(
                "[Configuration - Client Properties]\r\nSMS Unique Identifier=GUID:1234\r\n"
            )

        return smscfg
    base = CLEAN_SYSTEM if case.hive == "SYSTEM" else CLEAN_SOFTWARE
    hive = build_hive(work / f"{case.hive}.{case.check}", merged(base, case.spec))
    return replace_hive(case.hive, hive)


def _app_install(root: Path) -> None:
    app = root / "Program Files" / "App"
    app.mkdir(parents=True)
    (app / "app.exe").write_bytes(b"MZ" + bytes(range(256)) * 64)


def _tripped(world: World, case: Case, tag: str = "") -> tuple[dict[str, Any], Path]:
    work = world.root / f"{case.check}{tag}"
    work.mkdir()
    pkg = package(world.store, f"app-{case.check}{tag}", work / "out")

    def both(root: Path) -> None:
        _app_install(root)
        _change(case, work)(root)

    raw = package_machine(pkg, work, both)
    return pkg, raw


def _check_with_hivexget(world: World, raw: Path, evidence: dict[str, Any], work: Path) -> None:
    """The value strata reports, read by hivexget from the hive on the disk."""
    hive = read_from_disk(raw, str(CONFIG / evidence["hive"]), work / "oracle.hive", world.root)
    if "value" not in evidence:
        listed = hivexget(hive, evidence["key"])  # fails when the key is absent
        for name, data in evidence["values"].items():
            assert f'"{name}"' in listed and str(data).replace("\\", "\\\\") in listed
        return
    out = hivexget(hive, evidence["key"], evidence["value"]).rstrip("\n")
    data = evidence["data"]
    if isinstance(data, int):
        assert int(out) == data
    elif isinstance(data, list):
        lines = out.splitlines()
        assert all(s in lines for s in data if s), (lines, data)
    else:
        assert out == data


@pytest.mark.parametrize("case", CASES, ids=[c.check for c in CASES])
def test_each_check_trips_alone(world: World, case: Case) -> None:
    pkg, raw = _tripped(world, case)
    with pytest.raises(NotReady) as info:
        layers.finalize(
            pkg["disk_path"], pkg["layer"], pkg["version"], store=world.store, target=case.target
        )
    err = info.value
    assert err.exit_code == 9
    findings = err.fields["findings"]
    assert [f["check"] for f in findings] == [case.check]
    assert findings[0]["message"] == MESSAGES[case.check]
    assert MESSAGES[case.check] in str(err)
    evidence = findings[0]["evidence"]
    assert evidence and all(e["partition"] == "partition 1" for e in evidence)
    if case.hive is None:
        assert evidence == [{"file": "\\Windows\\SMSCFG.INI", "partition": "partition 1"}]
    else:
        assert {e["hive"] for e in evidence} == {case.hive}
        assert all(e["key"].startswith(CS) or case.hive == "SOFTWARE" for e in evidence)
        for item in evidence:
            _check_with_hivexget(world, raw, item, world.root / case.check)
    with layers.open_store(world.store) as st:  # refused before capture: still packaging
        assert st.catalog.version(pkg["layer"], pkg["version"])["state"] == "packaging"


CBS = "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing"
WU = "Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update"
# Further post-installation reboot markers: (tag, hive or None for pending.xml, spec, the
# evidence's keys (and value names) in order).
REBOOT_MARKERS = [
    (
        "servicing",
        "SOFTWARE",
        {
            f"{CBS}\\RebootInProgress": {},
            f"{CBS}\\PackagesPending": {"Package_1": ["dword", 1]},
            f"{WU}\\PostRebootReporting": {},
            "Microsoft\\ServerManager\\CurrentRebootAttempts": {},
            "Microsoft\\Updates": {"UpdateExeVolatile": ["dword", 1]},
        },
        [
            f"{CBS}\\RebootInProgress",
            f"{CBS}\\PackagesPending",
            f"{WU}\\PostRebootReporting",
            "Microsoft\\ServerManager\\CurrentRebootAttempts",
            "Microsoft\\Updates UpdateExeVolatile",
        ],
    ),
    (
        "domain-join",
        "SYSTEM",
        {f"{CS}\\Services\\Netlogon": {"JoinDomain": ["sz", "CORP"], "AvoidSpnSet": ["dword", 1]}},
        [f"{CS}\\Services\\Netlogon JoinDomain", f"{CS}\\Services\\Netlogon AvoidSpnSet"],
    ),
    ("pending-xml", None, {}, ["\\Windows\\WinSxS\\pending.xml"]),
]


@pytest.mark.parametrize(
    ("tag", "hive", "spec", "where"), REBOOT_MARKERS, ids=[m[0] for m in REBOOT_MARKERS]
)
def test_more_post_install_reboot_markers(
    world: World, tag: str, hive: str | None, spec: dict[str, Any], where: list[str]
) -> None:
    """Each marker the common pending-reboot scripts read trips post-install-reboot alone,
    its evidence read back by hivexget; the clean hives hold the same keys with nothing
    pending (UpdateExeVolatile 0, a stale JoinDomain in the old control set)."""
    work = world.root / f"reboot-{tag}"
    work.mkdir()
    pkg = package(world.store, f"app-reboot-{tag}", work / "out")

    def change(root: Path) -> None:
        _app_install(root)
        if hive is None:
            (root / "Windows" / "WinSxS").mkdir()
            (root / "Windows" / "WinSxS" / "pending.xml").write_text("<PendingTransaction/>")
            return
        clean = CLEAN_SYSTEM if hive == "SYSTEM" else CLEAN_SOFTWARE
        replace_hive(hive, build_hive(work / hive, merged(clean, spec)))(root)

    raw = package_machine(pkg, work, change)
    with pytest.raises(NotReady) as info:
        layers.finalize(pkg["disk_path"], pkg["layer"], pkg["version"], store=world.store)
    (finding,) = info.value.fields["findings"]
    assert finding["check"] == "post-install-reboot"
    shown = [
        " ".join(filter(None, (e["key"], e.get("value")))) if "key" in e else e["file"]
        for e in finding["evidence"]
    ]
    assert shown == where
    for item in finding["evidence"]:
        if "key" in item:
            _check_with_hivexget(world, raw, item, work)


def test_expected_evidence_values(world: World) -> None:
    """The driver rename, the stale control set ignored, the PVS value as set."""
    case = CASES[0]
    pkg, _ = _tripped(world, case, "-values")
    with pytest.raises(NotReady) as info:
        layers.finalize(pkg["disk_path"], pkg["layer"], pkg["version"], store=world.store)
    (finding,) = info.value.fields["findings"]
    assert finding["evidence"] == [
        {
            "hive": "SYSTEM",
            "file": "\\Windows\\System32\\config\\SYSTEM",
            "key": f"{CS}\\{SM}",
            "value": "PendingFileRenameOperations",
            "data": DRIVER_RENAME,
            "partition": "partition 1",
        }
    ]


def test_clean_disk_finalizes(world: World) -> None:
    work = world.root / "clean"
    work.mkdir()
    pkg = package(world.store, "app-clean", work / "out")
    package_machine(pkg, work, _app_install)
    result = layers.finalize(
        pkg["disk_path"], pkg["layer"], pkg["version"], store=world.store, target="pvs"
    )
    assert result["state"] == "deployable"
    gate = result["integrity"]
    assert gate["ok"] and not gate["forced"] and gate["volumes"] == ["partition 1"]
    assert sorted(gate["passed"]) == sorted([c.id for c in CHECKS] + list(DISK_CHECKS))
    assert result["changed_blocks"] > 0


def test_cli_json_events_exit_9_then_force(world: World) -> None:
    case = next(c for c in CASES if c.check == "kms-rearm")
    pkg, _ = _tripped(world, case, "-cli")
    args = finalize_args(pkg, world.store)
    proc = strata(*args, "--json")
    assert proc.returncode == 9, proc.stderr
    assert "Traceback" not in proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    failed = [e for e in events if e["event"] == "integrity" and e["status"] == "failed"]
    assert [e["check"] for e in failed] == ["kms-rearm"]
    assert failed[0]["evidence"][0]["value"] == "SkipRearm"
    assert failed[0]["evidence"][0]["data"] == 1
    kinds = [e["event"] for e in events]
    assert kinds.index("integrity") < kinds.index("error")
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 9

    text = strata(*args)
    assert text.returncode == 9
    assert MESSAGES["kms-rearm"] in text.stderr
    assert "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\SoftwareProtectionPlatform" in (
        text.stderr
    )

    assert strata(*args, "--force").returncode == 3  # --force needs --reason
    reason = "KMS rearm handled by the golden image team (ticket 42)"
    forced = strata(*args, "--force", "--reason", reason, "--json")
    assert forced.returncode == 0, forced.stderr
    result = [json.loads(x) for x in forced.stdout.splitlines()][-1]
    assert result["state"] == "deployable" and result["integrity"]["forced"]
    history = strata("layer", "history", pkg["layer"], "--store", world.store)
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    override = [line for line in lines if "integrity-override" in line]
    assert len(override) == 1 and reason in override[0]
    refused = [line for line in lines if "integrity-check" in line and "failed" in line]
    assert len(refused) == 2  # the --json and the text refusal


def test_layer_check_alone(world: World) -> None:
    case = next(c for c in CASES if c.check == "pvs-ipv6")
    pkg, _ = _tripped(world, case, "-check")
    without = strata("layer", "check", "--disk", pkg["disk_path"])
    assert without.returncode == 0, without.stderr
    proc = strata("layer", "check", "--disk", pkg["disk_path"], "--target", "pvs", "--json")
    assert proc.returncode == 9
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    (failed,) = [e for e in events if e["event"] == "integrity" and e["status"] == "failed"]
    assert failed["check"] == "pvs-ipv6"
    assert failed["evidence"][0]["data"] == 0x20
    assert "hangs PVS machines at boot" in failed["message"]
    with layers.open_store(world.store) as st:  # the gate alone changes nothing
        assert st.catalog.version(pkg["layer"], pkg["version"])["state"] == "packaging"


@pytest.mark.parametrize("fmt", ["vhd", "vmdk"])
def test_gate_reads_through_every_packaging_format(world: World, fmt: str) -> None:
    """The SMSCFG.INI the packaging machine left is seen through a VHD and a VMDK child."""
    work = world.root / f"fmt-{fmt}"
    work.mkdir()
    pkg = package(world.store, f"app-fmt-{fmt}", work / "out", fmt=fmt)
    package_machine(pkg, work, _change(CASES[4], work))
    with pytest.raises(NotReady) as info:
        layers.finalize(pkg["disk_path"], pkg["layer"], pkg["version"], store=world.store)
    assert [f["check"] for f in info.value.fields["findings"]] == ["sccm-client-state"]


def _drop_system(root: Path) -> None:
    (root / CONFIG / "SYSTEM").unlink()


def _five_byte_system(root: Path) -> None:
    (root / CONFIG / "SYSTEM").write_bytes(b"regf\0")


SYSTEM_HIVE = "\\Windows\\System32\\config\\SYSTEM (partition 1)"


@pytest.mark.parametrize(
    ("tag", "damage", "said"),
    [
        ("missing", _drop_system, f"registry hive {SYSTEM_HIVE} is missing"),
        ("five-bytes", _five_byte_system, f"{SYSTEM_HIVE}: corrupt registry hive base block"),
    ],
)
def test_unreadable_hive_fails_the_gate_and_force_overrides_it(
    world: World, tag: str, damage: Callable[[Path], None], said: str
) -> None:
    work = world.root / f"hive-{tag}"
    work.mkdir()
    pkg = package(world.store, f"app-hive-{tag}", work / "out")

    def both(root: Path) -> None:
        _app_install(root)
        damage(root)

    package_machine(pkg, work, both)
    args = ["finalize", "--disk", pkg["disk_path"], "--layer", pkg["layer"]]
    args += ["--version", pkg["version"], "--store", world.store]
    refused = strata(*args)
    assert refused.returncode == NotReady.exit_code, refused.stderr
    assert "Traceback" not in refused.stderr
    assert said in refused.stderr, refused.stderr

    reason = "hive restored from backup after capture (ticket 7)"
    forced = strata(*args, "--force", "--reason", reason, "--json")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    result = [json.loads(x) for x in forced.stdout.splitlines()][-1]
    assert result["state"] == "deployable" and result["integrity"]["forced"]
    (finding,) = result["integrity"]["failed"]
    assert finding["check"] == "registry-hive" and finding["evidence"][0]["hive"] == "SYSTEM"
    assert "msi-in-progress" in result["integrity"]["passed"]  # SOFTWARE was still checked
    history = strata("layer", "history", pkg["layer"], "--store", world.store).stdout
    override = [line for line in history.splitlines() if "integrity-override" in line]
    assert len(override) == 1 and reason in override[0]
