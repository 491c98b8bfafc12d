"""MedAnomaly: anomaly maps of medical images, one contract for every model.

    import medanomaly
    model = medanomaly.create("ae", epochs=5)
    model.fit("train.csv", val="val.csv", checkpoint="ae.pt")
    result = medanomaly.load("ae.pt").predict(medanomaly.read_image("film.dcm"))
    result.score, result.map, result.mask, result.extras, result.meta
"""
__version__ = "0.1.0"

from .errors import (CheckpointError, ManifestError, MedAnomalyError, ModalityMismatchError,  # noqa: E402
                     UnknownModelError, UnsupportedImageError)
from .result import AnomalyResult  # noqa: E402
from .registry import create, describe_models, list_models, model_class, register  # noqa: E402
from .base import AnomalyModel, load  # noqa: E402


def read_image(path, **kwargs):
    """Read PNG/JPEG, DICOM, NIfTI or NRRD into a MedicalImage (see medanomaly.io)."""
    from .io import read_image as _read_image

    return _read_image(path, **kwargs)


__all__ = ["AnomalyModel", "AnomalyResult", "CheckpointError", "ManifestError", "MedAnomalyError",
           "ModalityMismatchError", "UnknownModelError", "UnsupportedImageError", "create", "describe_models",
           "list_models", "load", "model_class", "read_image", "register"]
