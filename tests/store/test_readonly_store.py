"""A store the user cannot write (``chmod -R a-w``): the verbs that only read work, as a user
that permissions bind (root ignores them, so as root the CLI runs under setpriv without the
capabilities that override them: the checkout may lie where no other user can reach, as in a
``mktemp -d``); a write still fails with exit 11 naming the path; a catalog whose WAL holds
commits that a read-only open cannot see is refused rather than read stale."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.errors import SystemIOError
from strata.ops import image, layers
from strata.store import Store

from support.images import write_sparse_raw
from support.tools import require, run, strata, strata_as_user

MiB = 1 << 20
READS = [
    ("store", "stats"),
    ("store", "verify"),
    ("layer", "list"),
    ("layer", "show", "win"),
    ("layer", "history", "win"),
    ("layer", "diff", "win:1"),
    ("image", "list"),
]
_as_user = strata_as_user


def _result(proc) -> dict:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        os.chmod(path, (mode | stat.S_IWUSR) if writable else (mode & ~bits))


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ro-source")
    disk = write_sparse_raw(root / "os.raw", 8 * MiB, [(0, 4096), (3 * MiB, MiB)])
    store = root / "store"
    layers.import_os("win", "1", str(disk), store=store)
    image.publish(image.template_from({"name": "desk", "os": "win"}), store=store)
    return store


@pytest.fixture
def readonly_store(populated: Path) -> Iterator[Path]:
    """A copy of the populated store, made unwritable."""
    top = Path(tempfile.mkdtemp(prefix="strata-ro-"))
    os.chmod(top, 0o755)
    store = top / "store"
    shutil.copytree(populated, store)
    _chmod_tree(store, writable=False)
    try:
        yield store
    finally:
        _chmod_tree(store, writable=True)
        shutil.rmtree(top)


@pytest.mark.parametrize("verb", READS, ids=[" ".join(v) for v in READS])
def test_reads_work_on_a_readonly_store(
    populated: Path, readonly_store: Path, tmp_path: Path, verb
) -> None:
    assert not list(readonly_store.glob("catalog.db-*"))  # closed cleanly: no WAL to read
    got = _result(_as_user(*verb, "--store", readonly_store, "--json"))
    writable = shutil.copytree(populated, tmp_path / "writable")  # reading leaves the source as is
    want = _result(strata(*verb, "--store", writable, "--json"))
    for key in ("store", "seconds"):
        got.pop(key, None), want.pop(key, None)
    assert got == want


def test_export_reads_a_readonly_store(populated: Path, readonly_store: Path) -> None:
    """An image is exported from a store the user cannot write (qemu-img compares it with
    the OS disk it was published from)."""
    out = readonly_store.parent / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    proc = _as_user("image", "export", "desk", out / "desk.vhd", "--target", "xenserver",
                      "--store", readonly_store)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    disk = populated.parent / "os.raw"
    assert run([require("qemu-img"), "compare", "-f", "raw", "-F", "vpc", disk, out / "desk.vhd"])


def test_writes_to_a_readonly_store_fail_naming_the_path(readonly_store: Path) -> None:
    lock = readonly_store / "lock"
    for verb in (
        ("image", "publish", "--name", "again", "--os", "win"),
        ("store", "gc"),
        ("layer", "list"),  # and the lock file missing: a read cannot make it
    ):
        if verb == ("layer", "list"):
            _chmod_tree(readonly_store, writable=True)
            lock.unlink()
            _chmod_tree(readonly_store, writable=False)
        proc = _as_user(*verb, "--store", readonly_store)
        assert proc.returncode == SystemIOError.exit_code, (verb, proc.stderr)
        assert proc.stderr == f"strata: {lock}: Permission denied\n", proc.stderr
    assert _result(strata("image", "list", "--store", readonly_store, "--json"))["images"]


def test_a_reader_sees_what_a_live_writer_committed(readonly_store: Path) -> None:
    """The writer (with write access) keeps its WAL open; the read-only reader reads it."""
    with Store(readonly_store) as st:  # root, or the owner: permissions do not stop it
        st.catalog.create_layer("late", "app", os_layer="win")
        listed = _result(_as_user("layer", "list", "--store", readonly_store, "--json"))
    assert "late" in {row["name"] for row in listed["layers"]}


def test_uncheckpointed_wal_without_shm_is_refused(readonly_store: Path) -> None:
    """A crashed writer's WAL holds a commit the catalog file lacks, and no -shm lets a
    read-only open replay it: refused (exit 11, naming the WAL) rather than read stale."""
    catalog = readonly_store / "catalog.db"
    _chmod_tree(readonly_store, writable=True)
    conn = sqlite3.connect(catalog, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO meta VALUES ('crash-test', '1')")
    crashed = readonly_store.with_name("crashed")
    shutil.copytree(readonly_store, crashed, ignore=shutil.ignore_patterns("*-shm"))
    conn.close()
    _chmod_tree(crashed, writable=False)
    _chmod_tree(readonly_store, writable=False)
    try:
        proc = _as_user("layer", "list", "--store", crashed)
        assert proc.returncode == SystemIOError.exit_code, proc.stderr
        assert f"{crashed}/catalog.db-wal: holds commits not yet in" in proc.stderr
    finally:
        _chmod_tree(crashed, writable=True)
        shutil.rmtree(crashed)
