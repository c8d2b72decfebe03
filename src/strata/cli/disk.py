"""``strata disk``: inspect, compare, convert, create and check disk images."""

from __future__ import annotations

import json
from typing import Any

import click

from strata.cli.events import current, json_option, json_runs
from strata.cli.groups import HelpGroup
from strata.cli.options import FILE, allow_option, fmt_option
from strata.errors import EXIT_DIFFERENT
from strata.formats import registry
from strata.ops import disk as ops
from strata.units import human_size, parse_size


@click.group("disk", cls=HelpGroup)
def group() -> None:
    """Inspect, compare, convert, create and check disk images (raw, vhd, vhdx, vmdk)."""


@group.command("info")
@fmt_option("-f", "Input format (default: probe).")
@allow_option
@click.argument("image", type=FILE)
@json_option
def info_cmd(image: str, fmt: str | None, allowed_dirs: tuple[str, ...]) -> int:
    """Show format, subformat, virtual size, allocated bytes and the parent chain."""
    facts = ops.info(ops.OpenSpec(image, fmt, allowed_dirs))
    current().result(_info_text(facts), **facts)
    return 0


def _info_text(facts: dict[str, object]) -> str:
    size = int(facts["virtual-size"])  # type: ignore[call-overload]
    used = int(facts["actual-size"])  # type: ignore[call-overload]
    lines = [
        f"image: {facts['filename']}",
        f"file format: {facts['format']}"
        + (f" ({facts['subformat']})" if facts.get("subformat") else ""),
        f"virtual size: {human_size(size)} ({size} bytes)",
        f"disk size: {human_size(used)}",
    ]
    skip = {"filename", "format", "subformat", "virtual-size", "actual-size", "backing-chain"}
    for key, value in facts.items():
        if key not in skip:
            lines += _fact_lines(key, value)
    for depth, layer in enumerate(facts.get("backing-chain") or [], start=1):  # type: ignore[arg-type]
        lines.append(f"parent {depth}: {layer['filename']} ({layer['format']})")
    return "\n".join(lines)


def _fact_lines(key: str, value: object) -> list[str]:
    """``key: value`` as a person reads it: a list one item per indented line (a split VMDK
    names a thousand extents), true/false and none as JSON spells them."""
    if isinstance(value, list):
        return [f"{key}:", *(f"    {item}" for item in value)]
    if isinstance(value, bool) or value is None:
        return [f"{key}: {json.dumps(value)}"]
    return [f"{key}: {value}"]


@group.command("map")
@fmt_option("-f", "Input format (default: probe).")
@allow_option
@click.argument("image", type=FILE)
@json_option
def map_cmd(image: str, fmt: str | None, allowed_dirs: tuple[str, ...]) -> int:
    """Show which runs hold data, read as zero, or come from a parent (qemu-img map terms).

    With --json: one `result` event whose `map` lists {start, length, depth, present, zero,
    data[, offset]} like `qemu-img map --output=json`.
    """
    # Streamed, as qemu-img map does: a fragmented 2 TiB image has a million runs.
    with ops.opened_map(ops.OpenSpec(image, fmt, allowed_dirs)) as entries:
        if current().json_mode:
            current().result_streamed({"map": None}, "map", json_runs(entries))
            return 0
        click.echo(f"{'offset':>18} {'length':>18} {'depth':>5}  state")
        for e in entries:
            state = "data" if e["data"] else ("zero" if e["present"] else "unallocated")
            click.echo(f"{e['start']:#18x} {e['length']:#18x} {e['depth']:>5}  {state}")
    return 0


