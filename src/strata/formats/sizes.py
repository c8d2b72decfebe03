"""The virtual sizes a format writer accepts, checked alike for every format."""

from __future__ import annotations

from strata.errors import InvalidInput


def check_disk_size(size: int, what: str, maximum: int, limit: str, sector: int = 512) -> None:
    """Refuse, before any file is made, a size ``what`` cannot hold: one that is not a
    positive number of whole sectors, or one past ``maximum`` bytes (``limit`` in words)."""
    if size <= 0 or size % sector:
        raise InvalidInput(f"{what}'s size must be a positive multiple of {sector}, not {size}")
    if size > maximum:
        raise InvalidInput(f"{what} holds at most {limit} ({maximum} bytes), not {size}")
