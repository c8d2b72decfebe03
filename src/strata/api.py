"""strata's verbs as Python functions: what a controller imports instead of shelling out."""

from strata.ops.disk import OpenSpec, check, compare, convert, create, info, map_entries

__all__ = ["OpenSpec", "check", "compare", "convert", "create", "info", "map_entries"]
