"""The finalize integrity gate: find the disk's Windows volume(s), read the SYSTEM and SOFTWARE
hives through strata's NTFS reader and hivex, and run every check.

References: ``strata.integrity.checks`` (what each check reads and why).

A Windows volume is an NTFS volume holding a ``\\Windows\\System32`` directory. A disk
without one skips the Windows checks and says so in ``warnings``. A hive that is missing or
damaged is a failed check of its own (``registry-hive``, naming the hive and what is wrong),
so ``--force --reason`` can override it like any other; the checks that read it do not run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from strata.blockdev.base import BlockDevice
from strata.errors import CorruptImage, NotFound, StrataError
from strata.formats import registry
from strata.fs.ntfs import NtfsVolume, shutdown
from strata.fs.volumes import Located, located_volumes
from strata.integrity.checks import (
    CHECKS,
    MESSAGES,
    VOLUME_CHECKS,
    Check,
    Finding,
    current_control_set,
)
from strata.integrity.hive import Hive, missing, open_hive

CONFIG = "\\Windows\\System32\\config"
SYSTEM_DIR = "/Windows/System32"
HIVE_CHECK = "registry-hive"
ENCRYPTED = "encrypted-volume"
DISK_CHECKS = (ENCRYPTED,)  # checks of the whole disk, run whatever its volumes hold


@dataclass
class GateReport:
    findings: list[Finding] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    target: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "target": self.target,
            "volumes": self.volumes,
            "failed": [f.as_dict() for f in self.findings],
            "passed": self.passed,
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        return "; ".join(f.message for f in self.findings)


@dataclass
class HiveProblem:
    """A hive the checks could not read: missing, or damaged."""

    hive: str  # SYSTEM, SOFTWARE
    label: str  # its path and volume, as errors name it
    error: StrataError
    checks: list[str] = field(default_factory=list)  # the checks it kept from running

    def finding(self, where: str) -> Finding:
        gone = isinstance(self.error, NotFound)
        what = f"registry hive {self.label} is missing" if gone else self.error.message
        message = f"{what}; the checks that read it ({', '.join(self.checks)}) could not run"
        evidence = {
            "hive": self.hive,
            "file": f"{CONFIG}\\{self.hive}",
            "problem": "missing" if gone else self.error.message,
            "checks": list(self.checks),
            "partition": where,
        }
        return Finding(HIVE_CHECK, message, where, [evidence])


class NtfsWindows:
    """A Windows volume read through ``NtfsVolume``; hives opened once, on first use."""

    def __init__(self, vol: NtfsVolume, where: str, stack: ExitStack) -> None:
        self.vol = vol
        self.where = where
        self._stack = stack
        self._hives: dict[str, Hive] = {}
        self._labels: dict[str, str] = {}  # a hive's label -> its name
        self._control_set: str | None = None
        self.warnings: list[str] = []
        self.problems: dict[str, HiveProblem] = {}

    def hive(self, name: str) -> Hive:
        if name in self.problems:  # reported once; the checks that need it stop here
            raise self.problems[name].error
        if name not in self._hives:
            path = f"{CONFIG}\\{name}"
            label = f"{path} ({self.where})"
            self._labels[label] = name
            if not self.exists(path):
                error = missing(label)
                self.problems[name] = HiveProblem(name, label, error)
                raise error
            chunks = self.vol.iter_file(self.vol.stat(path))
            hive = self._stack.enter_context(open_hive(chunks, label, name))
            if hive.dirty:
                self.warnings.append(
                    f"registry hive {label} is dirty (its sequence numbers differ): changes "
                    "in its .LOG1/.LOG2 transaction logs are not replayed, so the checks may "
                    "read stale values; boot the Packaging Machine and shut it down cleanly"
                )
            self._hives[name] = hive
        return self._hives[name]

    def exists(self, path: str) -> bool:
        try:
            self.vol.stat(path)
        except NotFound:
            return False
        return True

    def hibernation(self) -> dict[str, Any] | None:
        return shutdown.hibernation(self.vol)

    def journal(self) -> dict[str, Any] | None:
        found = shutdown.journal(self.vol)
        return None if found.clean else found.evidence()

    def dirty_flags(self) -> int | None:
        return shutdown.dirty(self.vol)

    def control_set(self) -> str:
        if self._control_set is None:
            self._control_set = current_control_set(self.hive("SYSTEM"))
        return self._control_set

    def hive_problem(self, error: StrataError) -> HiveProblem | None:
        """The hive ``error`` says is missing or damaged (recorded: no check reads it again),
        or None when ``error`` is about something else."""
        known = next((p for p in self.problems.values() if p.error is error), None)
        if known is not None or not isinstance(error, CorruptImage):
            return known
        name = self._labels.get(error.path)  # hive errors carry the hive's label as their path
        if name is None:
            return None
        self.problems[name] = HiveProblem(name, error.path, error)
        return self.problems[name]


def ntfs_volumes(volumes: Sequence[Located]) -> Iterator[tuple[str, NtfsVolume, bool]]:
    """Every NTFS volume of a disk's ``volumes``: where, the volume, whether it holds
    Windows."""
    for found in volumes:
        if found.fs != "ntfs":
            continue
        vol = NtfsVolume(found.dev)
        try:
            windows = vol.stat(SYSTEM_DIR).is_dir
        except NotFound:
            windows = False
        yield found.where, vol, windows


def unfinished_shutdowns(volumes: Sequence[Located]) -> list[tuple[str, shutdown.Unfinished]]:
    """Each NTFS volume of a disk's ``volumes`` that Windows did not leave shut down fully,
    or whose state could not be read, and why."""
    found = []
    for located in volumes:
        if located.fs != "ntfs":
            continue
        try:
            state = shutdown.unfinished(NtfsVolume(located.dev))
        except StrataError as e:  # a warning beside an import: never the import's failure
            state = shutdown.Unfinished([], [e.message])
        if state.reasons or state.unreadable:
            found.append((located.where, state))
    return found


def run_gate(disk: BlockDevice, target: str | None = None) -> GateReport:
    """Every check on every Windows volume of ``disk`` (the guest-visible chain), the checks
    of how a volume was left on its other NTFS volumes, and the whole-disk checks."""
    report = GateReport(target=target)
    volumes = list(located_volumes(disk))  # probed once for every check
    _check_encryption(volumes, report)
    with ExitStack() as stack:
        for where, vol, windows in ntfs_volumes(volumes):
            view = NtfsWindows(vol, where, stack)
            if windows:
                report.volumes.append(where)
                _run_checks(view, target, report, CHECKS)
            else:  # Fast Startup leaves every fixed volume hibernated, not only Windows's
                _run_checks(view, target, report, VOLUME_CHECKS)
            report.warnings += view.warnings
    if not report.volumes:
        report.warnings.append(
            "no Windows volume (NTFS with \\Windows\\System32) on the disk: "
            "the Windows checks were skipped"
        )
    return report


def encrypted_volumes(volumes: Sequence[Located]) -> list[str]:
    """Where a disk's ``volumes`` hold a BitLocker-encrypted one."""
    return [found.where for found in volumes if found.fs == "bitlocker"]


