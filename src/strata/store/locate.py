"""Where the store lives: ``--store DIR``, else ``$STRATA_STORE``, else the per-user default.

References: XDG Base Directory Specification 0.8 ($XDG_DATA_HOME, default ~/.local/share).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_store() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or ""
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "strata" / "store"


def store_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("STRATA_STORE")
    if env:
        return Path(env).expanduser()
    return default_store()
