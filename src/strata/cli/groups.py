"""The command group every ``strata`` group is: run without a subcommand, it shows its help."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click


class HelpGroup(click.Group):
    """A group given no subcommand (``strata``, ``strata disk``, ``strata --json disk``)
    prints its help and exits 0, as ``--help`` does: since click 8.2 a bare group is a usage
    error (exit 2), and without its arguments only the help is wanted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["invoke_without_command"] = True  # so the callback runs, and decides
        # Still required to do anything: the usage line says so, as before.
        kwargs.setdefault("subcommand_metavar", "COMMAND [ARGS]...")
        super().__init__(*args, **kwargs)
        self.callback = _help_when_bare(self.callback)


def _help_when_bare(callback: Callable[..., Any] | None) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        if ctx.invoked_subcommand is None:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return callback(*args, **kwargs) if callback is not None else None

    return functools.wraps(callback)(run) if callback is not None else run
