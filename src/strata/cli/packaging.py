"""``strata packaging-disk``: disks for the packaging machine."""

from __future__ import annotations

from typing import Any

import click

from strata.cli.events import current, json_option
from strata.cli.groups import HelpGroup
from strata.cli.options import DIRECTORY, store_option
from strata.ops import layers
from strata.units import human_size, utc_time


@click.group("packaging-disk", cls=HelpGroup)
def group() -> None:
    """Create the disk a packaging machine installs software onto; list them; prune
    cached bases."""


@group.command("create")
@click.option("--layer", required=True, help="Layer to package (created when new).")
@click.option(
    "--new-version",
    "version",
    default=None,
    help="Name of the new version (default: one more than the highest numbered version).",
)
@click.option(
    "--base-version",
    default=None,
    help="Version the new one starts from (default: the latest deployable).",
)
@click.option("--os", "os_ref", required=True, metavar="NAME[:V]", help="OS layer (version).")
@click.option(
    "--platform", default=None, metavar="NAME[:V]", help="Platform layer used for packaging."
)
@click.option(
    "--app",
    "apps",
    multiple=True,
    metavar="NAME[:V]",
    help="Prerequisite app layer (repeatable, in order).",
)
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["vhd", "vhdx", "vmdk"]),
    help="Format of the packaging disk.",
)
@click.option("--name", required=True, help="File name of the packaging disk.")
@click.option(
    "--out",
    required=True,
    type=DIRECTORY,
    help="Directory for the disk, its cached base and its job ISO.",
)
@click.option(
    "--full",
    is_flag=True,
    help="A standalone disk instead of a differencing child of the cached base.",
)
@click.option(
    "--kind", default="app", type=click.Choice(["app", "platform"]), help="Kind of a new layer."
)
@click.option("--description", default="", help="Description of a new layer or version.")
@click.option(
    "--platform-type",
    "platform_types",
    multiple=True,
    help="For a new platform layer: a platform it is for (xenserver, pvs, vsphere, "
    "hyperv, azure, a broker…). Repeatable.",
)
@click.option(
    "--purpose",
    default=None,
    type=click.Choice(["publish", "package"]),
    help="For a new platform layer: used to publish images or to package.",
)
@click.option("--comment", default="", help="Comment for the audit history.")
@click.option(
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE,...",
    help="Format options of the packaging disk.",
)
@store_option
@json_option
def create_cmd(
    layer: str,
    version: str | None,
    base_version: str | None,
    os_ref: str,
    platform: str | None,
    apps: tuple[str, ...],
    fmt: str,
    name: str,
    out: str,
    full: bool,
    kind: str,
    description: str,
    platform_types: tuple[str, ...],
    purpose: str | None,
    comment: str,
    options: tuple[str, ...],
    store: str | None,
) -> int:
    """Compose the base from the OS, platform and prerequisite layers, then write the
    packaging disk (a differencing child of the cached base) and a job ISO beside it."""
    req = layers.PackagingRequest(
        layer=layer,
        os=os_ref,
        fmt=fmt,
        name=name,
        out=out,
        version=version,
        base_version=base_version,
        platform=platform,
        apps=apps,
        full=full,
        kind=kind,
        description=description,
        platform_types=platform_types,
        purpose=purpose,
        comment=comment,
        options=options,
    )
    with current().progress("compose base") as progress:
        result = layers.create_packaging_disk(req, store=store, progress=progress)
    for warning in result["warnings"]:
        current().warning(warning)
    current().result(
        f"packaging disk for {layer}:{result['version']}: {result['disk_path']}\n"
        f"job ISO: {result['iso']}",
        **result,
    )
    return 0


@group.command("prune")
@click.argument("directories", nargs=-1, required=True, type=DIRECTORY, metavar="DIR...")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@store_option
@json_option
def prune_cmd(directories: tuple[str, ...], dry_run: bool, store: str | None) -> int:
    """Remove the cached bases (strata-base-*) in each DIR that no disk uses any more.

    `packaging-disk create` writes the composed base of a stack once in the output
    directory, and makes every packaging disk there a differencing child of it; a base is
    as large as the composed OS, and stays when its disks are finalized and removed. A base
    is kept while a disk in its directory names it as parent (whatever made that disk) or
    a packaging record of this store names it for a disk that is still there. When a disk
    in DIR cannot be read, which base it uses cannot be told: every base in DIR is kept,
    with a warning. A disk elsewhere that names a base by an absolute path is not seen:
    keep such disks beside their base. The next packaging disk on a removed base's stack
    writes it again.

    With --json: one `result` event with dry_run, removed [{path, bytes}], kept [{path,
    bytes, used_by}], freed_bytes (allocated bytes, as the bases are sparse) and warnings.
    """
    from strata.ops.packaging import prune_bases

    result = prune_bases(directories, store=store, dry_run=dry_run)
    for warning in result["warnings"]:
        current().warning(warning)
    current().result(_prune_text(result), **result)
    return 0


def _prune_text(result: dict[str, Any]) -> str:
    verb = "would remove" if result["dry_run"] else "removed"
    lines = [f"{verb} {e['path']} ({human_size(e['bytes'])})" for e in result["removed"]]
    lines += [f"kept {e['path']}: {_why_kept(e)}" for e in result["kept"]]
    freed = "would free" if result["dry_run"] else "freed"
    lines.append(f"{freed} {human_size(result['freed_bytes'])}")
    return "\n".join(lines)


def _why_kept(entry: dict[str, Any]) -> str:
    if entry["used_by"]:
        return f"used by {', '.join(entry['used_by'])}"
    return "a disk beside it cannot be read (see the warning)"


@group.command("list")
@store_option
@json_option
def list_cmd(store: str | None) -> int:
    """Where each packaging disk is: every version being packaged (or left finalizing),
    and every finalized version whose disk is still there (it can go: `strata layer delete`
    does not touch a deployable version's disk; remove it by hand, then `strata
    packaging-disk prune` its directory).

    With --json: one `result` event with disks [{layer, version, state, format, created
    (epoch seconds), disk, disk_present, job_iso (null when gone), base (the cached base,
    null for a --full disk), base_present, problem (null, or why the packaging record
    cannot be read)}].
    """
    from strata.ops.packaging import list_disks

    disks = list_disks(store=store)
    if current().json_mode:
        current().result(disks=disks)
        return 0
    if not disks:
        click.echo("no packaging disks")
        return 0
    click.echo(f"{'version':<24} {'state':<11} {'format':<6} {'created':<20}  disk")
    for row in disks:
        click.echo(
            f"{row['layer'] + ':' + row['version']:<24} {row['state']:<11} "
            f"{row['format'] or '-':<6} {utc_time(row['created']):<20}  {_where(row)}"
        )
    return 0


def _where(row: dict[str, Any]) -> str:
    if row["problem"]:
        return f"- ({row['problem']})"
    if not row["disk_present"]:
        return f"{row['disk']} (missing)"
    if row["state"] == "deployable":
        return f"{row['disk']} (finalized; the disk can go)"
    return str(row["disk"])
