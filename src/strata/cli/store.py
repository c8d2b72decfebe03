"""``strata store``: create, inspect, verify and garbage-collect the chunk store."""

from __future__ import annotations

from typing import Any

import click

from strata.cli.events import current, json_option
from strata.cli.groups import HelpGroup
from strata.cli.options import FiniteRange, store_option
from strata.errors import EXIT_DIFFERENT
from strata.ops import store as ops
from strata.units import human_size


@click.group("store", cls=HelpGroup)
def group() -> None:
    """The chunk store: content-addressed zstd chunks in packs, and the layer catalog."""


@group.command("init")
@store_option
@json_option
def init_cmd(store: str | None) -> int:
    """Create the store (does nothing if it exists)."""
    result = ops.init_store(store)
    verb = "created" if result["created"] else "already exists:"
    current().result(f"{verb} store {result['store']}", **result)
    return 0


@group.command("stats")
@store_option
@json_option
def stats_cmd(store: str | None) -> int:
    """Logical vs stored bytes, dedup and compression ratios, packs and reclaimable space."""
    facts = ops.store_stats(store)
    sizes = {"logical_bytes", "unique_bytes", "stored_bytes", "pack_bytes", "reclaimable_bytes"}
    lines = [
        f"{key.replace('_', ' ')}: "
        + (
            f"{human_size(value)} ({value} bytes)"
            if key in sizes
            else "-"  # a ratio of nothing (no chunk stored yet); --json has null
            if value is None
            else str(value)
        )
        for key, value in facts.items()
    ]
    current().result("\n".join(lines), **facts)
    return 0


@group.command("verify")
@store_option
@json_option
def verify_cmd(store: str | None) -> int:
    """Read back every chunk and manifest. Exit 1 when a problem is found.

    Each problem names the chunk (id, pack, offset) and every layer version using it.
    """
    with current().progress("verify") as progress:
        report = ops.verify_store(store, progress)
    reporter = current()
    if reporter.json_mode:
        for problem in report["problems"]:
            reporter.emit("integrity", **problem)
        reporter.result(**report)
    else:
        for p in report["problems"]:
            users = f" (used by {', '.join(p['users'])})" if p["users"] else ""
            click.echo(f"{p['kind']}: {p['message']}{users}")
        click.echo(
            f"{report['store']}: {report['chunks_checked']} chunks, "
            f"{report['manifests_checked']} manifests checked: "
            + ("clean" if report["clean"] else f"{len(report['problems'])} problem(s)")
            + _reclaimable_text(report)
        )
    return 0 if report["clean"] else EXIT_DIFFERENT


def _reclaimable_text(report: dict[str, Any]) -> str:
    if report["orphan_chunks"] is None:
        return "; reclaimable by gc: unknown until every live manifest reads (gc refuses)"
    freed = report["orphan_bytes"] + report["unindexed_pack_bytes"]
    return f"; reclaimable by gc: {report['orphan_chunks']} orphan chunks, {human_size(freed)}"


@group.command("gc")
@store_option
@click.option(
    "--threshold",
    type=FiniteRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Rewrite a pack only when more than this share of it is dead.",
)
@click.option(
    "--wait",
    "lock_timeout",
    type=FiniteRange(min=0.0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for other users of the store to finish.",
)
@json_option
def gc_cmd(store: str | None, threshold: float, lock_timeout: float) -> int:
    """Remove chunks no committed version or image uses; rewrite or delete their packs."""
    with current().progress("gc") as progress:
        report = ops.gc_store(store, threshold, lock_timeout, progress)
    for problem in report["problems"]:
        current().warning(problem)
    current().result(
        f"removed {report['chunks_removed']} chunks, deleted {report['packs_deleted']} and "
        f"rewrote {report['packs_rewritten']} packs, freed "
        f"{human_size(report['pack_bytes_freed'])}",
        **report,
    )
    return 0
