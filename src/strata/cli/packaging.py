"""``strata packaging-disk``: disks for the packaging machine."""

from __future__ import annotations

import click

from strata.cli.events import current, json_option
from strata.cli.groups import HelpGroup
from strata.cli.options import DIRECTORY, store_option
from strata.ops import layers


@click.group("packaging-disk", cls=HelpGroup)
def group() -> None:
    """Create the disk a packaging machine installs software onto."""


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
