"""strata: a disk-image composition engine for application layering."""


def __getattr__(name: str) -> str:
    # The version is read from the installed metadata only when asked for: importing
    # importlib.metadata costs every command ~30 ms of start-up.
    if name != "__version__":
        raise AttributeError(f"module 'strata' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("strata")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found
