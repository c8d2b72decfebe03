"""``strata layer``: list layers, show one with its versions, its audit history and file
delta; delete versions and layers; run the finalize integrity gate alone."""

from __future__ import annotations

from typing import Any

import click

from strata.cli.events import current, json_option
from strata.cli.finalize import file_delta_notes, gate_target_option, report_gate
from strata.cli.groups import HelpGroup
from strata.cli.options import FILE, allow_option, remove_disk_option, store_option
from strata.ops import store as ops
from strata.ops.layers import layer_diff
from strata.units import human_size, utc_time


@click.group("layer", cls=HelpGroup)
def group() -> None:
    """Layers (os, platform, app): list, show, history, file delta, delete; the gate alone."""


@group.command("list")
@store_option
@json_option
def list_cmd(store: str | None) -> int:
    """Every layer with its kind, version count and latest deployable version."""
    layers = ops.list_layers(store)
    if current().json_mode:
        current().result(layers=layers)
        return 0
    click.echo(f"{'name':<24} {'kind':<9} {'os layer':<16} {'versions':>8}  latest")
    for row in layers:
        click.echo(
            f"{row['name']:<24} {row['kind']:<9} {row['os_layer'] or '-':<16} "
            f"{row['versions']:>8}  {row['latest'] or '-'}"
        )
    return 0


@group.command("show")
@store_option
@click.argument("name")
@json_option
def show_cmd(store: str | None, name: str) -> int:
    """One layer and all its versions with their states and sizes."""
    layer = ops.show_layer(name, store)
    if current().json_mode:
        current().result(layer=layer)
        return 0
    click.echo(f"layer: {layer['name']} ({layer['kind']})")
    for key in ("os_layer", "description", "icon_type", "platform_types", "purpose"):
        if layer.get(key):
            click.echo(f"{key.replace('_', ' ')}: {layer[key]}")
    click.echo(f"  {'version':<16} {'state':<11} {'base':<12} {'data':>10}  updated")
    for v in layer["versions"]:
        size = human_size(v["logical_size"]) if v["logical_size"] is not None else "-"
        click.echo(
            f"  {v['name']:<16} {v['state']:<11} {v['base'] or '-':<12} {size:>10}  "
            f"{utc_time(v['updated'])}"
        )
    return 0


@group.command("history")
@store_option
@click.argument("name", required=False)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None, help="Last N entries.")
@json_option
def history_cmd(store: str | None, name: str | None, limit: int | None) -> int:
    """The audit history (every operation, its comment and result), of NAME or of all layers."""
    rows = ops.layer_history(name, store, limit)
    if current().json_mode:
        current().result(history=rows)
        return 0
    click.echo(f"{'time':<20}  {'operation':<16} {'result':<6} layer[:version] or image, comment")
    for r in rows:
        target = ":".join(x for x in (r["layer"] or r["image"], r["version"]) if x)
        comment = f'  "{r["comment"]}"' if r["comment"] else ""
        click.echo(
            f"{utc_time(r['time'])}  {r['operation']:<16} {r['result']:<6} {target}{comment}"
        )
    return 0


@group.command("diff")
@store_option
@click.argument("ref", metavar="NAME[:V]")
@click.option(
    "--registry",
    is_flag=True,
    help="Also show what the version changed in each registry hive it carries (SOFTWARE, "
    "SYSTEM, a user's NTUSER.DAT, ...), against its OS layer's: keys added and removed, "
    "values set and removed.",
)
@json_option
def diff_cmd(store: str | None, ref: str, registry: bool) -> int:
    """The file delta of a layer version: entries added, modified, deleted or made opaque.

    With --json: one `result` event with layer, version, kind, file_delta (false for a
    version that has none, e.g. of an OS layer), reason (why not, else null), volumes
    [{partition, filesystem (NTFS only), entries [{path, change, type, size}]}], skipped and
    warnings; with --registry also registry [{partition, hive, keys_added, keys_deleted,
    values_set, values_deleted, added, deleted, values [{key, name, change, type, data,
    was}]}] (or {partition, hive, new: true} for a hive the OS layer lacks).
    """
    diff = layer_diff(ref, store=store, registry=registry)
    if current().json_mode:
        current().result(**diff)
        return 0
    from strata.fs import where
    from strata.ops.table import printable

    click.echo(f"layer: {diff['layer']}:{diff['version']}")
    if not diff["file_delta"]:
        click.echo(f"no file delta: {diff['reason']}")
    for vol in diff["volumes"]:
        click.echo(f"{where(vol['partition'])}: {len(vol['entries'])} entries")
        paths = printable([e["path"] for e in vol["entries"]])  # a name may hold ESC
        for e, path in zip(vol["entries"], paths, strict=True):
            size = human_size(e["size"]) if e["type"] == "file" else "-"
            click.echo(f"  {e['change']:<9} {e['type']:<5} {size:>10}  {path}")
    for note in file_delta_notes(diff):
        click.echo(note)
    for hive in diff.get("registry", []):
        for line in registry_lines(hive):
            click.echo(line)
    return 0