@group.command("compare")
@fmt_option("-f", "Format of the first image (default: probe).")
@click.option("-F", "fmt2", default=None, metavar="FORMAT", help="Format of the second image.")
@allow_option
@click.argument("first", type=FILE)
@click.argument("second", type=FILE)
@json_option
def compare_cmd(
    first: str, second: str, fmt: str | None, fmt2: str | None, allowed_dirs: tuple[str, ...]
) -> int:
    """Compare guest-visible contents. Exit 0 when equal, 1 when they differ.

    As with qemu-img compare, images of different sizes are equal when the extra part of
    the larger one reads as zeros.
    """
    with current().progress("compare") as progress:
        offset = ops.compare(
            ops.OpenSpec(first, fmt, allowed_dirs),
            ops.OpenSpec(second, fmt2, allowed_dirs),
            progress,
        )
    if offset is None:
        current().result("Images are identical.", identical=True)
        return 0
    current().result(f"Content mismatch at offset {offset}!", identical=False, offset=offset)
    return EXIT_DIFFERENT


@group.command("convert")
@fmt_option("-f", "Input format (default: probe).")
@click.option(
    "-O",
    "out_format",
    default="raw",
    show_default=True,
    metavar="FORMAT",
    help="Output format: raw, vhd, vhdx, vmdk (see `strata disk formats`).",
)
@click.option(
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE,...",
    help="Output format options (see `strata disk formats`).",
)
@click.option(
    "-B",
    "--backing",
    default=None,
    type=FILE,
    help="Write a child of BACKING holding only the sectors that differ from it.",
)
@click.option(
    "-F", "backing_fmt", default=None, metavar="FORMAT", help="Format of the backing image."
)
@allow_option
@click.argument("source", type=FILE)
@click.argument("destination", type=FILE)
@json_option
def convert_cmd(
    source: str,
    destination: str,
    fmt: str | None,
    out_format: str,
    options: tuple[str, ...],
    backing: str | None,
    backing_fmt: str | None,
    allowed_dirs: tuple[str, ...],
) -> int:
    """Copy SOURCE into a new DESTINATION image, skipping zeros and unallocated space."""
    base = ops.OpenSpec(backing, backing_fmt, allowed_dirs) if backing else None
    with current().progress("convert") as progress:
        result = ops.convert(
            ops.OpenSpec(source, fmt, allowed_dirs),
            destination,
            out_format,
            options,
            base,
            progress,
        )
    current().result(f"wrote {destination} ({result['format']})", **result)
    return 0


@group.command("create")
@click.option(
    "-O",
    "-f",
    "out_format",
    default="raw",
    show_default=True,
    metavar="FORMAT",
    help="Output format, of the new image: raw, vhd, vhdx, vmdk (see `strata disk formats`). "
    "Here -f is the same option, as in qemu-img create; in the other disk commands -f is "
    "the input format.",
)
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE,...", help="Format options.")
@click.option(
    "-b",
    "--parent",
    default=None,
    type=FILE,
    help="Create a differencing child of PARENT (size defaults to the parent's).",
)
@click.option("-F", "parent_fmt", default=None, metavar="FORMAT", help="Format of the parent.")
@allow_option
@click.argument("image", type=FILE)
@click.argument("size", required=False)
@json_option
def create_cmd(
    image: str,
    size: str | None,
    out_format: str,
    options: tuple[str, ...],
    parent: str | None,
    parent_fmt: str | None,
    allowed_dirs: tuple[str, ...],
) -> int:
    """Create an empty IMAGE of SIZE bytes (suffixes K, M, G, T), or a child of --parent."""
    base = ops.OpenSpec(parent, parent_fmt, allowed_dirs) if parent else None
    result = ops.create(image, out_format, parse_size(size) if size else None, options, base)
    current().result(
        f"created {image} ({result['format']}, {result['virtual-size']} bytes)", **result
    )
    return 0


@group.command("check")
@fmt_option("-f", "Input format (default: probe).")
@allow_option
@click.argument("image", type=FILE)
@json_option
def check_cmd(image: str, fmt: str | None, allowed_dirs: tuple[str, ...]) -> int:
    """Validate every on-disk structure strictly. Exit 1 when an error is found (warnings
    alone: 0).

    A child's parents are opened as the other disk commands open them (only inside the
    --allow-dir directories, default the image's own) and their identity is checked (VHD:
    UUID, timestamp and size; VHDX: parent linkage; VMDK: parentCID). A parent that cannot be
    found or opened there is a problem.
    """
    problems = ops.check(ops.OpenSpec(image, fmt, allowed_dirs))
    errors = [p for p in problems if p.severity == "error"]
    if current().json_mode:
        current().result(clean=not errors, problems=[p._asdict() for p in problems])
    else:
        for p in problems:
            click.echo(str(p))
        click.echo(
            f"{image}: "
            + (
                "no problems found"
                if not problems
                else f"{len(errors)} error(s), {len(problems) - len(errors)} warning(s)"
            )
        )
    return EXIT_DIFFERENT if errors else 0


