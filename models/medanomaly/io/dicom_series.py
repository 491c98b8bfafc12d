"""A DICOM series stored as a folder of instance files (what DICOMweb and MONAI Label's DICOMweb datastore give):
one film, or the slices of one volume."""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from ..errors import UnsupportedImageError
from .image import MedicalImage
from .reader import read_image


def read_dicom_series(folder: str | Path) -> MedicalImage:
    """Every instance is read and checked by `read_image` first (a truncated, colour or non-image file refuses the
    whole series, with its reason); one file is a film (or a multi-frame volume); several must be the equal slices
    of one series, which SimpleITK's GDCM series reader orders by position into a volume with its geometry."""
    folder = Path(folder)
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not files:
        raise UnsupportedImageError(f"the DICOM series folder {folder.name} holds no instance")
    first, series, shapes = None, set(), set()
    for file in files:
        image = read_image(file)
        first = first or image
        series.add(image.meta.get("series_instance_uid"))
        shapes.add(image.array.shape[-2:])
    if len(files) == 1:
        return first
    if len(series) > 1 or len(shapes) > 1:
        raise UnsupportedImageError(f"the DICOM folder {folder.name} mixes {len(series)} series and slice shapes "
                                    f"{sorted(shapes)}: one series of equal slices is needed")
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), recursive=True)
    if len(names) != len(files):
        raise UnsupportedImageError(f"only {len(names)} of the {len(files)} files in {folder.name} form one series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        volume = reader.Execute()
    except RuntimeError as error:
        raise UnsupportedImageError(f"the series' slices do not form a volume: {str(error).splitlines()[-1]}") from None
    return MedicalImage.from_sitk(volume, meta={**first.meta, "number_of_files": len(names)})
