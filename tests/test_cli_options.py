"""The options several verbs share read the same in each (one definition in cli/options.py),
and every verb that opens an image's parent chain lets the user say where parents may be."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import click
import pytest

from strata.cli.main import COMMANDS
from strata.ops.targets import TARGETS

from support.images import MiB, write_sparse_raw
from support.tools import qemu_img, result_of, strata, strata_json

# Every verb that opens an image named on its command line with the parents it points to.
OPENS_CHAINS = {
    "disk info",
    "disk map",
    "disk compare",
    "disk convert",
    "disk create",
    "disk check",
    "disk partitions",
    "fs ls",
    "fs cat",
    "layer check",
    "os import",
}


def _commands() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, entry in COMMANDS.items():
        command = importlib.import_module(entry.module).group
        if isinstance(command, click.Group):
            found.update({f"{name} {sub}": cmd for sub, cmd in command.commands.items()})
        else:
            found[name] = command
    return found


def _option(command: click.Command, flag: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and flag in p.opts), None)


def _help_record(command: click.Command, option: click.Option) -> tuple[str, str] | None:
    return option.get_help_record(click.Context(command))


def test_every_verb_that_opens_a_chain_takes_allow_dir_the_same_way() -> None:
    commands = _commands()
    records = {}
    for name, command in commands.items():
        option = _option(command, "--allow-dir")
        assert (option is not None) == (name in OPENS_CHAINS), name
        if option is not None:
            records[name] = (option.name, option.multiple, _help_record(command, option))
    assert len(set(records.values())) == 1, records
    (name, multiple, (flags, _)) = next(iter(records.values()))
    assert (name, multiple, flags) == ("allowed_dirs", True, "--allow-dir DIRECTORY")


def test_every_target_option_lists_the_targets_in_one_order() -> None:
    choices = {
        name: tuple(option.type.choices)  # type: ignore[attr-defined]
        for name, command in _commands().items()
        if (option := _option(command, "--target")) is not None
    }
    assert set(choices) == {"finalize", "layer check", "image publish", "image export"}
    assert set(choices.values()) == {tuple(TARGETS)}
    targets = result_of(strata_json("image", "targets"))["targets"]
    assert tuple(t["name"] for t in targets) == tuple(TARGETS)


def test_disk_create_f_is_the_output_format(tmp_path: Path) -> None:
    """As in qemu-img create; the help says so, because -f is the input format elsewhere."""
    out = tmp_path / "new.img"
    assert strata("disk", "create", "-f", "vhdx", out, "8M").returncode == 0
    info = json.loads(qemu_img("info", "--output=json", out).stdout)
    assert info["format"] == "vhdx" and info["virtual-size"] == 8 * MiB
    help_text = " ".join(strata("disk", "create", "--help").stdout.split())
    assert "-O, -f FORMAT Output format, of the new image" in help_text
    assert "in the other disk commands -f is the input format" in help_text
    for verb in ("info", "convert", "check"):
        assert "-f FORMAT Input format" in " ".join(strata("disk", verb, "--help").stdout.split())


@pytest.fixture
def split_chain(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A VHD child in one directory whose parent lies in another, and the raw disk the
    chain reads as (written by qemu-io into the parent, then by strata into the child)."""
    parents, children = tmp_path / "parents", tmp_path / "children"
    parents.mkdir(), children.mkdir()
    raw = write_sparse_raw(tmp_path / "disk.raw", 8 * MiB, [(0, MiB), (6 * MiB, 64 << 10)])
    parent = parents / "p.vhd"
    qemu_img("convert", "-q", "-f", "raw", "-O", "vpc", "-o", "force_size=on", raw, parent)
    child = children / "c.vhd"
    assert strata("disk", "create", "-O", "vhd", "-b", parent, child).returncode == 0
    return parent, child, raw


def test_disk_check_looks_for_the_parent_in_allow_dir(split_chain: tuple[Path, Path, Path]) -> None:
    parent, child, _ = split_chain
    outside = strata("disk", "check", child)
    assert outside.returncode == 1, outside.stdout
    assert outside.stdout.splitlines()[0] == (
        f"error: parent field parent_locators at file offset 0x440: {parent} lies outside the "
        f"allowed directories {child.parent} (name its directory with --allow-dir)"
    )
    allowed = strata("disk", "check", "--allow-dir", parent.parent, child)
    assert allowed.returncode == 0, allowed.stdout
    assert allowed.stdout.strip() == f"{child}: no problems found"
    other = parent.parent / "other"
    other.mkdir()
    qemu_img("create", "-q", "-f", "vpc", "-o", "force_size=on", other / "p.vhd", "8M")
    shutil.move(other / "p.vhd", parent)  # same name and size, another disk: a wrong UUID
    wrong = strata("disk", "check", "--allow-dir", parent.parent, child)
    assert wrong.returncode == 1 and "parent_unique_id" in wrong.stdout, wrong.stdout


