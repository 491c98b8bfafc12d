"""Medical image input/output: films and volumes in, anomaly maps out on the same grid."""
from .dicom_series import read_dicom_series
from .image import MedicalImage
from .reader import DEFAULT_MAX_PIXELS, detect_format, read_image, read_image_bytes
from .writer import write_image

__all__ = ["MedicalImage", "read_dicom_series", "read_image", "read_image_bytes", "write_image", "detect_format",
           "DEFAULT_MAX_PIXELS"]