def _check_encryption(volumes: Sequence[Located], report: GateReport) -> None:
    encrypted = encrypted_volumes(volumes)
    for where in encrypted:
        evidence = [{"partition": where, "boot_sector": "-FVE-FS-"}]
        report.findings.append(Finding(ENCRYPTED, MESSAGES[ENCRYPTED], where, evidence))
    if not encrypted:
        report.passed.append(ENCRYPTED)


def _run_checks(
    view: NtfsWindows, target: str | None, report: GateReport, checks: Sequence[Check]
) -> None:
    for check in checks:
        if check.targets and target not in check.targets:
            continue
        try:
            evidence = check.run(view)
        except (NotFound, CorruptImage) as e:
            problem = view.hive_problem(e)
            if problem is None:
                raise
            problem.checks.append(check.id)
            continue
        if evidence:
            for item in evidence:
                item.setdefault("partition", view.where)
            report.findings.append(Finding(check.id, check.message, view.where, evidence))
        elif check.id not in report.passed:
            report.passed.append(check.id)
    report.findings += [p.finding(view.where) for p in view.problems.values()]


def check_image(
    path: str,
    target: str | None = None,
    fmt: str | None = None,
    allowed_dirs: Sequence[str] = (),
) -> GateReport:
    """The gate alone, on the disk image at ``path`` (its parents opened as for any read)."""
    with registry.open_image(path, fmt, allowed_dirs=list(allowed_dirs) or None) as disk:
        return run_gate(disk, target)
