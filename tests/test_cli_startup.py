"""A CLI command imports only what it runs: the start-up floor of `disk convert`,
`image export` and `fs ls` (issues 3, 7 and 9 time them as child processes against
qemu-img and fls).

References: issue 3 and issue 7 (`strata disk convert -O vhd`, `strata image export` beside
`qemu-img convert`), issue 9 (`strata fs ls -r` beside `fls -r -p`).

The modules a command loaded are read from ``sys.modules`` when it exits, not from
``python -X importtime``: importtime does not list a module imported through
``importlib.import_module`` (the CLI's command groups, the format drivers and their
deferred callables are), so an absence there would prove nothing.  The CLI also keeps
OpenBLAS from starting a thread pool that strata never uses.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from strata import api
from strata.cli.main import run
from strata.formats import registry
from strata.formats.registry import Deferred, DeferredOptions

from support.images import MiB, write_sparse_raw
from support.ntfs_tools import volume
from support.tools import qemu_compare, require

# Runs `python -m strata ARGS` and writes the names of the modules loaded by its exit.
RUN_AND_LIST = """
import runpy, sys
listing = sys.argv.pop(1)
try:
    runpy.run_module("strata", run_name="__main__", alter_sys=True)
finally:
    with open(listing, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
"""

# Machinery neither command needs: file systems, partition tables, capture, composition and
# file merge, the ISO writer, the integrity gate, and the package metadata reader.
NEVER = (
    "importlib.metadata",
    "pycdlib",
    "strata.fs.fat",
    "strata.fs.ntfs",
    "strata.fs.iso",
    "strata.partition",
    "strata.layer.blocks",
    "strata.layer.compose",
    "strata.layer.filedelta",
    "strata.layer.filemerge",
    "strata.layer.ntfsdelta",
    "strata.ops.layers",
    "strata.integrity",
)
DRIVER_MODULES = {
    fmt: tuple(f"strata.formats.{fmt}.{part}" for part in parts)
    for fmt, parts in {
        "vhd": ("reader", "writer", "check", "layout"),
        "vhdx": ("reader", "writer", "check", "layout", "log"),
        "vmdk": ("image", "writer", "check", "sparse", "stream", "descriptor"),
    }.items()
}


def run_listing(
    tmp_path: Path, *args: str | Path
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    listing = tmp_path / "modules.txt"
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, str(listing), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, set(listing.read_text().split())


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Each of ``names`` that is loaded, itself or through a submodule."""
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_vhd_convert_loads_only_the_vhd_writer(tmp_path: Path, subformat: str) -> None:
    src = write_sparse_raw(tmp_path / "src.raw", 4 * MiB, [(MiB, 64 << 10)], seed=3)
    dst = tmp_path / "out.vhd"
    proc, modules = run_listing(
        tmp_path, "disk", "convert", "-O", "vhd", "-o", f"subformat={subformat}", src, dst
    )
    assert proc.returncode == 0, proc.stderr
    assert qemu_compare(src, dst, "vpc") == 0
    # The work was done by the VHD writer after probing every format...
    assert {"strata.formats.vhd.writer", "strata.formats.vmdk", "strata.formats.vhdx"} <= modules
    # ...without loading another format's reader, writer or checker, the VHD reader and
    # checker, numpy (~50 ms of the command's start-up) or pathlib (4 %): a raw source and a
    # fixed or dynamic VHD need none of them.
    vhd_others = tuple(f"strata.formats.vhd.{part}" for part in ("reader", "layout", "check"))
    other = DRIVER_MODULES["vhdx"] + DRIVER_MODULES["vmdk"] + vhd_others
    assert loaded(modules, NEVER + other + ("strata.store", "numpy", "pathlib")) == []


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store holding image ``img`` (an OS layer only), and the raw disk it reproduces."""
    root = tmp_path_factory.mktemp("startup-store")
    runs = [(0, MiB), (5 * MiB, 64 << 10)]
    os_raw = write_sparse_raw(root / "os.raw", 8 * MiB, runs, seed=5)
    api.import_os("base", "1", str(os_raw), store=root / "store")
    api.publish(api.Template(name="img", os="base"), store=root / "store")
    return root / "store", os_raw


@pytest.mark.parametrize(
    ("target", "fmt", "qemu_fmt"),
    [("hyperv", "vhdx", "vhdx"), ("xenserver", "vhd", "vpc"), ("vsphere", "vmdk", "vmdk")],
)
def test_image_export_loads_only_its_writer(
    tmp_path: Path, published: tuple[Path, Path], target: str, fmt: str, qemu_fmt: str
) -> None:
    require("qemu-img")
    store, os_raw = published
    dst = tmp_path / f"img.{fmt}"
    proc, modules = run_listing(
        tmp_path, "image", "export", "img", dst, "--target", target, "--store", store
    )
    assert proc.returncode == 0, proc.stderr
    assert qemu_compare(os_raw, dst, qemu_fmt) == 0
    assert {f"strata.formats.{fmt}.writer", "strata.layer.storedev"} <= modules
    others = [m for f, names in DRIVER_MODULES.items() if f != fmt for m in names]
    never = (*NEVER, f"strata.formats.{fmt}.check", *others)
    assert loaded(modules, never) == []


@pytest.mark.parametrize("args", [("-r",), ("--json", "-r"), ()])
def test_ntfs_listing_loads_no_fat_partition_table_or_masked_arrays(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    image = volume(40, "16M")
    json_first = args[:1] == ("--json",)
    command = [*args[:1], "fs", "ls", *args[1:]] if json_first else ["fs", "ls", *args]
    proc, modules = run_listing(tmp_path, *command, image)
    assert proc.returncode == 0, proc.stderr
    assert {"strata.fs.ntfs.volume", "numpy"} <= modules
    # A bare NTFS volume needs neither the FAT reader and editor nor a partition table, and
    # ``numpy.unique`` imports numpy.ma on its first call (8 ms): the listing avoids it.
    never = ("strata.fs.fat", "strata.partition", "numpy.ma", "strata.store", "strata.layer")
    assert loaded(modules, never) == []


def test_version_is_read_only_for_version(tmp_path: Path) -> None:
    proc, modules = run_listing(tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"strata, version {version('strata')}"
    assert "importlib.metadata" in modules


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("3", "3")])
def test_cli_limits_openblas_threads_before_numpy_loads(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    code = (
        "import os, sys; import strata.cli.main; "
        "print('numpy' in sys.modules, os.environ['OPENBLAS_NUM_THREADS'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert proc.stdout.split() == ["False", expected]


def test_every_deferred_driver_target_resolves() -> None:
    """A misspelt target would otherwise surface only at a user's first call."""
    checked = 0
    for driver in registry.drivers():
        for name in ("open", "create", "write", "check"):
            value = getattr(driver, name)
            if isinstance(value, Deferred):
                assert callable(value.resolve()), f"{driver.name}.{name}: {value!r}"
                checked += 1
        if isinstance(driver.options, DeferredOptions):
            assert len(driver.options) > 0
    assert checked >= 12  # vhd, vhdx and vmdk defer all four


def test_disk_formats_lists_every_driver_with_its_options(tmp_path: Path) -> None:
    proc, _ = run_listing(tmp_path, "disk", "formats", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout.splitlines()[-1])["formats"]}
    assert sorted(rows) == ["raw", "vhd", "vhdx", "vmdk"]
    for fmt in ("vhd", "vhdx", "vmdk"):
        declared = [o.name for o in registry.get(fmt).options]
        assert declared and list(rows[fmt]["options"]) == declared


def test_deferred_rejects_a_target_without_attribute() -> None:
    with pytest.raises(ValueError):
        Deferred("strata.formats.vhd.writer")


# Runs `python -m strata ARGS` and prints, at its exit, the collector's state.
RUN_AND_SHOW_GC = """
import gc, runpy, sys
try:
    runpy.run_module("strata", run_name="__main__", alter_sys=True)
finally:
    print(gc.isenabled(), gc.get_freeze_count(), file=sys.stderr)
"""


def test_the_console_script_freezes_what_its_command_loaded(tmp_path: Path) -> None:
    src = write_sparse_raw(tmp_path / "src.raw", 4 * MiB, [(MiB, 64 << 10)], seed=3)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_SHOW_GC, "disk", "info", str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    enabled, frozen = proc.stderr.split()
    # Collecting again once the command's modules are in, with their objects set aside.
    assert enabled == "True" and int(frozen) > 10_000


def test_run_leaves_the_callers_collector_alone() -> None:
    before = (gc.isenabled(), gc.get_freeze_count())
    assert run(["disk", "formats", "--json"]) == 0
    assert (gc.isenabled(), gc.get_freeze_count()) == before
