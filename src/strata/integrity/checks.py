"""The finalize integrity checks: what an offline Windows disk records about unfinished work.

References: Citrix App Layering "Finalize" messages (kept word for word where users know
them); Session Manager PendingFileRenameOperations (MoveFileEx MOVEFILE_DELAY_UNTIL_REBOOT);
Component Based Servicing and Windows Update reboot keys; Windows Installer ``InProgress``;
the .NET optimization (NGen) service; Configuration Manager's SMSCFG.INI; the Software
Protection Platform ``SkipRearm`` value; [KB 929852] Tcpip6 ``DisabledComponents``.

Offline markers chosen (each check's evidence names the hive, key and value, or the file):
- boot-disk drivers: PendingFileRenameOperations(2) pairs whose source or target lies under
  ``\\Windows\\System32\\drivers`` (a driver replaced when the machine next boots).
- post-installation reboot: the other PendingFileRenameOperations(2) pairs, Component Based
  Servicing ``RebootPending``, ``RebootInProgress`` and ``PackagesPending``, Windows Update
  ``Auto Update\\RebootRequired`` and ``PostRebootReporting``, Server Manager
  ``CurrentRebootAttempts``, a non-zero ``Updates\\UpdateExeVolatile``, a domain join waiting
  for the reboot (Netlogon ``JoinDomain`` or ``AvoidSpnSet``), servicing operations queued in
  ``\\Windows\\WinSxS\\pending.xml``, ``RunOnce`` values (the markers the common
  pending-reboot scripts read online, where they are in the hive files; a pending computer
  rename is not: ``ActiveComputerName`` is volatile).
- MSI: ``Installer\\InProgress`` exists (Windows Installer removes it when an install ends).
- NGen: the .NET optimization service set to automatic start (``Start`` = 2). The service
  sets itself to start when assemblies are queued and back to manual/disabled once the queue
  is drained; this is the only offline marker found, and it is a heuristic: a machine whose
  administrator set the service to automatic trips it too.
- SMSCFG.INI: ``\\Windows\\SMSCFG.INI`` exists.
- KMS: ``SkipRearm`` non-zero (the rearm count itself lives in the licensing store,
  not in the registry, so ``slmgr /dlv`` is the advice rather than a value read here).
- PVS: ``Tcpip6\\Parameters DisabledComponents`` is not 0xFF.
- unclean shutdown: ``\\hiberfil.sys`` says Windows hibernated, or ``$LogFile``'s current
  restart page is not clean (Fast Startup's version 2.0, or a log client in use without the
  clean flag), as ntfs-3g judges them (``strata.fs.ntfs.shutdown``): the disk does not hold
  what Windows last saw, so neither the hives nor the captured files can be trusted.
- chkdsk scheduled: ``$Volume``'s ``VOLUME_IS_DIRTY`` flag.
- encrypted volume (a check of the whole disk, run by the gate itself): a volume whose boot
  sector carries BitLocker's ``-FVE-FS-`` signature; what it holds is ciphertext, and the
  Windows checks cannot read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from strata.errors import CorruptImage
from strata.integrity.hive import Hive, Value

SYSTEM, SOFTWARE = "SYSTEM", "SOFTWARE"
SESSION_MANAGER = "Control\\Session Manager"
RENAMES = ("PendingFileRenameOperations", "PendingFileRenameOperations2")
DRIVERS = "\\windows\\system32\\drivers\\"
CBS = "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing"
CBS_REBOOT = f"{CBS}\\RebootPending"
WU = "Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update"
WU_REBOOT = f"{WU}\\RebootRequired"
REBOOT_KEYS = (
    CBS_REBOOT,
    f"{CBS}\\RebootInProgress",
    f"{CBS}\\PackagesPending",
    WU_REBOOT,
    f"{WU}\\PostRebootReporting",
    "Microsoft\\ServerManager\\CurrentRebootAttempts",
)
UPDATES = "Microsoft\\Updates"
NETLOGON_JOIN = ("JoinDomain", "AvoidSpnSet")
PENDING_XML = "\\Windows\\WinSxS\\pending.xml"
RUN_ONCE = "Microsoft\\Windows\\CurrentVersion\\RunOnce"
MSI_IN_PROGRESS = "Microsoft\\Windows\\CurrentVersion\\Installer\\InProgress"
NGEN_SERVICES = (
    "clr_optimization_v4.0.30319_64",
    "clr_optimization_v4.0.30319_32",
    "clr_optimization_v2.0.50727_64",
    "clr_optimization_v2.0.50727_32",
)
SPP = "Microsoft\\Windows NT\\CurrentVersion\\SoftwareProtectionPlatform"
TCPIP6 = "Services\\Tcpip6\\Parameters"
SMSCFG = "\\Windows\\SMSCFG.INI"
AUTO_START = 2
IPV6_ALL_DISABLED = 0xFF

MESSAGES = {
    "boot-driver-reboot": "A reboot is pending to update drivers on the boot disk - please "
    "check and reboot the Packaging Machine.",
    "post-install-reboot": "A post-installation reboot is pending - please check and reboot "
    "the Packaging Machine.",
    "msi-in-progress": "An MSI install operation is in progress - please check the "
    "Packaging Machine.",
    "ngen-in-progress": "A Microsoft NGen operation is in progress in the background.",
    "sccm-client-state": "A Configuration Manager client state file (\\Windows\\SMSCFG.INI) is "
    "on the disk - delete it (and the client's SMS certificates) on the Packaging Machine, or "
    "every machine made from this layer shares one client identity.",
    "kms-rearm": "KMS rearm is skipped on this disk (SkipRearm is set) - run `slmgr /dlv` on "
    "the Packaging Machine to see the remaining Windows rearm count, run `slmgr /rearm` if it "
    "is above zero, set SkipRearm to 0, and shut down the Packaging Machine again.",
    "unclean-shutdown": "Windows on the Packaging Machine did not shut down fully (it "
    "hibernated, kept file system data cached for Fast Startup, or left unfinished changes in "
    "the NTFS journal) - start the Packaging Machine and shut it down fully (turn Fast Startup "
    "off, or run `shutdown /s /t 0`), then finalize again.",
    "chkdsk-scheduled": "The Packaging Machine's disk is marked for a file system check "
    "(chkdsk) - start the Packaging Machine, let the check finish, shut it down, then finalize "
    "again.",
    "encrypted-volume": "A volume on the Packaging Machine's disk is BitLocker-encrypted - "
    "turn BitLocker off on the Packaging Machine (`manage-bde -off C:`), wait until the volume "
    "is fully decrypted, shut it down, then finalize again: a layer cannot be made of "
    "encrypted sectors.",
    "pvs-ipv6": "IPv6 is not disabled in the OS layer (PVS needs "
    "Tcpip6\\Parameters DisabledComponents = 0xFF) - disable it in the OS layer; disabling it "
    "in the platform layer instead hangs PVS machines at boot.",
}


class WindowsView(Protocol):
    """One Windows volume: its hives, opened read-only, and its files."""

    where: str

    def hive(self, name: str) -> Hive: ...

    def exists(self, path: str) -> bool: ...

    def control_set(self) -> str: ...

    def hibernation(self) -> Evidence | None: ...

    def journal(self) -> Evidence | None:
        """The NTFS journal's state when it is not clean, else None."""
        ...

    def dirty_flags(self) -> int | None: ...


