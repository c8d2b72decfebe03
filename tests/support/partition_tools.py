"""Partition-table oracles: sfdisk, sgdisk and fdisk on image files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from strata.partition import PartitionTable

from support.tools import require, run


def sfdisk_json(path: Path) -> dict[str, Any]:
    return json.loads(run([require("sfdisk"), "--json", path]).stdout)["partitiontable"]


def sgdisk_verify(path: Path) -> str:
    return run([require("sgdisk"), "-v", path], check=False).stdout


def sfdisk_rows(path: Path) -> list[dict[str, Any]]:
    """(number, start sector, sectors, type, uuid, name, bootable) as sfdisk prints them."""
    table = sfdisk_json(path)
    rows = []
    for p in table.get("partitions", []):
        number = int(p["node"][len(str(path)) :])
        rows.append(
            {
                "number": number,
                "start": p["start"],
                "size": p["size"],
                "type": p["type"].upper() if table["label"] == "gpt" else int(p["type"], 16),
                "uuid": p.get("uuid"),
                "name": p.get("name", ""),
                "bootable": bool(p.get("bootable", False)),
            }
        )
    return rows


def strata_rows(table: PartitionTable) -> list[dict[str, Any]]:
    ss = table.sector_size
    return [
        {
            "number": p.number,
            "start": p.start // ss,
            "size": p.length // ss,
            "type": p.type if table.scheme == "gpt" else int(p.type, 16),
            "uuid": p.guid,
            "name": p.name,
            "bootable": table.scheme == "mbr" and bool(p.attributes & 0x80),
        }
        for p in table.partitions
    ]