@pytest.mark.parametrize(
    "verb",
    [
        ("disk", "info"),
        ("disk", "map"),
        ("disk", "partitions"),
        ("disk", "convert", "{child}", "{out}"),
        ("disk", "compare", "{child}", "{raw}"),
        ("fs", "ls"),
    ],
)
def test_a_parent_outside_the_allowed_directories_names_allow_dir(
    split_chain: tuple[Path, Path, Path], tmp_path: Path, verb: tuple[str, ...]
) -> None:
    """Every command that refuses a parent outside the allowed directories says how to allow
    it, as ``disk check`` does; --allow-dir then opens the chain."""
    parent, child, raw = split_chain
    names = {"child": child, "out": tmp_path / "out.raw", "raw": raw}
    args = [a.format(**names) for a in verb] if len(verb) > 2 else [*verb, str(child)]
    refusal = (
        f"{parent} lies outside the allowed directories {child.parent} "
        "(name its directory with --allow-dir)"
    )
    refused = strata(*args)
    assert (refused.returncode, refused.stderr) == (3, f"strata: {refusal}\n")
    event = json.loads(strata(*args, "--json").stdout.splitlines()[-1])
    assert (event["kind"], event["message"]) == ("PathOutsideAllowed", refusal)
    assert not names["out"].exists()
    allowed = strata(*args, "--allow-dir", parent.parent)
    assert allowed.returncode != 3 and "--allow-dir" not in allowed.stderr, allowed.stderr


QEMU_FORMAT = {"vhd": "vpc", "vhdx": "vhdx", "vmdk": "vmdk"}


def _chain_apart(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    """A parent made by qemu-img in ``parents/``, its child made by strata in ``children/``."""
    parents, children = tmp_path / "parents", tmp_path / "children"
    parents.mkdir(), children.mkdir()
    parent = parents / f"p.{fmt}"
    qemu_img("create", "-q", "-f", QEMU_FORMAT[fmt], parent, "8M")
    child = children / f"c.{fmt}"
    assert strata("disk", "create", "-O", fmt, "-b", parent, child).returncode == 0
    return parent, child


def _check(*args: object) -> tuple[int, list[dict[str, object]]]:
    proc = strata("disk", "check", "--json", *args)
    report = result_of([json.loads(line) for line in proc.stdout.splitlines()])
    assert report["clean"] == (proc.returncode == 0), report
    return proc.returncode, report["problems"]


@pytest.mark.parametrize("fmt", ["vhd", "vhdx", "vmdk"])
def test_disk_check_fails_on_a_parent_it_cannot_open(tmp_path: Path, fmt: str) -> None:
    """As ``qemu-img check`` fails when it cannot open the backing file: a parent outside the
    allowed directories, or gone, is an error naming it and why; --allow-dir still works."""
    parent, child = _chain_apart(tmp_path, fmt)
    code, problems = _check(child)
    (problem,) = problems
    assert code == 1 and (problem["structure"], problem["severity"]) == ("parent", "error")
    assert f"p.{fmt} lies outside the allowed directories {child.parent}" in problem["message"]
    assert "--allow-dir" in problem["message"]
    assert _check("--allow-dir", parent.parent, child) == (0, [])
    parent.rename(tmp_path / "elsewhere")
    code, problems = _check("--allow-dir", parent.parent, child)
    (problem,) = problems
    assert code == 1 and (problem["structure"], problem["severity"]) == ("parent", "error")
    assert str(problem["message"]).startswith("not found: ") and f"p.{fmt}'" in problem["message"]
    if fmt == "vmdk":  # the one differencing format qemu opens: it fails as well
        assert qemu_img("check", "-f", "vmdk", child, check=False).returncode != 0


def test_disk_check_reports_the_child_and_its_parent(tmp_path: Path) -> None:
    """A damaged structure the child still opens with (one VHDX header of two) is reported
    with the parent it may not open."""
    parent, child = _chain_apart(tmp_path, "vhdx")
    with child.open("r+b") as f:
        f.seek(64 * 1024 + 4)  # the first header's checksum
        f.write(b"XXXX")
    code, problems = _check(child)
    assert code == 1
    assert [(p["structure"], p["field"], p["offset"]) for p in problems] == [
        ("header at 64 KiB", "Checksum", 64 * 1024 + 4),
        ("parent", "-", None),
    ]
    assert "lies outside the allowed directories" in str(problems[1]["message"])
    code, problems = _check("--allow-dir", parent.parent, child)
    assert code == 1 and [p["structure"] for p in problems] == ["header at 64 KiB"]


def test_os_import_looks_for_the_parent_in_allow_dir(
    split_chain: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    parent, child, raw = split_chain
    store = tmp_path / "store"
    args = ("os", "import", "chained", child, "--version", "1", "--store", store)
    refused = strata(*args)
    assert refused.returncode == 3 and "lies outside the allowed directories" in refused.stderr
    assert strata(*args, "--allow-dir", parent.parent).returncode == 0
    published = ("image", "publish", "--name", "chained", "--os", "chained", "--store", store)
    assert strata(*published).returncode == 0
    out = tmp_path / "out.raw"
    exported = strata("image", "export", "chained", out, "--target", "raw", "--store", store)
    assert exported.returncode == 0, exported.stderr
    assert qemu_img("compare", "-f", "raw", "-F", "raw", raw, out).returncode == 0
