"""DICOM codes a model declares in its `modalities` and `body_parts` class attributes (None there means any image).

Films share one set of modality codes so that a client can tell film models from volume models by them:
CR/DX/RG are radiographs, MG mammograms, OT images without a DICOM modality of their own (scanned films)."""
from __future__ import annotations

FILM_MODALITIES = ("CR", "DX", "MG", "RG", "OT")
CHEST_FILM_MODALITIES = ("CR", "DX", "RG", "OT")
VOLUME_MODALITIES = ("MR",)

CHEST = ("CHEST", "THORAX", "LUNG")
BREAST = ("BREAST",)
BRAIN = ("BRAIN", "HEAD")