@group.command("partitions")
@fmt_option("-f", "Input format (default: probe).")
@allow_option
@click.argument("image", type=FILE)
@json_option
def partitions_cmd(image: str, fmt: str | None, allowed_dirs: tuple[str, ...]) -> int:
    """List the partition table (GPT, or MBR with logical partitions) of IMAGE.

    A disk without one (all zeros, or a file system on the whole disk) is said to have none.
    With --json: one `result` event with scheme (gpt, mbr, or none: no partition table),
    disk_id, sector_size, size, usable_start, usable_end (bytes), partitions [{number, start,
    length, start_sector, sectors, type, type_name, name, guid, attributes, bootable}],
    warnings (e.g. a damaged primary GPT) and filesystem (without a table, the file system
    on the whole disk: fat, ntfs, bitlocker, exfat or ext; else null).
    """
    report = ops.partitions(ops.OpenSpec(image, fmt, allowed_dirs))
    for warning in report["warnings"]:
        current().warning(warning)
    if current().json_mode:
        current().result(**report)
    elif report["scheme"] == "none":
        click.echo(_no_table_text(image, report["filesystem"]))
    else:
        _echo_table(image, report)
    return 0


def _no_table_text(image: str, filesystem: str | None) -> str:
    if filesystem is None:
        return f"{image}: no partition table"
    readable = "; strata fs ls reads it" if filesystem in ("fat", "ntfs") else ""
    return f"{image}: no partition table: a {filesystem} file system on the whole disk{readable}"


def _echo_table(image: str, report: dict[str, Any]) -> None:
    click.echo(f"{image}: {report['scheme']} {report['disk_id'] or ''}".rstrip())
    if not report["partitions"]:
        click.echo("no partitions")
        return
    click.echo(f"{'#':>3} {'start':>12} {'sectors':>12} {'size':>10}  type")
    for p in report["partitions"]:
        kind = p["type_name"] or p["type"]
        name = f"  {p['name']!r}" if p["name"] else ""
        boot = "  *" if p["bootable"] else ""
        click.echo(
            f"{p['number']:>3} {p['start_sector']:>12} {p['sectors']:>12} "
            f"{human_size(p['length']):>10}  {kind}{name}{boot}"
        )


@group.command("formats")
@json_option
def formats_cmd() -> int:
    """List the formats strata reads and writes, with their -o options."""
    rows = [
        {
            "name": d.name,
            "description": d.description,
            "options": {
                o.name: {"help": o.help, "default": o.default, "choices": list(o.choices)}
                for o in d.options
            },
        }
        for d in registry.drivers()
    ]
    if current().json_mode:
        current().result(formats=rows)
        return 0
    for row in rows:
        click.echo(f"{row['name']}: {row['description']}")
        for name, opt in row["options"].items():  # type: ignore[attr-defined]
            click.echo(f"    -o {name}=...  {opt['help']}{_choices_and_default(opt)}")
    return 0


def _choices_and_default(option: dict[str, Any]) -> str:
    """`` (one of a, b; default: a)``: no default is said where the option has none (the
    help says what its absence means), a boolean as it is given (``-o azure=on``)."""
    facts = [f"one of {', '.join(map(str, option['choices']))}"] if option["choices"] else []
    default = option["default"]
    if isinstance(default, bool):
        default = "on" if default else "off"
    if default is not None:
        facts.append(f"default: {default}")
    return f" ({'; '.join(facts)})" if facts else ""
