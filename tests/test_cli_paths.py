"""What a command says about the files it is given, as a user that permission bits bind: an
output the system refuses to create is exit 11 (SystemIOError), an output path that cannot be
one (a directory, a missing directory) exit 3, each in one line naming the file, and nothing
is left half written."""

from __future__ import annotations

import errno
import importlib
import json
import os
from pathlib import Path

import click
import pytest

from strata.cli.main import COMMANDS
from strata.errors import InvalidInput, SystemIOError

from support.images import MiB, write_sparse_raw
from support.tools import qemu_img, strata, strata_as_user

WRITERS = [
    ("raw", ()),
    ("vhd", ()),
    ("vhdx", ()),
    ("vmdk", ()),
    ("vmdk", ("-o", "subformat=streamOptimized")),
    ("vmdk", ("-o", "subformat=twoGbMaxExtentFlat")),
]
WRITER_IDS = [fmt + "".join(opts[1:]) for fmt, opts in WRITERS]


def _one_line(proc, code: int) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("strata: "), proc.stderr
    return lines[0]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_sparse_raw(tmp_path / "s.raw", 8 * MiB, [(0, MiB), (5 * MiB, 64 << 10)])


@pytest.fixture
def locked(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A directory nobody may write."""
    path = tmp_path / "locked"
    path.mkdir()
    path.chmod(0o555)
    yield path
    path.chmod(0o755)


@pytest.mark.parametrize("verb", ["convert", "create"])
@pytest.mark.parametrize("fmt, options", WRITERS, ids=WRITER_IDS)
def test_an_output_the_system_refuses_is_exit_11(
    source: Path, locked: Path, verb: str, fmt: str, options: tuple[str, ...]
) -> None:
    dst = locked / f"out.{fmt}"
    what = [source] if verb == "convert" else []
    size = [] if verb == "convert" else ["8M"]
    line = _one_line(
        strata_as_user("disk", verb, "-O", fmt, *options, *what, dst, *size),
        SystemIOError.exit_code,
    )
    assert line.startswith(f"strata: cannot create {locked}/out") and "Permission denied" in line
    assert list(locked.iterdir()) == []


def test_replacing_a_file_in_a_directory_the_system_refuses(source: Path, locked: Path) -> None:
    """The new image is written beside the old one and renamed over it: the error names the
    file the user gave, and the old one is kept."""
    locked.chmod(0o755)
    dst = locked / "old.vhd"
    qemu_img("create", "-q", "-f", "vpc", dst, "8M")
    before = dst.read_bytes()
    locked.chmod(0o555)
    line = _one_line(strata_as_user("disk", "convert", "-O", "vhd", source, dst), 11)
    assert line.startswith(f"strata: cannot replace {dst} (written first beside it as .old.vhd")
    assert line.endswith("Permission denied")
    assert dst.read_bytes() == before and [p.name for p in locked.iterdir()] == ["old.vhd"]


@pytest.mark.parametrize(
    "where, words",
    [("directory", "it is a directory"), ("missing directory", "does not exist")],
)
def test_an_output_path_that_cannot_be_one_is_exit_3(
    source: Path, tmp_path: Path, where: str, words: str
) -> None:
    dst = tmp_path / ("no/such" if where == "missing directory" else "") / "out.vhd"
    if where == "directory":
        dst.mkdir()
    for args in (["convert", source, dst], ["create", dst, "8M"]):
        line = _one_line(strata("disk", args[0], "-O", "vhd", *args[1:]), InvalidInput.exit_code)
        assert str(dst) in line and words in line


@pytest.mark.parametrize(
    "code, error",
    [
        (errno.EACCES, SystemIOError),
        (errno.EROFS, SystemIOError),
        (errno.ENOSPC, SystemIOError),
        (errno.EDQUOT, SystemIOError),
        (errno.EIO, SystemIOError),
        (errno.ENOENT, InvalidInput),
        (errno.ENOTDIR, InvalidInput),
        (errno.EISDIR, InvalidInput),
    ],
)
def test_create_file_sorts_what_the_system_said(
    monkeypatch: pytest.MonkeyPatch, code: int, error: type
) -> None:
    """Read-only, full or quota-bound file systems cannot be made here without mounting one:
    the system's answer is stood in for."""
    from strata.blockdev.rawfile import create_file

    def refuse(path: str, *args: object) -> int:
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(error) as caught:
        create_file("/out/disk.vhd")
    assert type(caught.value) is error
    assert caught.value.message.endswith(f"cannot create /out/disk.vhd: {os.strerror(code)}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("paths-store")
    disk = write_sparse_raw(root / "os.raw", 8 * MiB, [(0, 4096), (3 * MiB, MiB)])
    store = root / "store"
    assert strata("os", "import", "win", disk, "--version", "1", "--store", store).returncode == 0
    assert (
        strata("image", "publish", "--name", "desk", "--os", "win", "--store", store).returncode
        == 0
    )
    return store


def test_export_into_a_directory_the_system_refuses(store: Path, locked: Path) -> None:
    proc = strata_as_user("image", "export", "desk", locked / "d.vhd", "--target", "xenserver",
                          "--store", store)  # fmt: skip
    line = _one_line(proc, SystemIOError.exit_code)
    assert line == f"strata: cannot create {locked}/d.vhd: Permission denied"
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("fmt", ["vhd", "vhdx", "vmdk"])
def test_packaging_disk_into_a_directory_the_system_refuses(
    store: Path, locked: Path, fmt: str
) -> None:
    before = strata("layer", "list", "--store", store, "--json").stdout
    proc = strata_as_user("packaging-disk", "create", "--layer", "pkg", "--os", "win",
                          "--format", fmt, "--name", "p", "--out", locked,
                          "--store", store)  # fmt: skip
    line = _one_line(proc, SystemIOError.exit_code)
    assert line.startswith(f"strata: cannot create {locked}/strata-base-"), line
    assert line.endswith("Permission denied")
    assert list(locked.iterdir()) == []
    assert strata("layer", "list", "--store", store, "--json").stdout == before


def _verbs(image: Path, other: Path, tmp: Path, store: Path) -> dict[str, list[object]]:
    """Every verb that reads an image or file named on its command line, reading ``image``."""
    out = tmp / "out"
    return {
        "disk info": ["disk", "info", image],
        "disk map": ["disk", "map", image],
        "disk compare (first)": ["disk", "compare", image, other],
        "disk compare (second)": ["disk", "compare", other, image],
        "disk convert": ["disk", "convert", "-O", "vhd", image, out / "c.vhd"],
        "disk convert -B": ["disk", "convert", "-O", "vhd", "-B", image, other, out / "b.vhd"],
        "disk create -b": ["disk", "create", "-O", "vhd", "-b", image, out / "d.vhd"],
        "disk check": ["disk", "check", image],
        "disk partitions": ["disk", "partitions", image],
        "fs ls": ["fs", "ls", image],
        "fs cat": ["fs", "cat", image, "/x"],
        "os import": ["os", "import", "win2", image, "--version", "1", "--store", store],
        "layer check": ["layer", "check", "--disk", image],
        "image publish": ["image", "publish", image, "--store", store],
    }


VERBS = list(_verbs(Path(), Path(), Path(), Path()))


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A VHD and a raw disk of the same size; ``out/`` for what commands write."""
    (tmp_path / "out").mkdir()
    vhd = tmp_path / "in.vhd"
    qemu_img("create", "-q", "-f", "vpc", "-o", "force_size=on", vhd, "8M")
    return vhd, write_sparse_raw(tmp_path / "other.raw", 8 * MiB, [(0, 4096)])


@pytest.mark.parametrize("verb", VERBS)
def test_an_input_the_system_refuses_to_read_is_exit_11(
    tmp_path: Path, store: Path, inputs: tuple[Path, Path], verb: str
) -> None:
    image, other = inputs
    image.chmod(0)
    line = _one_line(strata_as_user(*_verbs(image, other, tmp_path, store)[verb]), 11)
    assert line == f"strata: {image}: Permission denied"
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("verb", VERBS)
def test_a_missing_input_is_exit_4(
    tmp_path: Path, store: Path, inputs: tuple[Path, Path], verb: str
) -> None:
    missing = tmp_path / "gone" / "in.vhd"
    line = _one_line(strata(*_verbs(missing, inputs[1], tmp_path, store)[verb]), 4)
    assert str(missing) in line and "not found" in line
    assert list((tmp_path / "out").iterdir()) == []


def test_an_unreadable_parent_is_exit_11(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    parent, _ = inputs
    child = tmp_path / "child.vhd"
    assert strata("disk", "create", "-O", "vhd", "-b", parent, child).returncode == 0
    parent.chmod(0)
    for verb in (["info"], ["map"], ["convert", "-O", "vhd"]):
        args = [*verb, child] + ([tmp_path / "out" / "c.vhd"] if verb[0] == "convert" else [])
        line = _one_line(strata_as_user("disk", *args), SystemIOError.exit_code)
        assert line == f"strata: {parent}: Permission denied"


@pytest.mark.parametrize("verb", [("store", "stats"), ("layer", "list"), ("image", "list")])
def test_a_store_the_system_refuses_to_read_is_exit_11(
    tmp_path: Path, store: Path, verb: tuple[str, ...]
) -> None:
    copy = tmp_path / "store"
    copy.mkdir()
    copy.chmod(0)
    try:
        line = _one_line(strata_as_user(*verb, "--store", copy), SystemIOError.exit_code)
    finally:
        copy.chmod(0o755)
    assert line == f"strata: {copy}/store.json: Permission denied"


STORE_VERBS = [
    ("store", "stats"),
    ("store", "verify"),
    ("store", "gc"),
    ("layer", "list"),
    ("image", "list"),
    ("image", "publish", "--name", "i", "--os", "win"),
    ("layer", "delete", "win:1"),
    ("image", "delete", "desk"),
]


@pytest.mark.parametrize("verb", STORE_VERBS, ids=[" ".join(v[:2]) for v in STORE_VERBS])
def test_the_advice_for_a_missing_store_is_true(tmp_path: Path, verb: tuple[str, ...]) -> None:
    """Where a verb says to run `store init`, it works; where init would refuse (a directory
    holding other files), the verb says so instead."""
    cluttered = tmp_path / "cluttered"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_text("mine\n")
    for where in (cluttered, tmp_path / "new", tmp_path / "empty"):
        if where.name == "empty":
            where.mkdir()
        line = _one_line(strata(*verb, "--store", where), 3 if where == cluttered else 4)
        init = strata("store", "init", "--store", where)
        if where == cluttered:
            words = "is not a strata store (no store.json) and is not empty"
            assert words in line and "will not make one there" in line
            assert _one_line(init, InvalidInput.exit_code) == line
            assert sorted(p.name for p in where.iterdir()) == ["notes.txt"]
        else:
            assert line == f"strata: not found: store {where} (create it with `strata store init`)"
            assert init.returncode == 0, init.stderr
            assert strata("store", "stats", "--store", where).returncode == 0


PACKAGE_WIN = ("--layer", "pkg", "--os", "win", "--format", "vhd", "--name", "p")


def _store_verbs(image: Path, out: Path) -> dict[str, list[object]]:
    """Every verb that takes ``--store``, with the other arguments it needs to reach the
    store (``image``: a disk; ``out``: an empty directory)."""
    return {
        "store init": ["store", "init"],
        "store stats": ["store", "stats"],
        "store verify": ["store", "verify"],
        "store gc": ["store", "gc"],
        "layer list": ["layer", "list"],
        "layer show": ["layer", "show", "win"],
        "layer history": ["layer", "history"],
        "layer diff": ["layer", "diff", "win:1"],
        "layer delete": ["layer", "delete", "win:1"],
        "image list": ["image", "list"],
        "image delete": ["image", "delete", "desk"],
        "image publish": ["image", "publish", "--name", "i", "--os", "win"],
        "image export": ["image", "export", "desk", out / "d.vhd"],
        "os import": ["os", "import", "win", image, "--version", "1"],
        "packaging-disk create": ["packaging-disk", "create", *PACKAGE_WIN, "--out", out],
        "packaging-disk list": ["packaging-disk", "list"],
        "packaging-disk prune": ["packaging-disk", "prune", out],
        "finalize": ["finalize", "--disk", image, "--layer", "pkg", "--version", "1"],
    }


def test_every_verb_with_a_store_option_is_listed() -> None:
    found = set()
    for name, entry in COMMANDS.items():
        command = importlib.import_module(entry.module).group
        subs = command.commands.items() if isinstance(command, click.Group) else [("", command)]
        for sub, cmd in subs:
            if any("--store" in getattr(p, "opts", ()) for p in cmd.params):
                found.add(f"{name} {sub}".strip())
    assert found == set(_store_verbs(Path(), Path()))


@pytest.mark.parametrize("how", ["--store", "STRATA_STORE"])
@pytest.mark.parametrize("verb", list(_store_verbs(Path(), Path())))
def test_a_store_that_cannot_be_a_directory_is_exit_3(tmp_path: Path, verb: str, how: str) -> None:
    """A regular file named as the store, or a path under one, is refused by the store in
    one line naming it (click would have called the file a usage error, exit 2)."""
    image = write_sparse_raw(tmp_path / "disk.raw", 8 * MiB, [(0, 4096)])
    (tmp_path / "out").mkdir()
    args = _store_verbs(image, tmp_path / "out")[verb]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    for where, words in (
        (a_file, f"{a_file} is not a directory, so it is not a strata store"),
        (a_file / "store", f"{a_file / 'store'} cannot be a strata store: {a_file} is not a"),
    ):
        if how == "--store":
            proc = strata(*args, "--store", where)
        else:
            proc = strata(*args, env={**os.environ, "STRATA_STORE": str(where)})
        line = _one_line(proc, InvalidInput.exit_code)
        assert line.startswith(f"strata: {words}"), line
    assert a_file.read_text() == "mine\n" and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_file_given_as_a_directory_option_is_exit_3(tmp_path: Path, json_mode: bool) -> None:
    """--out and --allow-dir name directories: a regular file there is InvalidInput in one
    line naming the option and the file (click called it a usage error, exit 2)."""
    image = write_sparse_raw(tmp_path / "disk.raw", 8 * MiB, [(0, 4096)])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    store = tmp_path / "store"
    imported = ["os", "import", "win", image, "--version", "1", "--store", store]
    verbs = [
        ("--out", ["packaging-disk", "create", *PACKAGE_WIN, "--store", store, "--out", a_file]),
        ("--allow-dir", ["disk", "info", "--allow-dir", a_file, image]),
        ("--allow-dir", ["disk", "check", "--allow-dir", a_file, image]),
        ("--allow-dir", [*imported, "--allow-dir", a_file]),
    ]
    for flag, args in verbs:
        proc = strata(*args, *(["--json"] if json_mode else []))
        message = f"{flag} {a_file}: not a directory"
        if json_mode:
            assert proc.returncode == InvalidInput.exit_code and proc.stderr == ""
            (event,) = [json.loads(line) for line in proc.stdout.splitlines()]
            assert (event["event"], event["kind"]) == ("error", "InvalidInput")
            assert event["message"] == message
        else:
            assert _one_line(proc, InvalidInput.exit_code) == f"strata: {message}"
    assert a_file.read_text() == "mine\n" and not store.exists()
