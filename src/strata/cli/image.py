"""``strata image``: publish layered images, export, list and delete them."""

from __future__ import annotations

from typing import Any

import click

from strata.cli.events import current, json_option
from strata.cli.groups import HelpGroup
from strata.cli.options import FILE, store_option, target_option
from strata.ops import image as ops
from strata.ops.targets import TARGETS
from strata.units import human_size, utc_time


@click.group("image", cls=HelpGroup)
def group() -> None:
    """Publish layered images from templates, export them for a platform, list, delete."""


@group.command("publish")
@click.argument("template", required=False, type=FILE)
@click.option("--name", default=None, help="Image name (overrides the template's).")
@click.option("--os", "os_ref", default=None, metavar="NAME[:V]", help="OS layer.")
@click.option("--platform", default=None, metavar="NAME[:V]", help="Platform layer (applied last).")
@click.option(
    "--app",
    "apps",
    multiple=True,
    metavar="NAME[:V][@PRIORITY]",
    help="App layer; repeatable. Higher priority wins; default: the last listed wins.",
)
@target_option("Default export target (may also be chosen at export).")
@click.option("--comment", default="", help="Comment for the audit history.")
@store_option
@json_option
def publish_cmd(
    template: str | None,
    name: str | None,
    os_ref: str | None,
    platform: str | None,
    apps: tuple[str, ...],
    target: str | None,
    comment: str,
    store: str | None,
) -> int:
    """Compose a layered image from TEMPLATE (a JSON file) and/or options."""
    tpl = ops.load_template(template) if template else None
    merged = {
        "name": name or (tpl.name if tpl else None),
        "os": os_ref or (tpl.os if tpl else None),
        "platform": platform or (tpl.platform if tpl else None),
        "apps": list(apps)
        or ([{"layer": a.ref, "priority": a.priority} for a in tpl.apps] if tpl else []),
        "target": target or (tpl.target if tpl else None),
    }
    if not merged["name"] or not merged["os"]:
        raise click.UsageError("an image needs --name and --os (or a template with both)")
    result = ops.publish(ops.template_from(merged, "options"), store=store, comment=comment)
    for w in result.get("merge_warnings", []):
        current().warning(f"{w['layer']}: {w['path']}: {w['problem']}", **w)
    text = "\n".join(
        [
            f"published {result['image']}: manifest {result['manifest']}",
            *ops.conflict_lines(result.get("conflicts", [])),
            *_registry_lines(result.get("registry_merges", [])),
        ]
    )
    current().result(text, **result)
    return 0


def _registry_lines(merges: list[dict[str, Any]]) -> list[str]:
    """Each hive a layer's changes were merged into, key by key."""
    if not merges:
        return []
    from strata.fs import where  # start-up: the file-system package only when needed

    return [
        f"registry {h['path']} ({where(h['partition'])}): {h['layer']}'s changes merged key "
        f"by key ({h['keys_added']} keys added, {h['keys_deleted']} removed; "
        f"{h['values_set']} values set, {h['values_deleted']} removed)"
        for h in merges
    ]


@group.command("export")
@click.argument("image")
@click.argument("destination", type=FILE)
@target_option("Target platform (default: the image's).")
@click.option("-O", "fmt", default=None, metavar="FORMAT", help="Override the target's format.")
@click.option(
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE,...",
    help="Override the target's format options.",
)
@click.option("--force", is_flag=True, help="Export even if the platform layer is not for it.")
@store_option
@json_option
def export_cmd(
    image: str,
    destination: str,
    target: str | None,
    fmt: str | None,
    options: tuple[str, ...],
    force: bool,
    store: str | None,
) -> int:
    """Write IMAGE to DESTINATION in the target platform's disk format."""
    with current().progress("export") as progress:
        result = ops.export(
            image,
            destination,
            target_name=target,
            fmt=fmt,
            options=options,
            force=force,
            store=store,
            progress=progress,
        )
    current().result(f"exported {image} for {result['target']}: {destination}", **result)
    return 0


@group.command("delete")
@click.argument("name")
@click.option("--comment", default="", help="Comment recorded in the audit history.")
@store_option
@json_option
def delete_cmd(name: str, comment: str, store: str | None) -> int:
    """Delete published image NAME.

    Only the catalog changes (recorded in `strata layer history` with the comment); run
    `strata store gc` afterwards to reclaim the chunks no layer version or other image uses.
    A file already exported from it is not touched.

    With --json: one `result` event with image, manifest, logical_size, reclaim_at_most (the
    bytes gc frees at most) and reclaim.
    """
    result = ops.delete_image(name, store=store, comment=comment)
    at_most = result["reclaim_at_most"]
    current().result(
        f"deleted image {name}; {result['reclaim']}"
        + (f" (at most {human_size(at_most)})" if at_most else ""),
        **result,
    )
    return 0


@group.command("list")
@store_option
@json_option
def list_cmd(store: str | None) -> int:
    """List published images."""
    rows = ops.list_images(store=store)
    if current().json_mode:
        current().result(images=rows)
        return 0
    click.echo(f"{'name':<24} {'data':>10}  {'target':<10} {'created':<20}  layers (os first)")
    for row in rows:
        t = row["template"]
        platform = [t["platform"]] if t["platform"] else []
        layers = ", ".join([t["os"], *platform, *(a["layer"] for a in t["apps"])])
        click.echo(
            f"{row['name']:<24} {human_size(row['logical_size']):>10}  "
            f"{t['target'] or '-':<10} {utc_time(row['created']):<20}  {layers}"
        )
    return 0


@group.command("targets")
@json_option
def targets_cmd() -> int:
    """List export targets and their formats."""
    rows = [
        {
            "name": t.name,
            "format": t.format,
            "options": list(t.options),
            "platform": t.platform,
            "description": t.description,
        }
        for t in TARGETS.values()
    ]
    if current().json_mode:
        current().result(targets=rows)
        return 0
    for line in _target_lines(rows):
        click.echo(line)
    return 0


def _target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A header and a line per target: columns as wide as their widest cell, ``-`` for
    none, the description last (not padded)."""
    lines = [
        ("name", "format", "options", "platform", "description"),
        *(
            (
                r["name"],
                r["format"],
                ",".join(r["options"]) or "-",
                r["platform"] or "-",
                r["description"],
            )
            for r in rows
        ),
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return [
        "  ".join([*(f"{cell:<{w}}" for cell, w in zip(line, widths, strict=False)), line[-1]])
        for line in lines
    ]
