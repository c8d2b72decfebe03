"""Build the C core; everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

FLAGS = ["-O3", "-std=c11", "-Wall", "-Wextra"]

setup(
    ext_modules=[
        Extension(
            "strata._native",
            sources=["native/strata_native.c", "native/strata_mft.c"],
            depends=["native/strata_mft.h"],
            extra_compile_args=FLAGS,
        ),
        # Needs libzstd-dev and libxxhash-dev (the Makefile installs them). Optional: without
        # it the store decodes through the pure-Python reference, which is slower, not wrong.
        Extension(
            "strata._native_store",
            sources=["native/strata_store.c"],
            libraries=["zstd"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        # Needs ntfs-3g-dev (the Makefile installs it). Optional: without it publish cannot
        # merge NTFS volumes at file level, and says so.
        Extension(
            "strata._ntfs",
            sources=["native/strata_ntfs.c"],
            libraries=["ntfs-3g"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
    ]
)
