"""``strata finalize``: capture a shut-down packaging disk into a layer version, after the
integrity gate (``strata layer check`` runs the gate alone)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from strata.cli.events import current, json_option
from strata.cli.options import FILE, remove_disk_option, store_option, target_option
from strata.ops import layers

if TYPE_CHECKING:
    from strata.integrity.gate import GateReport


# finalize and layer check run the same gate.
gate_target_option = target_option(
    "Also run the checks of this publishing target (pvs: IPv6 disabled in the OS layer)."
)


def report_gate(report: GateReport, forced: bool = False) -> None:
    """Every check as an ``integrity`` event (JSON), or the failed ones as lines on stderr."""
    out = current()
    for warning in report.warnings:
        out.warning(warning)
    if out.json_mode:
        for finding in report.findings:
            out.emit("integrity", status="failed", forced=forced, **finding.as_dict())
        for check in report.passed:
            out.emit("integrity", status="passed", check=check)
        return
    for finding in report.findings:
        label = "overridden" if forced else "failed"
        click.echo(f"strata: integrity: {label}: {finding.message}", err=True)
        for item in finding.evidence:
            click.echo(f"  evidence ({finding.where}): {_evidence_text(item)}", err=True)


def _evidence_text(item: dict[str, Any]) -> str:
    if "file" in item and "key" not in item:
        facts = [f"{k} {v}" for k, v in item.items() if k not in ("file", "partition")]
        return ", ".join([f"file {item['file']}", *facts])
    where = f"{item['hive']}\\{item['key']}"
    if "value" in item:
        return f"{where} {item['value']} = {json.dumps(item['data'])}"
    return f"{where} (key present, values {json.dumps(item.get('values', {}))})"


def file_delta_notes(delta: dict[str, Any] | None) -> list[str]:
    """What the file delta left out: each volume skipped (publish then refuses a file-level
    merge of it) and each record's part that could not be read, as a line a person reads.
    The fields come from a stored manifest, so none is trusted to be there or printable."""
    if delta is None:
        return []
    from strata.ops.table import printable

    skipped, warnings = delta.get("skipped", []), delta.get("warnings", [])
    texts = printable(
        [str(s.get("reason")) for s in skipped]
        + [f"{w.get('path')} (MFT record {w.get('record')}): {w.get('problem')}" for w in warnings]
    )
    places = [_volume(item.get("partition")) for item in skipped + warnings]
    kinds = [": no file delta: "] * len(skipped) + [": "] * len(warnings)
    return [f"{p}{k}{t}" for p, k, t in zip(places, kinds, texts, strict=True)]


def _volume(partition: object) -> str:
    from strata.fs import where

    return where(partition) if isinstance(partition, int) else f"volume {partition!r}"


@click.command("finalize")
@click.option("--disk", required=True, type=FILE, help="The packaging disk.")
@click.option("--layer", required=True, help="Layer being packaged.")
@click.option("--version", "version", required=True, help="Version being packaged.")
@click.option("--comment", default="", help="Comment recorded in the audit history.")
@remove_disk_option("Delete the packaging disk and its job ISO after a successful finalize")
@gate_target_option
@click.option(
    "--force", is_flag=True, help="Finalize even when integrity checks fail (needs --reason)."
)
@click.option("--reason", default="", help="Why the failed checks are overridden (audited).")
@store_option
@json_option
def group(
    disk: str,
    layer: str,
    version: str,
    comment: str,
    remove_disk: bool,
    target: str | None,
    force: bool,
    reason: str,
    store: str | None,
) -> int:
    """Check the disk (a full shutdown, no BitLocker, no pending reboot, MSI or NGen work,
    SCCM state or KMS rearm, ...), read what the packaging machine wrote (only the disk's
    allocated blocks), keep the sectors that differ from the base, and make LAYER:VERSION
    deployable."""
    with current().progress("finalize") as progress:
        result = layers.finalize(
            disk,
            layer,
            version,
            store=store,
            comment=comment,
            remove_disk=remove_disk,
            progress=progress,
            target=target,
            force=force,
            reason=reason,
            on_gate=lambda report: report_gate(report, forced=force),
        )
    for note in [*file_delta_notes(result["file_delta"]), *result["warnings"]]:
        current().warning(note)
    current().result(_finalize_text(result), **result)
    return 0


def _finalize_text(result: dict[str, Any]) -> str:
    from strata.ops.packaging import prune_hint

    lines = [
        f"{result['layer']}:{result['version']} is deployable: {result['changed_blocks']} "
        f"changed blocks, {result['new_bytes']} new bytes stored"
    ]
    if result["removed"]:
        lines.append(f"removed {', '.join(result['removed'])}")
    lines += [prune_hint(base) for base in result["unused_bases"]]
    return "\n".join(lines)