Evidence = dict[str, Any]


@dataclass(frozen=True)
class Check:
    id: str
    run: Callable[[WindowsView], list[Evidence]]
    targets: tuple[str, ...] = ()  # only for these targets (empty: always)

    @property
    def message(self) -> str:
        return MESSAGES[self.id]


@dataclass
class Finding:
    check: str
    message: str
    where: str
    evidence: list[Evidence] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "message": self.message,
            "where": self.where,
            "evidence": self.evidence,
        }


def current_control_set(hive: Hive) -> str:
    """``ControlSet00N`` from ``Select\\Current``."""
    node = hive.key("Select")
    value = hive.value(node, "Current") if node is not None else None
    number = value.as_int() if value is not None else None
    if number is None or not 0 < number < 1000:
        raise CorruptImage(
            path=hive.name,
            structure="registry hive",
            problem="Select\\Current does not name the current control set",
            field="Select\\Current",
        )
    return f"ControlSet{number:03d}"


def hive_fields(hive: Hive) -> Evidence:
    return {"hive": hive.short, "file": f"\\Windows\\System32\\config\\{hive.short}"}


def value_evidence(hive: Hive, key: str, value: Value) -> Evidence:
    return {**hive_fields(hive), "key": key, "value": value.name, "data": value.shown()}


def key_evidence(hive: Hive, key: str, node: int) -> Evidence:
    values = {v.name: v.shown() for v in hive.values(node)}
    return {**hive_fields(hive), "key": key, "values": values}


def _rename_pairs(view: WindowsView) -> list[tuple[str, str, str, str, bool]]:
    """(key, value name, source, target, touches drivers) per pending rename."""
    hive = view.hive(SYSTEM)
    key = f"{view.control_set()}\\{SESSION_MANAGER}"
    node = hive.key(key)
    if node is None:
        return []
    out = []
    for name in RENAMES:
        value = hive.value(node, name)
        if value is None:
            continue
        strings = value.as_strings()
        for i in range(0, len(strings), 2):
            src, dst = strings[i], (strings[i + 1] if i + 1 < len(strings) else "")
            if not src:
                continue
            drivers = any(DRIVERS in p.lower().lstrip("!") for p in (src, dst))
            out.append((key, name, src, dst, drivers))
    return out


