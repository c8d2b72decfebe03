"""A command group run without a subcommand shows its help and succeeds, as ``--help`` does:
``strata``, ``strata disk``, ``strata layer``, ... (click's own bare group exits 2)."""

from __future__ import annotations

import importlib

import click
import pytest

from strata.cli.main import COMMANDS

from support.tools import strata

GROUPS = [
    name
    for name, entry in COMMANDS.items()
    if isinstance(importlib.import_module(entry.module).group, click.Group)
]


def test_the_groups_are_the_ones_expected() -> None:
    """A new group is covered by the test below without naming it; this names the current
    ones so that losing one is noticed."""
    assert {"disk", "fs", "image", "layer", "os", "packaging-disk", "store"} <= set(GROUPS)


@pytest.mark.parametrize("group", ["", *GROUPS])
def test_a_bare_group_prints_its_help_and_exits_0(group: str) -> None:
    args = [group] if group else []
    bare = strata(*args)
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout == strata(*args, "--help").stdout
    usage = " ".join(["Usage: strata", *args, "[OPTIONS] COMMAND [ARGS]..."])
    assert bare.stdout.splitlines()[0] == usage  # a command is still needed to do anything
    assert bare.stderr == ""


def test_a_bare_group_after_json_prints_its_help_too() -> None:
    bare = strata("--json", "disk")
    assert bare.returncode == 0, bare.stdout
    assert bare.stdout == strata("disk", "--help").stdout


def test_an_unknown_subcommand_is_still_a_usage_error() -> None:
    unknown = strata("disk", "bogus")
    assert unknown.returncode == 2
    assert "No such command 'bogus'" in unknown.stderr
