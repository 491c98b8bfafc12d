"""Data manifests (CSV lists of cases) and the builders that write them from the public data sets."""
from .builders import BUILDERS, default_data_root, split_groups
from .manifest import (
    Case,
    LoadedCase,
    load_case,
    rasterize_shapes,
    read_manifest,
    write_manifest,
)

__all__ = [
    "BUILDERS",
    "Case",
    "LoadedCase",
    "default_data_root",
    "load_case",
    "rasterize_shapes",
    "read_manifest",
    "split_groups",
    "write_manifest",
]
