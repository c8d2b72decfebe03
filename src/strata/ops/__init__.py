"""The verbs of strata, as plain Python functions (the CLI is a thin shell over them)."""
