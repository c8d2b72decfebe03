"""``strata finalize``: capture a shut-down packaging disk into a layer version."""

from __future__ import annotations

import click

from strata.cli.events import current, json_option
from strata.cli.store import store_option
from strata.ops import layers


@click.command("finalize")
@click.option("--disk", required=True, type=click.Path(), help="The packaging disk.")
@click.option("--layer", required=True, help="Layer being packaged.")
@click.option("--version", "version", required=True, help="Version being packaged.")
@click.option("--comment", default="", help="Comment recorded in the audit history.")
@click.option(
    "--remove-disk",
    is_flag=True,
    help="Delete the packaging disk and its job ISO after a successful finalize.",
)
@store_option
@json_option
def group(
    disk: str, layer: str, version: str, comment: str, remove_disk: bool, store: str | None
) -> int:
    """Read what the packaging machine wrote (only the disk's allocated blocks), keep the
    sectors that differ from the base, and make LAYER:VERSION deployable."""
    with current().progress("finalize") as progress:
        result = layers.finalize(
            disk,
            layer,
            version,
            store=store,
            comment=comment,
            remove_disk=remove_disk,
            progress=progress,
        )
    current().result(
        f"{layer}:{version} is deployable: {result['changed_blocks']} changed blocks, "
        f"{result['new_bytes']} new bytes stored",
        **result,
    )
    return 0
