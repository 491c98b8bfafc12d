"""A film's label as a DICOM SEG and back, with highdicom: a CR/DX/MG film has one frame and often no frame of
reference or patient position, which dcmqi (MONAI Label's converter) needs; highdicom references the source
instance instead."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from medanomaly.io import MedicalImage

SEGMENT = 1  # the one segment: "anomaly", as the app's labels {"anomaly": 1}


def as_mask(label: MedicalImage, shape: tuple) -> np.ndarray:
    """A label image as a 0/1 mask of `shape` (a (1, H, W) label of an (H, W) film is the same grid)."""
    if label.array.size != int(np.prod(shape)):
        raise ValueError(f"label of shape {list(label.shape)} does not fit the film of shape {list(shape)}")
    return (label.array.reshape(shape) > 0).astype(np.uint8)


def film_seg(film_file: str | Path, label: MedicalImage) -> hd.seg.Segmentation:
    """A binary DICOM SEG of `label` on the film in `film_file`, in the film's study, as a new series."""
    source = pydicom.dcmread(str(film_file))
    mask = as_mask(label, (int(source.Rows), int(source.Columns)))
    description = hd.seg.SegmentDescription(
        segment_number=SEGMENT,
        segment_label="anomaly",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask[np.newaxis],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedAnomaly",
        manufacturer_model_name="MedAnomaly MONAI Label app",
        software_versions="1",
        device_serial_number="medanomaly",
        series_description="MedAnomaly label",
    )


def read_film_seg(seg: str | Path | pydicom.Dataset, film_sop_instance_uid: str | None = None) -> np.ndarray:
    """The (rows, columns) 0/1 mask a film SEG (a file or a data set) holds for its source film: the union of its
    frames that refer to that film. Read with pydicom: highdicom's reader wants a slice thickness, which a film
    does not have."""
    seg = seg if isinstance(seg, pydicom.Dataset) else pydicom.dcmread(str(seg))
    if str(seg.get("Modality", "")) != "SEG":
        raise ValueError("not a DICOM SEG")
    frames = seg.pixel_array.reshape(int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns))
    mask = np.zeros(frames.shape[1:], np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        sources = [source.ReferencedSOPInstanceUID for derivation in item.get("DerivationImageSequence", [])
                   for source in derivation.get("SourceImageSequence", [])]
        if film_sop_instance_uid is None or film_sop_instance_uid in sources:
            mask |= (frame > 0).astype(np.uint8)
    return mask