def _renames(view: WindowsView, drivers: bool) -> list[Evidence]:
    hive = view.hive(SYSTEM)
    return [
        {**hive_fields(hive), "key": key, "value": name, "data": [src, dst]}
        for key, name, src, dst, touches in _rename_pairs(view)
        if touches == drivers
    ]


def boot_driver_reboot(view: WindowsView) -> list[Evidence]:
    return _renames(view, drivers=True)


def post_install_reboot(view: WindowsView) -> list[Evidence]:
    found = _renames(view, drivers=False)
    software = view.hive(SOFTWARE)
    for key in REBOOT_KEYS:
        node = software.key(key)
        if node is not None:
            found.append(key_evidence(software, key, node))
    node = software.key(UPDATES)
    volatile = software.value(node, "UpdateExeVolatile") if node is not None else None
    if volatile is not None and volatile.as_int():
        found.append(value_evidence(software, UPDATES, volatile))
    found += _domain_join(view)
    if view.exists(PENDING_XML):
        found.append({"file": PENDING_XML})
    node = software.key(RUN_ONCE)
    if node is not None:
        found += [value_evidence(software, RUN_ONCE, v) for v in software.values(node)]
    return found


def _domain_join(view: WindowsView) -> list[Evidence]:
    system = view.hive(SYSTEM)
    key = f"{view.control_set()}\\Services\\Netlogon"
    node = system.key(key)
    values = [system.value(node, name) for name in NETLOGON_JOIN] if node is not None else []
    return [value_evidence(system, key, v) for v in values if v is not None]


def msi_in_progress(view: WindowsView) -> list[Evidence]:
    software = view.hive(SOFTWARE)
    node = software.key(MSI_IN_PROGRESS)
    return [] if node is None else [key_evidence(software, MSI_IN_PROGRESS, node)]


def ngen_in_progress(view: WindowsView) -> list[Evidence]:
    system = view.hive(SYSTEM)
    found = []
    for service in NGEN_SERVICES:
        key = f"{view.control_set()}\\Services\\{service}"
        node = system.key(key)
        start = system.value(node, "Start") if node is not None else None
        if start is not None and start.as_int() == AUTO_START:
            found.append(value_evidence(system, key, start))
    return found


def sccm_client_state(view: WindowsView) -> list[Evidence]:
    return [{"file": SMSCFG}] if view.exists(SMSCFG) else []


def kms_rearm(view: WindowsView) -> list[Evidence]:
    software = view.hive(SOFTWARE)
    node = software.key(SPP)
    skip = software.value(node, "SkipRearm") if node is not None else None
    if skip is None or not skip.as_int():
        return []
    return [value_evidence(software, SPP, skip)]


def pvs_ipv6(view: WindowsView) -> list[Evidence]:
    system = view.hive(SYSTEM)
    key = f"{view.control_set()}\\{TCPIP6}"
    node = system.key(key)
    value = system.value(node, "DisabledComponents") if node is not None else None
    if value is not None and value.as_int() == IPV6_ALL_DISABLED:
        return []
    shown = value.shown() if value is not None else None
    return [{**hive_fields(system), "key": key, "value": "DisabledComponents", "data": shown}]


def unclean_shutdown(view: WindowsView) -> list[Evidence]:
    return [e for e in (view.hibernation(), view.journal()) if e is not None]


def chkdsk_scheduled(view: WindowsView) -> list[Evidence]:
    flags = view.dirty_flags()
    if flags is None:
        return []
    return [{"file": "\\$Volume", "attribute": "$VOLUME_INFORMATION", "flags": f"{flags:#06x}"}]


VOLUME_CHECKS: tuple[Check, ...] = (  # read no hive: they run on every NTFS volume
    Check("unclean-shutdown", unclean_shutdown),
    Check("chkdsk-scheduled", chkdsk_scheduled),
)
CHECKS: tuple[Check, ...] = (
    *VOLUME_CHECKS,
    Check("boot-driver-reboot", boot_driver_reboot),
    Check("post-install-reboot", post_install_reboot),
    Check("msi-in-progress", msi_in_progress),
    Check("ngen-in-progress", ngen_in_progress),
    Check("sccm-client-state", sccm_client_state),
    Check("kms-rearm", kms_rearm),
    Check("pvs-ipv6", pvs_ipv6, targets=("pvs",)),
)
