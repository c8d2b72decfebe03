"""Disk formats: one sub-package per format, each exposing ``DRIVER``."""