def registry_lines(hive: dict[str, Any]) -> list[str]:
    """One hive's changes as ``layer diff --registry`` prints them."""
    from strata.fs import where
    from strata.ops.table import printable

    head = f"registry {hive['hive']} ({where(hive['partition'])})"
    if hive.get("new"):
        return [f"{head}: new (the OS layer has no such hive)"]
    lines = [
        f"{head}: {hive['keys_added']} keys added, {hive['keys_deleted']} removed; "
        f"{hive['values_set']} values set, {hive['values_deleted']} removed"
    ]
    lines += [f"  + key    {k}" for k in printable(hive["added"])]
    lines += [f"  - key    {k}" for k in printable(hive["deleted"])]
    for v in hive["values"]:
        name = printable([f"{v['key']}\\{v['name'] or '(default)'}"])[0]
        if v["change"] == "deleted":
            lines.append(f"  - value  {name}  (was {_data(v['was'])})")
        else:
            lines.append(f"  = value  {name}  {v['type']} {_data(v['data'])}")
    return lines


def _data(shown: object) -> str:
    """A value's data as text: strings quoted as written (a Windows path keeps single
    backslashes), lists of strings as a list of those."""
    from strata.ops.table import printable

    if isinstance(shown, str):
        return f'"{printable([shown])[0]}"'
    if isinstance(shown, list):
        return "[" + ", ".join(_data(s) for s in shown) + "]"
    return str(shown)


@group.command("delete")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--comment", default="", help="Comment recorded in the audit history.")
@remove_disk_option(
    "Also delete the packaging disk and job ISO of each deleted version, where they still are"
)
@store_option
@json_option
def delete_cmd(ref: str, comment: str, remove_disk: bool, store: str | None) -> int:
    """Delete layer version NAME:VERSION, or layer NAME with all its versions.

    Only the catalog changes (recorded in `strata layer history` with the comment); run
    `strata store gc` afterwards to reclaim the chunks nothing else uses. Published images
    are not affected: an image holds its chunks itself.

    Refused (exit 8, naming what depends on it, nothing deleted) while another version is
    being made from it as its base version (not yet finalized) or was packaged on it (an OS
    version with app or platform versions on it, an app version prerequisite to another);
    a finalized version made from it holds its content already and only loses the link. And
    refused for an OS layer
    deleted whole while layers belong to it, and for a version left finalizing (run the
    finalize again first). A version an import or finalize is writing is a conflict (exit
    10). Deleting a packaging version abandons its packaging disk: the disk and job ISO stay
    where they are, and the result says where, unless --remove-disk.

    With --json: one `result` event with layer, kind, layer_deleted, versions [{version,
    state, base, manifest, stored_size, stack and disk (as its packaging record has them),
    packaging_disk and job_iso (where still there, else null)}], removed, left (the files
    left in place), unused_bases (cached bases no disk uses any more), reclaim_at_most (the
    bytes gc frees at most), reclaim and warnings.
    """
    from strata.ops.delete import delete_layer, delete_version
    from strata.ops.layers import parse_ref

    name, version = parse_ref(ref)
    if version is None:
        result = delete_layer(name, store=store, comment=comment, remove_disk=remove_disk)
    else:
        result = delete_version(
            name, version, store=store, comment=comment, remove_disk=remove_disk
        )
    for warning in result["warnings"]:
        current().warning(warning)
    current().result(_delete_text(result), **result)
    return 0


def _delete_text(result: dict[str, Any]) -> str:
    """One line: what was deleted, what it left on disk, and what gc reclaims."""
    from strata.ops.delete import GC_HINT
    from strata.ops.packaging import prune_hint

    layer, versions = result["layer"], result["versions"]
    if result["layer_deleted"]:
        listed = ", ".join(v["version"] for v in versions) or "none"
        parts = [f"deleted layer {layer} ({result['kind']}; versions: {listed})"]
    else:
        parts = [f"deleted {layer}:{versions[0]['version']} ({versions[0]['state']})"]
    if result["removed"]:
        parts.append(f"removed {', '.join(result['removed'])}")
    if result["left"]:
        parts.append(f"packaging files left in place: {', '.join(result['left'])}")
    parts += [prune_hint(base) for base in result["unused_bases"]]
    at_most = result["reclaim_at_most"]
    parts.append(GC_HINT + (f" (at most {human_size(at_most)})" if at_most else ""))
    return "; ".join(parts)


@group.command("check")
@click.option("--disk", required=True, type=FILE, help="The packaging disk to check.")
@gate_target_option
@allow_option
@json_option
def check_cmd(disk: str, target: str | None, allowed_dirs: tuple[str, ...]) -> int:
    """Run the finalize integrity gate alone; exit 9 (not ready) when a check fails."""
    from strata.errors import NotReady
    from strata.integrity.gate import check_image

    report = check_image(disk, target, allowed_dirs=allowed_dirs)
    report_gate(report)
    if not report.ok:
        raise NotReady(
            what=f"{len(report.findings)} integrity check(s) failed: {report.summary()}",
            findings=[f.as_dict() for f in report.findings],
        )
    where = ", ".join(report.volumes) or "no Windows volume"
    current().result(
        f"{disk}: ready ({len(report.passed)} checks passed; {where})", **report.as_dict()
    )
    return 0
