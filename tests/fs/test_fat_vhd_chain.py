"""FAT32 in a GPT disk, edited through a VHD differencing child; libvhdi reads the result.

The edit goes through ``registry.open_image`` (child + verified parent), ``open_partition`` and
``FatEditor``; the parent file must not change, and the chain as libvhdi composes it must pass
fsck.fat and show the expected tree in mtools.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pyvhdi

from strata.blockdev import RawFileDevice
from strata.formats import registry
from strata.fs.fat import FatEditor, FatVolume
from strata.ops import disk as ops
from strata.partition import Partition, open_partition, write_gpt

from support.fat_tools import MiB, fsck, mtools_tree, populate, strata_tree
from support.tools import require

BASIC = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


def test_edit_fat_through_a_vhd_child(tmp_path: Path) -> None:
    base_raw = tmp_path / "base.raw"
    with RawFileDevice.create(str(base_raw), 100 * MiB) as dev:
        write_gpt(dev, [Partition(1, MiB, 64 * MiB, BASIC, "data")])
    subprocess.run(
        [require("mkfs.fat"), "-F", "32", "-s", "1", "--offset", "2048", str(base_raw), "65536"],
        check=True,
        capture_output=True,
    )
    tree = dict(populate(base_raw, tmp_path, 512, offset=MiB).tree)
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    ops.convert(ops.OpenSpec(str(base_raw)), str(base), "vhd")
    ops.create(str(child), "vhd", None, parent=ops.OpenSpec(str(base)))
    before = hashlib.sha256(base.read_bytes()).hexdigest()

    assert ops.partitions(ops.OpenSpec(str(child)))["partitions"][0]["sectors"] == 131072
    with registry.open_image(str(child), writable=True) as disk:
        with FatEditor(open_partition(disk, 1)) as ed:
            ed.write_file("/Dir/from the child.txt", b"written into the child layer")
            ed.delete("/Dir/Sub", recursive=True)
            ed.mkdir("/Made in child")
        tree["/Dir/from the child.txt"] = b"written into the child layer"
        tree = {k: v for k, v in tree.items() if not k.startswith("/Dir/Sub")}
        tree["/Made in child"] = None
        assert strata_tree(FatVolume(open_partition(disk, 1))) == tree
    assert hashlib.sha256(base.read_bytes()).hexdigest() == before

    composed = tmp_path / "composed.raw"
    top, parent = pyvhdi.file(), pyvhdi.file()
    top.open(str(child))
    parent.open(str(base))
    top.set_parent(parent)
    top.seek(0)
    composed.write_bytes(top.read(100 * MiB))
    assert mtools_tree(composed, tmp_path, MiB) == tree
    volume = tmp_path / "volume.img"
    volume.write_bytes(composed.read_bytes()[MiB : 65 * MiB])
    assert fsck(volume) == "clean"
