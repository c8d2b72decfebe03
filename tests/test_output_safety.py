"""Where commands write images: never onto one of their inputs, and never so that a failure
(a corrupt source, a signal) loses the file the output was to replace.  The inputs are
checked with md5 and qemu-img, the outputs with qemu-img compare."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from strata import api
from strata.errors import CorruptImage, InvalidInput
from strata.ops.output import written

from support.images import MiB, write_sparse_raw
from support.tools import qemu_compare, qemu_img, strata

PRECIOUS = b"the user's old image"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".strata-" in p.name]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_sparse_raw(tmp_path / "s.raw", 8 * MiB, [(0, MiB), (5 * MiB, 64 << 10)], seed=3)


def _flat_vmdk(tmp_path: Path) -> tuple[Path, Path]:
    extent = write_sparse_raw(tmp_path / "x.bin", MiB, [(0, MiB)], seed=4)
    desc = tmp_path / "k.vmdk"
    desc.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\nRW 2048 FLAT "x.bin" 0\n'
    )
    return desc, extent


def _onto_an_input(tmp_path: Path, source: Path, case: str) -> tuple[list[object], list[Path]]:
    """(strata arguments, the input files) of a command whose output is one of its inputs."""
    if case in ("same path", "symbolic link", "hard link"):
        dst = {"same path": source, "symbolic link": tmp_path / "l.raw"}.get(case)
        dst = dst or tmp_path / "h.raw"
        if case == "symbolic link":
            dst.symlink_to(source.name)
        elif case == "hard link":
            os.link(source, dst)
        return ["disk", "convert", "-O", "vhd", source, dst], [source]
    parent = tmp_path / "p.vhd"
    qemu_img("create", "-q", "-f", "vpc", parent, "8M")
    if case == "child onto its parent":
        child = tmp_path / "c.vhd"
        assert strata("disk", "create", "-O", "vhd", "-b", parent, child).returncode == 0
        return ["disk", "convert", "-O", "vhd", child, parent], [parent, child]
    if case == "child created over its parent":
        return ["disk", "create", "-O", "vhd", "-b", parent, parent], [parent]
    desc, extent = _flat_vmdk(tmp_path)
    return ["disk", "convert", "-O", "raw", desc, extent], [desc, extent]


@pytest.mark.parametrize(
    "case",
    [
        "same path",
        "symbolic link",
        "hard link",
        "child onto its parent",
        "child created over its parent",
        "extent of a flat VMDK",
    ],
)
def test_output_onto_an_input_is_refused(tmp_path: Path, source: Path, case: str) -> None:
    args, inputs = _onto_an_input(tmp_path, source, case)
    before = [_md5(p) for p in inputs]
    proc = strata(*args)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert "is also an input" in proc.stderr and "Traceback" not in proc.stderr
    assert [_md5(p) for p in inputs] == before
    if case == "child onto its parent":  # the chain still opens, and reads as its parent
        parent, child = inputs
        assert qemu_img("compare", "-f", "vpc", "-F", "vpc", parent, child).returncode == 0
    assert _leftovers(tmp_path) == []


def _damaged_stream_vmdk(tmp_path: Path) -> Path:
    raw = write_sparse_raw(tmp_path / "r.raw", 16 * MiB, [(0, 16 * MiB)], seed=6)
    vmdk = tmp_path / "so.vmdk"
    qemu_img(
        "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk
    )
    with open(vmdk, "r+b") as f:  # zero bytes inside the grains: a corrupt compressed grain
        f.seek(vmdk.stat().st_size // 2)
        f.write(bytes(4096))
    return vmdk


@pytest.mark.parametrize("fmt", ["raw", "vhd", "vhdx"])
def test_failed_convert_keeps_the_file_it_was_to_replace(tmp_path: Path, fmt: str) -> None:
    damaged = _damaged_stream_vmdk(tmp_path)
    dst = tmp_path / f"keep.{fmt}"
    dst.write_bytes(PRECIOUS)
    proc = strata("disk", "convert", "-O", fmt, damaged, dst)
    assert proc.returncode == CorruptImage.exit_code, proc.stderr
    assert dst.read_bytes() == PRECIOUS
    assert _leftovers(tmp_path) == []


def test_convert_replaces_an_existing_file_keeping_its_mode(tmp_path: Path, source: Path) -> None:
    dst = tmp_path / "old.vhd"
    dst.write_bytes(PRECIOUS)
    dst.chmod(0o600)
    link = tmp_path / "to-old.vhd"
    link.symlink_to(dst.name)
    assert strata("disk", "convert", "-O", "vhd", source, link).returncode == 0
    assert link.is_symlink() and qemu_compare(source, dst, "vpc") == 0
    assert dst.stat().st_mode & 0o777 == 0o600
    assert _leftovers(tmp_path) == []


def _terminated_mid_write(
    tmp_path: Path, dst: Path, writing: Callable[[], bool]
) -> subprocess.CompletedProcess[str]:
    """SIGTERM to a convert of 768 MiB of data once ``writing()`` says it writes its output."""
    big = tmp_path / "big.raw"
    np.full(768 * MiB, 7, np.uint8).tofile(big)
    cmd = [sys.executable, "-m", "strata", "disk", "convert", "-O", "vhd", str(big), str(dst)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not writing() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert writing(), "the output never appeared"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    big.unlink()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_sigterm_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    dst = tmp_path / "keep.vhd"
    dst.write_bytes(PRECIOUS)
    proc = _terminated_mid_write(tmp_path, dst, lambda: bool(_leftovers(tmp_path)))
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "terminated" in proc.stderr and "Traceback" not in proc.stderr
    assert dst.read_bytes() == PRECIOUS
    assert _leftovers(tmp_path) == []


def test_sigterm_removes_a_new_partial_output(tmp_path: Path) -> None:
    dst = tmp_path / "new.vhd"
    proc = _terminated_mid_write(tmp_path, dst, dst.exists)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert not dst.exists()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export-store")
    os_raw = write_sparse_raw(root / "os.raw", 8 * MiB, [(0, MiB)], seed=5)
    api.import_os("base", "1", str(os_raw), store=root / "store")
    api.publish(api.Template(name="img", os="base"), store=root / "store")
    return root / "store", os_raw


def test_export_into_the_store_is_refused(published: tuple[Path, Path], tmp_path: Path) -> None:
    store, os_raw = published
    pack = next((store / "packs").rglob("*.pack"))
    inside = tmp_path / "store-link"
    inside.symlink_to(store)
    for dst in (store / "catalog.db", pack, store / "new.raw", inside / "other.raw"):
        before = _md5(dst) if dst.exists() else None
        proc = strata("image", "export", "img", dst, "--target", "raw", "--store", store)
        assert proc.returncode == InvalidInput.exit_code, proc.stderr
        assert "inside the store" in proc.stderr
        assert (_md5(dst) if dst.exists() else None) == before
    assert strata("store", "verify", "--store", store).returncode == 0
    out = tmp_path / "img.raw"
    assert (
        strata("image", "export", "img", out, "--target", "raw", "--store", store).returncode == 0
    )
    assert qemu_compare(os_raw, out, "raw") == 0


def test_written_keeps_what_is_not_its_own(tmp_path: Path) -> None:
    """In place (a format whose files name each other): a file the block failed before
    touching is kept, a rewritten or new one is removed.  Never a non-regular file."""
    kept, rewritten, new = tmp_path / "kept", tmp_path / "rewritten", tmp_path / "new"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    kept.write_bytes(PRECIOUS)
    rewritten.write_bytes(PRECIOUS)
    for path, data in ((kept, None), (rewritten, b"partial"), (new, b"partial"), (fifo, None)):
        with pytest.raises(InvalidInput), written(str(path), atomic_replace=False) as where:
            assert where == str(path)
            if data is not None:
                Path(where).write_bytes(data)
            raise InvalidInput("failed")
    assert kept.read_bytes() == PRECIOUS and fifo.exists()
    assert not rewritten.exists() and not new.exists()
