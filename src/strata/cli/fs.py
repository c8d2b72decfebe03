"""``strata fs``: list and read files inside an image's FAT or NTFS volumes."""

from __future__ import annotations

import sys

import click

from strata.cli.events import current, json_option
from strata.cli.groups import HelpGroup
from strata.cli.options import allow_option, fmt_option
from strata.ops import fs as ops


@click.group("fs", cls=HelpGroup)
def group() -> None:
    """List and read files in FAT and NTFS volumes (IMAGE[:PART], PART a partition number)."""


@group.command("ls")
@fmt_option("-f", "Input format (default: probe).")
@click.option("-r", "--recursive", is_flag=True, help="Every entry below PATH.")
@click.option("--system", is_flag=True, help="Also NTFS metadata files ($MFT, $Extend, ...).")
@allow_option
@click.argument("target", metavar="IMAGE[:PART]")
@click.argument("path", default="/")
@json_option
def ls_cmd(
    target: str,
    path: str,
    fmt: str | None,
    recursive: bool,
    system: bool,
    allowed_dirs: tuple[str, ...],
) -> int:
    """List PATH (default /): type, size, modified time, attributes and path per entry.

    With --json: one `result` event with `filesystem`, `partition`, `where`, `entries`
    ({path, type, size, created, modified, accessed, attributes, ...}), `warnings` (records
    that could not be read) and `unclean` (why Windows did not leave an NTFS volume shut
    down fully: hibernated, an unclean journal, chkdsk scheduled; each also a warning).
    """
    report = ops.ls(target, path, recursive, system, fmt, allowed_dirs, columns=True)
    rep = current()
    for problem in report["warnings"]:
        rep.warning(problem, kind="CorruptRecord")
    for state in report["unclean"]:
        rep.warning(state, kind="UncleanShutdown")
    if rep.json_mode:
        rep.result_streamed(report, "entries", report["entries"].json_items())
        return 0
    click.echo(f"# {report['filesystem']} on {report['where']}", err=True)
    out = click.get_text_stream("stdout")
    report["entries"].write_text(out)
    out.flush()
    return 0


@group.command("cat")
@fmt_option("-f", "Input format (default: probe).")
@allow_option
@click.argument("target", metavar="IMAGE[:PART]")
@click.argument("path")
@json_option
def cat_cmd(target: str, path: str, fmt: str | None, allowed_dirs: tuple[str, ...]) -> int:
    """Write the content of PATH to stdout (NTFS: PATH:STREAM reads a named data stream).

    With --json, errors are JSON events on stdout; the content is still raw bytes.
    """
    out = sys.stdout.buffer
    with ops.cat(target, path, fmt, allowed_dirs) as chunks:
        for chunk in chunks:
            out.write(chunk)
    out.flush()
    return 0
