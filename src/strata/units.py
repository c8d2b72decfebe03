"""Sizes as users write them: ``64M``, ``1G``, ``1.5T``, ``4096`` (qemu-img suffixes), and
sizes and times as the text outputs show them."""

from __future__ import annotations

import datetime
import re

from strata.errors import InvalidInput

_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpb]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise InvalidInput(f"{text!r} is not a size (examples: 4096, 64M, 1.5G, 2T)")
    number, suffix = match.groups()
    value = float(number) * _SUFFIX[suffix.lower()]
    if value != int(value):
        raise InvalidInput(f"{text!r} is not a whole number of bytes")
    return int(value)


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.4g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def utc_time(stamp: float) -> str:
    """A Unix time as the listings show it: ``2026-11-21 22:46:52Z``."""
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
