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
    ]
)
