"""``strata os``: OS layers."""

from __future__ import annotations

import click

from strata.cli.events import current, json_option
from strata.cli.groups import HelpGroup
from strata.cli.options import FILE, allow_option, fmt_option, store_option
from strata.ops import layers


@click.group("os", cls=HelpGroup)
def group() -> None:
    """OS layers: whole disks (partition table and volumes) imported from an image."""


@group.command("import")
@click.argument("name")
@click.argument("image", type=FILE)
@click.option("--version", "version", required=True, help="Name of the new OS layer version.")
@fmt_option("-f", "Input format (default: probe).")
@allow_option
@click.option("--description", default="", help="Description of a new OS layer.")
@click.option("--comment", default="", help="Comment for the audit history.")
@store_option
@json_option
def import_cmd(
    name: str,
    image: str,
    version: str,
    fmt: str | None,
    allowed_dirs: tuple[str, ...],
    description: str,
    comment: str,
    store: str | None,
) -> int:
    """Import IMAGE (raw, vhd, vhdx or vmdk) as version VERSION of OS layer NAME.

    Zero and unallocated space is elided; content is chunked on a fixed 64 KiB grid.
    """
    with current().progress("import") as progress:
        result = layers.import_os(
            name,
            version,
            image,
            store=store,
            fmt=fmt,
            allowed_dirs=allowed_dirs,
            description=description,
            comment=comment,
            progress=progress,
        )
    for warning in result["warnings"]:
        current().warning(warning)
    current().result(
        f"imported {image} as {name}:{version} ({result['new_bytes']} new bytes, "
        f"manifest {result['manifest']})",
        **result,
    )
    return 0
