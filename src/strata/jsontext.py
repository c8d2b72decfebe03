"""JSON that strata reads from files it does not control (templates, the store's config,
manifest headers, packaging records, base descriptions).

``json.loads`` raises ValueError for bad syntax or bad UTF-8 but RecursionError for deep
nesting (``"[" * 100000``), which every caller then had to remember; ``parse`` makes it one
ValueError.
"""

from __future__ import annotations

import json
from typing import Any


def parse(raw: str | bytes) -> Any:
    """``raw`` parsed; ValueError for anything that is not JSON, deep nesting included."""
    try:
        return json.loads(raw)
    except RecursionError as e:
        raise ValueError("JSON nested too deeply") from e
