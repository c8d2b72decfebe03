"""VMDK descriptor parsing, rendering and `strata disk info` facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import CorruptImage
from strata.formats.vmdk.descriptor import NO_PARENT, Descriptor, ExtentLine, parse, standard_ddb
from strata.ops import disk as ops

from support.images import MiB, write_sparse_raw
from support.tools import qemu_img, result_of, strata_json

QEMU_STYLE = b"""# Disk DescriptorFile
version=1
CID=1a2b3c4d
parentCID=ffffffff
createType="twoGbMaxExtentFlat"

# Extent description
RW 4194304 FLAT "d-f001.vmdk" 0
RDONLY 100 FLAT "d-f002.vmdk" 0
RW 64 ZERO

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "4161"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "lsilogic"
"""


def test_parse_qemu_style() -> None:
    d = parse(QEMU_STYLE + b"\0" * 300, "d.vmdk")
    assert (d.cid, d.parent_cid, d.create_type) == (0x1A2B3C4D, NO_PARENT, "twoGbMaxExtentFlat")
    assert d.extents == [
        ExtentLine("RW", 4194304, "FLAT", "d-f001.vmdk", 0),
        ExtentLine("RDONLY", 100, "FLAT", "d-f002.vmdk", 0),
        ExtentLine("RW", 64, "ZERO", None, 0),
    ]
    assert d.ddb["ddb.adapterType"] == "lsilogic" and d.sectors == 4194304 + 164


def test_render_round_trip_and_crlf() -> None:
    d = Descriptor(
        "monolithicSparse",
        [ExtentLine("RW", 2048, "SPARSE", "a.vmdk")],
        cid=0x12,
        parent_cid=0x34,
        parent_hint="../base.vmdk",
        ddb=standard_ddb(2048, "buslogic"),
    )
    text = d.render()
    assert "CID=00000012" in text and 'parentFileNameHint="../base.vmdk"' in text
    again = parse(text.replace("\n", "\r\n").encode(), "a.vmdk")
    assert again == d
    assert d.ddb["ddb.geometry.heads"] == "255"


@pytest.mark.parametrize(
    ("mutation", "field"),
    [
        (b"CID=1a2b3c4d", "CID"),
        (b'createType="twoGbMaxExtentFlat"', "createType"),
        (b"CID=1a2b3c4d\n", "CID"),
    ],
)
def test_missing_or_bad_keys(mutation: bytes, field: str) -> None:
    replacement = b"CID=zz" if mutation == b"CID=1a2b3c4d" else b""
    with pytest.raises(CorruptImage) as info:
        parse(QEMU_STYLE.replace(mutation, replacement), "d.vmdk", 512)
    assert info.value.field == field and info.value.offset == 512


@pytest.mark.parametrize(
    "line",
    [b"RW 10 FLAT", b'RW -5 SPARSE "x"', b'WR 10 FLAT "x" 0', b'RW 10 BOGUS "x"', b"junk"],
)
def test_malformed_extent_lines(line: bytes) -> None:
    with pytest.raises(CorruptImage, match="line"):
        parse(QEMU_STYLE.replace(b"RW 64 ZERO", line), "d.vmdk")


def test_not_text() -> None:
    with pytest.raises(CorruptImage, match="UTF-8"):
        parse(QEMU_STYLE.replace(b"version=1", b"version=\xff"), "d.vmdk")


def test_info_json(tmp_path: Path) -> None:
    raw = write_sparse_raw(tmp_path / "r.raw", 8 * MiB, [(0, MiB)])
    image = tmp_path / "i.vmdk"
    ops.convert(
        ops.OpenSpec(str(raw)),
        str(image),
        "vmdk",
        ["subformat=twoGbMaxExtentSparse,adapter_type=buslogic"],
    )
    facts = result_of(strata_json("disk", "info", image))
    assert facts["format"] == "vmdk" and facts["subformat"] == "twoGbMaxExtentSparse"
    assert facts["adapter-type"] == "buslogic" and facts["virtual-size"] == 8 * MiB
    assert facts["extents"] == ['RW 16384 SPARSE "i-s001.vmdk"']
    qemu = qemu_img("info", "--output=json", image).stdout
    assert f'"cid": {int(facts["cid"], 16)}' in qemu
