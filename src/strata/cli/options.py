"""Options several command groups share."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import click

from strata.errors import InvalidInput
from strata.ops.targets import TARGETS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# The types of path arguments.  Click checks nothing (its default readable=True would refuse
# an unreadable file as a usage error, exit 2): the command opens the file and says in one
# line what went wrong (missing: 4, a directory: 3, the system refused: 11), the same for
# every verb.
FILE = click.Path(readable=False)


class Directory(click.Path):
    """A directory option: a path that exists and is not a directory is InvalidInput (exit 3),
    as a file where a file cannot be is for every verb, not click's usage error (exit 2)."""

    def __init__(self) -> None:
        super().__init__(readable=False)
        self.name = "directory"  # the metavar: DIRECTORY

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        if os.path.exists(path) and not os.path.isdir(path):
            raise InvalidInput(f"{_named(param)}{os.fsdecode(path)}: not a directory")
        return path


def _named(param: click.Parameter | None) -> str:
    """How an error names the option a path came from ('--out '); an argument is its path."""
    if isinstance(param, click.Option) and param.opts:
        return f"{param.opts[0]} "
    return ""


DIRECTORY = Directory()


def fmt_option(flag: str, help: str) -> Decorator:
    return click.option(flag, "fmt", default=None, metavar="FORMAT", help=help)


def allow_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--allow-dir",
        "allowed_dirs",
        multiple=True,
        type=DIRECTORY,
        help="Directory where parent images may be opened (repeatable; default: the image's own).",
    )(func)


def target_option(help: str) -> Decorator:
    """``--target``: the export targets, in one order (``strata image targets``'s) for
    every verb."""
    return click.option("--target", type=click.Choice(tuple(TARGETS)), default=None, help=help)


def remove_disk_option(what: str) -> Decorator:
    """``--remove-disk``: ``what`` it deletes, and that the disk's cached base stays."""
    return click.option(
        "--remove-disk",
        is_flag=True,
        help=f"{what} (its cached base stays: the result says when no disk uses it any "
        "more, and `strata packaging-disk prune` removes it).",
    )


def store_option(func: Callable[..., Any]) -> Callable[..., Any]:
    # Unchecked by click (a file given as the store would be a usage error, exit 2): the
    # store says what is wrong with the path, as it does for $STRATA_STORE (a file, or a
    # directory of other things: 3; nothing there: 4).
    return click.option(
        "--store",
        "store",
        default=None,
        type=FILE,
        metavar="DIRECTORY",
        help="Store directory (default: $STRATA_STORE, else ~/.local/share/strata/store).",
    )(func)


class FiniteRange(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and infinity: no comparison with a bound
    refuses nan."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number
