"""Typed errors. Every message says what was wrong so that the server can answer with a clear 4xx."""


class MedAnomalyError(Exception):
    """Base class of the errors this package raises on purpose."""


class UnsupportedImageError(MedAnomalyError, ValueError):
    """The input cannot be read or is not an image this product scores (empty, corrupt, 4D, NaN, colour...)."""


class ManifestError(MedAnomalyError, ValueError):
    """A data manifest is malformed or points at missing files."""


class CheckpointError(MedAnomalyError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class UnknownModelError(MedAnomalyError, KeyError):
    """No model of that name is registered."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown model"


class ModalityMismatchError(MedAnomalyError, ValueError):
    """The image's DICOM Modality or body part does not match what the model was trained on."""
